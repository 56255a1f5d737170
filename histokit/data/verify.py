"""Check a dataset on disk against its manifest: its files (present, right size, right sha256 / md5) and its content
(the layout folder the loader reads: class folders, label files, every image decodes, counts).

:func:`verify` always re-hashes and re-decodes (it is the explicit check); the download markers are not trusted here.

Two lists: ``checks`` has one entry per file the manifest lists (archives, or the bundled tiles); ``content`` has the
layout check (``ok`` with the counts, ``missing`` when the folder is absent or holds only a README, ``invalid`` when
the loader refuses it: an unknown or absent class / split folder, a missing label CSV), a ``missing`` entry for each
thing the manifest's layout promises and the folder lacks (any image at all, an official split, a class), one
``corrupt`` entry per image that does not decode or fails PIL's ``verify()``, one ``too large`` entry per image over
the decompression-bomb limit the loader applies (both name the file; the loader would stop on it), and ``warning``
entries for what differs from the full release (counts in ``expected_counts``, a class absent from one split, an
image of another size than ``layout.image_size``). Any entry but ``ok``, ``unchecked`` and ``warning`` fails the
check (``histokit data verify`` exits 1). An archive that is not there while its extracted layout is (deleted after extraction,
placed by hand, or written by ``histokit data mock``) is ``unchecked``: the content is what is verified then.
"""
from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..progress import progress_bar

from .errors import CorruptImageError, DataError, ImageTooLargeError
from .hashing import file_digests
from .manifests import Manifest, dataset_dir, describe_unpopulated, layout_entries, load_manifest

OK, MISSING, MISMATCH, UNCHECKED = "ok", "missing", "mismatch", "unchecked"
CORRUPT, INVALID, WARNING, TOO_LARGE = "corrupt", "invalid", "warning", "too large"
ERRORS = (MISSING, MISMATCH, CORRUPT, TOO_LARGE, INVALID)
STATUSES = (OK, UNCHECKED, WARNING, MISSING, MISMATCH, CORRUPT, TOO_LARGE, INVALID)


class VerificationError(DataError):
    """Raised by :meth:`VerifyReport.raise_for_errors`; the message lists every missing or mismatching file."""


@dataclass(frozen=True)
class FileCheck:
    """The verdict on one file: ``ok``, ``missing``, ``mismatch`` or ``unchecked`` (present, no published digest)."""

    name: str
    path: Path
    status: str
    expected: dict = field(default_factory=dict)
    actual: dict = field(default_factory=dict)
    detail: str = ""

    def describe(self) -> str:
        if self.status == MISMATCH:
            diffs = [f"{k} expected {v}, got {self.actual.get(k)}" for k, v in self.expected.items()
                     if self.actual.get(k) != v]
            return f"{self.path}: mismatch ({'; '.join(diffs)})"
        return f"{self.path}: {self.status}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class VerifyReport:
    dataset: str
    directory: Path
    checks: list[FileCheck]                                   # the manifest's files
    content: list[FileCheck] = field(default_factory=list)    # the layout: loads, decodes, counts
    hint: str = ""                                            # what to do when the layout is missing

    @property
    def all_checks(self) -> list[FileCheck]:
        return self.checks + self.content

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def errors(self) -> list[FileCheck]:
        return [c for c in self.all_checks if c.status in ERRORS]

    @property
    def warnings(self) -> list[FileCheck]:
        return self.by_status(WARNING)

    def by_status(self, status: str) -> list[FileCheck]:
        return [c for c in self.all_checks if c.status == status]

    def summary(self) -> str:
        counts = {s: len(self.by_status(s)) for s in STATUSES}
        head = f"{self.dataset} at {self.directory}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        lines = [head]
        lines += [f"  {c.describe()}" for c in self.content if c.status == OK]
        lines += [f"  {c.describe()}" for c in self.errors]
        lines += [f"  {c.describe()}" for c in self.warnings]
        if not self.ok and self.hint:
            lines += ["", self.hint]
        return "\n".join(lines)

    def raise_for_errors(self) -> "VerifyReport":
        if not self.ok:
            raise VerificationError(self.summary())
        return self


