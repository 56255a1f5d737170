"""Check a dataset's files on disk against its manifest: present, right size, right sha256 / md5.

:func:`verify` always re-hashes (it is the explicit check); the download markers are not trusted here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tqdm.auto import tqdm

from .errors import DataError, ManualDownloadRequired
from .hashing import file_digests
from .manifests import Manifest, dataset_dir, load_manifest

OK, MISSING, MISMATCH, UNCHECKED = "ok", "missing", "mismatch", "unchecked"


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
    checks: list[FileCheck]

    @property
    def ok(self) -> bool:
        return all(c.status in (OK, UNCHECKED) for c in self.checks)

    @property
    def errors(self) -> list[FileCheck]:
        return [c for c in self.checks if c.status in (MISSING, MISMATCH)]

    def by_status(self, status: str) -> list[FileCheck]:
        return [c for c in self.checks if c.status == status]

    def summary(self) -> str:
        counts = {s: len(self.by_status(s)) for s in (OK, UNCHECKED, MISSING, MISMATCH)}
        head = f"{self.dataset} at {self.directory}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        return "\n".join([head] + [f"  {c.describe()}" for c in self.errors])

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


def verify_manifest(manifest: Manifest, root: Optional[str | os.PathLike] = None, *,
                    include_optional: bool = False, progress: bool = True) -> VerifyReport:
    ddir = dataset_dir(manifest, root)
    specs = manifest.files if include_optional else manifest.required_files
    checks = [
        _check(f.name, ddir / f.name, f.size, dict(f.checksums), progress)
        for f in tqdm(specs, desc=f"verifying {manifest.name}", unit="file", disable=not progress or len(specs) < 2)
    ]
    if not specs:  # hand-placed datasets list no archive: check the layout folder the loader will read
        layout_dir = ddir / manifest.layout.subdir
        status = OK if layout_dir.is_dir() and any(layout_dir.iterdir()) else MISSING
        checks.append(FileCheck(manifest.layout.subdir or ".", layout_dir, status,
                                detail="dataset folder placed by hand (no published checksums)"))
    return VerifyReport(manifest.name, ddir, checks)


def verify(name: str, root: Optional[str | os.PathLike] = None, *, include_optional: bool = False,
           progress: bool = True) -> VerifyReport:
    """Verify dataset ``name`` under ``<root>/<name>/`` (the bundled folder for ``kather2016_tiny`` by default)."""
    manifest = load_manifest(name)
    if manifest.access == "unavailable":
        from .download import manual_instructions

        raise ManualDownloadRequired(manual_instructions(manifest, root, "the host cannot serve it"))
    return verify_manifest(manifest, root, include_optional=include_optional, progress=progress)
