"""``prepare(name, root)``: download, verify, extract: afterwards the dataset's layout folder is ready to load."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .archive import safe_extract
from .download import download, manual_instructions
from .errors import DatasetNotFoundError
from .manifests import dataset_dir, load_manifest
from .verify import verify_manifest


def prepare(name: str, root: Optional[str | os.PathLike] = None, *, progress: bool = True,
            **download_kwargs) -> Path:
    """Make dataset ``name`` loadable under ``<root>/<name>/``; return the layout folder.

    Each step is a no-op when already done (verified files are not fetched, extracted archives not re-extracted).
    """
    manifest = load_manifest(name)
    ddir = dataset_dir(manifest, root)
    download(name, root, progress=progress, **download_kwargs)
    verify_manifest(manifest, root, progress=progress).raise_for_errors()
    for f in manifest.required_files:
        if f.extract:
            safe_extract(ddir / f.name, ddir / f.extract_to, progress=progress)
    layout_dir = ddir / manifest.layout.subdir
    if not layout_dir.is_dir():
        raise DatasetNotFoundError(
            f"{name}: after preparing, the layout folder {layout_dir} does not exist; the archive's structure may "
            f"have changed.\n" + manual_instructions(manifest, root)
        )
    return layout_dir