def _check(name: str, path: Path, size: Optional[int], checksums: dict, progress: bool) -> FileCheck:
    if not path.is_file():
        return FileCheck(name, path, MISSING, dict(checksums))
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return FileCheck(name, path, MISMATCH, {"size": size, **checksums}, {"size": actual_size},
                         f"size {actual_size} != {size}")
    actual = file_digests(path, checksums, progress=progress)
    if any(actual[k] != v.lower() for k, v in checksums.items()):
        return FileCheck(name, path, MISMATCH, dict(checksums), actual)
    if not checksums:
        return FileCheck(name, path, UNCHECKED, {}, {}, "no published checksum")
    return FileCheck(name, path, OK, dict(checksums), actual)


def _rel(path: str | Path, base: Path) -> str:
    try:
        return os.path.relpath(path, base)
    except ValueError:
        return str(path)


def _decode(path: str):
    """(size, None) when the image decodes as the loader reads it (``load_image``: a full decode under the kit's
    decompression-bomb limit) and passes PIL's ``verify()`` (the file's structure and checksums: a PNG's chunk CRCs
    and its IEND, which a decode does not need, so a PNG cut short near its end decodes but fails here); else
    (None, error)."""
    import warnings

    from PIL import Image

    from .images import load_image

    try:
        with load_image(path) as img:
            size = img.size
    except (CorruptImageError, ImageTooLargeError, ValueError, OSError) as exc:
        return None, exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.verify()
    except Exception as exc:  # PIL's plugins raise SyntaxError, OSError, struct.error, EOFError, ...
        return None, CorruptImageError(f"{path}: damaged image file: it decodes, but PIL's verify fails "
                                       f"({type(exc).__name__}: {exc})")
    return size, None


def _check_arrays(paths: list[str], image_size) -> list[FileCheck]:
    """An image array file (PanNuke, MedMNIST): (n, H, W, 3), numeric, its first and last rows readable."""
    import numpy as np

    from .images import array_to_image

    out = []
    for p in paths:
        try:
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
            if arr.ndim != 4 or arr.shape[-1] != 3 or not np.issubdtype(arr.dtype, np.number):
                raise ValueError(f"expected an (n, H, W, 3) numeric image array, got {arr.dtype} {arr.shape}")
            for row in {0, len(arr) - 1}:
                array_to_image(arr[row], f"{p}[{row}]")
        except (ValueError, OSError, EOFError) as exc:
            out.append(FileCheck(Path(p).name, Path(p), CORRUPT, detail=str(exc)))
            continue
        if image_size and tuple(arr.shape[2:0:-1]) != tuple(image_size):
            out.append(FileCheck(Path(p).name, Path(p), WARNING,
                                 detail=f"images are {arr.shape[2]} x {arr.shape[1]} px, the manifest says "
                                        f"{image_size[0]} x {image_size[1]}"))
    return out


def _count_warnings(manifest: Manifest, dataset, layout_dir: Path) -> list[FileCheck]:
    out = []
    exp = manifest.expected_counts
    n_images = len({s.path if s.row is None else s.key for s in dataset.samples})
    if exp.get("images") is not None and exp["images"] != n_images:
        out.append(FileCheck("counts", layout_dir, WARNING,
                             detail=f"{n_images:,} images; the full release has {exp['images']:,} "
                                    "(a subset, an incomplete copy, or mock data)"))
    if exp.get("classes") is not None and dataset.classes and exp["classes"] != len(dataset.classes):
        out.append(FileCheck("classes", layout_dir, WARNING,
                             detail=f"{len(dataset.classes)} classes; the full release has {exp['classes']}"))
    split_counts = Counter(s.split for s in dataset.samples)
    for split, want in (exp.get("splits") or {}).items():
        if split_counts.get(split, 0) != want:
            out.append(FileCheck(f"split {split}", layout_dir, WARNING,
                                 detail=f"split {split}: {split_counts.get(split, 0):,} images; the full release "
                                        f"has {want:,}"))
    if dataset.classes:
        anywhere = {int(s.label) for s in dataset.samples}  # a class with no image at all is an error (_layout_errors)
        for split in sorted(split_counts, key=str):
            labels = {int(s.label) for s in dataset.samples if s.split == split}
            absent = [c for i, c in enumerate(dataset.classes) if i not in labels and i in anywhere]
            if absent:
                where = f" of split {split}" if split is not None else ""
                out.append(FileCheck("classes", layout_dir, WARNING,
                                     detail=f"no images{where} in class(es) {absent}"))
    return out


