"""``prepare(name, root)``: download, verify, extract: afterwards the dataset's layout folder is ready to load."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .archive import safe_extract
from .download import download, manual_instructions
from .errors import DataError, DatasetNotFoundError
from .manifests import dataset_dir, layout_entries, load_manifest
from .verify import verify_manifest


def _loads(manifest, root) -> bool:
    """Whether the layout loader reads the dataset folder as it is (listing only; no image is decoded)."""
    if not layout_entries(dataset_dir(manifest, root) / manifest.layout.subdir):
        return False
    from .datasets import load_layout  # imports torch: only when a layout is there to check

    try:
        load_layout(manifest, root)
    except (DataError, ValueError, OSError):
        return False
    return True


def prepare(name: str, root: Optional[str | os.PathLike] = None, *, progress: bool = True,
            **download_kwargs) -> Path:
    """Make dataset ``name`` loadable under ``<root>/<name>/``; return the layout folder.

    Each step is a no-op when already done (verified files are not fetched, extracted archives not re-extracted).
    A layout folder that already holds data while none of the archives is present counts as extracted: it is
    returned without a download (``histokit data verify`` decodes and counts what it holds).
    """
    manifest = load_manifest(name)
    ddir = dataset_dir(manifest, root)
    layout_dir = ddir / manifest.layout.subdir
    archives = [f for f in manifest.required_files if f.extract]
    if archives and not any((ddir / f.name).exists() for f in archives) and _loads(manifest, root):
        # already extracted (the archives deleted to save space, or a layout placed by hand / `histokit data
        # mock`): nothing to fetch; `histokit data verify` checks what is there
        return layout_dir
    download(name, root, progress=progress, **download_kwargs)
    verify_manifest(manifest, root, progress=progress, content=False).raise_for_errors()
    for f in manifest.required_files:
        if f.extract:
            safe_extract(ddir / f.name, ddir / f.extract_to, progress=progress)
    if not layout_dir.is_dir():
        raise DatasetNotFoundError(
            f"{name}: after preparing, the layout folder {layout_dir} does not exist; the archive's structure may "
            f"have changed.\n" + manual_instructions(manifest, root)
        )
    return layout_dir