def _split_location(manifest: Manifest, layout_dir: Path, split) -> Path:
    """Where split ``split`` lives in the layout: its folder, its label CSV, or the layout folder."""
    p = manifest.layout.params
    if split in (p.get("split_dirs") or {}):
        return layout_dir / p["split_dirs"][split]
    if split in (p.get("split_csvs") or {}):
        return layout_dir / p["split_csvs"][split]["csv"]
    return layout_dir


def _layout_errors(manifest: Manifest, dataset, layout_dir: Path) -> list[FileCheck]:
    """What the manifest's layout promises and the folder lacks, as errors (``missing``): any image at all, each
    official split the manifest names, each class (the manifest's, or the class folders found)."""
    if not dataset.samples:
        return [FileCheck("layout", layout_dir, MISSING,
                          detail="the layout loads but holds no image at all (empty label CSVs or folders): the "
                                 "dataset is not in place")]
    out = []
    splits = Counter(s.split for s in dataset.samples)
    if manifest.splits.get("type") == "official":
        for split in manifest.splits.get("names") or ():
            if not splits.get(split):
                where = _split_location(manifest, layout_dir, split)
                out.append(FileCheck(f"split {split}", where, MISSING,
                                     detail=f"official split {split} has no images ({_rel(where, layout_dir)})"))
    if dataset.classes:
        counts = Counter(int(s.label) for s in dataset.samples)
        folder_of = {c: f for f, c in manifest.class_folders.items()}
        for i, c in enumerate(dataset.classes):
            if not counts.get(i):
                folder = folder_of.get(c, c)
                out.append(FileCheck(f"class {c}", layout_dir, MISSING,
                                     detail=f"class {c} has no images (its folder {folder!r} is absent or empty in "
                                            "every split)"))
    return out


def _describe(dataset, n_files: int, n_arrays: int, tiles: Optional[int]) -> str:
    kind = f"{len(dataset.classes)} classes" if dataset.classes else "regression target"
    splits = Counter(s.split for s in dataset.samples)
    per_split = ", ".join(f"{k} {v}" for k, v in splits.items()) if None not in splits else ""
    per_class = ""
    if dataset.classes and len(dataset.classes) <= 30:
        counts = dataset.class_counts()
        per_class = "; " + " ".join(f"{c} {n}" for c, n in counts.items())
    read = f"{n_files} image file(s) decoded" if n_files or not n_arrays else f"{n_arrays} image array file(s) read"
    text = f"{read}, {len(dataset)} samples, {kind}"
    if per_split:
        text += f" (splits: {per_split})"
    if tiles is not None:
        text += f", {tiles} tiles kept"
    return text + per_class


def verify_content(manifest: Manifest, root: Optional[str | os.PathLike] = None, *, progress: bool = True,
                   skip: frozenset = frozenset(), workers: Optional[int] = None) -> list[FileCheck]:
    """The layout folder as the loader reads it: present and populated, loadable, every image decodes (files in
    ``skip`` already failed a checksum and are not decoded again), counts against ``expected_counts``."""
    ddir = dataset_dir(manifest, root)
    layout_dir = ddir / manifest.layout.subdir
    if not layout_entries(layout_dir):
        return [FileCheck("layout", layout_dir, MISSING,
                          detail=f"{describe_unpopulated(layout_dir)}: the dataset is not in place")]
    from .datasets import _from_manifest, tile_dataset, tile_index_path  # torch: only for a content check

    try:
        dataset = _from_manifest(manifest, layout_dir)
    except (DataError, ValueError, OSError) as exc:
        return [FileCheck("layout", layout_dir, INVALID, detail=str(exc))]
    gaps = _layout_errors(manifest, dataset, layout_dir)
    if not dataset.samples:
        return gaps
    out: list[FileCheck] = []
    files = sorted({s.path for s in dataset.samples if s.row is None} - {str(p) for p in skip})
    arrays = sorted({s.path for s in dataset.samples if s.row is not None})
    n = workers or min(8, os.cpu_count() or 1)
    sizes: Counter = Counter()
    bad = set()
    with ThreadPoolExecutor(max_workers=n) as pool:  # PIL decodes outside the GIL
        results = pool.map(_decode, files)
        for path, (size, exc) in progress_bar(zip(files, results), total=len(files), desc=f"decoding {manifest.name}",
                                      unit="img", disable=not progress or len(files) < 50):
            if exc is None:
                sizes[size] += 1
                continue
            status = TOO_LARGE if isinstance(exc, ImageTooLargeError) else CORRUPT  # the loader would stop on both
            out.append(FileCheck(_rel(path, ddir), Path(path), status, detail=str(exc).replace(f"{path}: ", "")))
            bad.add(path)
    out += _check_arrays(arrays, manifest.layout.image_size)
    want = tuple(manifest.layout.image_size) if manifest.layout.image_size else None
    if want and files:
        other = {sz: k for sz, k in sizes.items() if tuple(sz) != want}
        if other:
            shown = ", ".join(f"{k} of {w} x {h}" for (w, h), k in sorted(other.items())[:5])
            out.append(FileCheck("image size", layout_dir, WARNING,
                                 detail=f"images of another size than the manifest's {want[0]} x {want[1]}: {shown}"))
    tiles = None
    if manifest.tiles and not bad:
        t = manifest.tiling
        size, stride = int(t["tile_size"]), int(t.get("stride", t["tile_size"]))
        tissue = float(t.get("min_tissue", 0.0))
        try:
            tiles = len(tile_dataset(dataset, size, stride, tissue,
                                     index_path=tile_index_path(ddir, size, stride, tissue), base_dir=ddir))
        except (DataError, ValueError, OSError) as exc:
            out.append(FileCheck("tiles", layout_dir, INVALID, detail=str(exc)))
    out += gaps
    out += _count_warnings(manifest, dataset, layout_dir)
    head = FileCheck("layout", layout_dir, OK, detail=_describe(dataset, len(files) - len(bad), len(arrays), tiles))
    return [head] + out


def verify_manifest(manifest: Manifest, root: Optional[str | os.PathLike] = None, *,
                    include_optional: bool = False, progress: bool = True, content: bool = True) -> VerifyReport:
    """Check the manifest's files and (``content``) the layout folder; see the module docstring."""
    ddir = dataset_dir(manifest, root)
    layout_dir = ddir / manifest.layout.subdir
    specs = manifest.files if include_optional else manifest.required_files
    extracted = bool(layout_entries(layout_dir))
    checks = []
    for f in progress_bar(specs, desc=f"verifying {manifest.name}", unit="file", disable=not progress or len(specs) < 2):
        path = ddir / f.name
        if f.extract and extracted and not path.exists():
            checks.append(FileCheck(f.name, path, UNCHECKED, dict(f.checksums),
                                    detail="archive not present; its extracted layout is checked instead"))
        else:
            checks.append(_check(f.name, path, f.size, dict(f.checksums), progress))
    skip = frozenset(str(c.path) for c in checks if c.status in (MISSING, MISMATCH))
    found = verify_content(manifest, root, progress=progress, skip=skip) if content else []
    hint = ""
    if any(c.status == MISSING for c in checks + found):
        from .download import manual_instructions

        reason = {"unavailable": "the host cannot serve it", "login": "the host requires registration"}
        hint = manual_instructions(manifest, root, reason.get(manifest.access, ""))
    return VerifyReport(manifest.name, ddir, checks, found, hint)


def verify(name: str, root: Optional[str | os.PathLike] = None, *, include_optional: bool = False,
           progress: bool = True, content: bool = True) -> VerifyReport:
    """Verify dataset ``name`` under ``<root>/<name>/`` (the bundled folder for ``kather2016_tiny`` by default),
    whatever its ``access``: a hand-placed copy is checked like a downloaded one."""
    return verify_manifest(load_manifest(name), root, include_optional=include_optional, progress=progress,
                           content=content)
