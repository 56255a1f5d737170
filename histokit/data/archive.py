"""Safe extraction of zip and tar(.gz/.bz2/.xz) archives.

Every member is checked before anything is written: absolute paths, ``..`` components (zip-slip / tar traversal;
the rule of :func:`histokit.data.safepaths.path_problem`, the one the manifests' own paths obey), symbolic and hard
links, device / FIFO members, and a name given twice (the last copy would silently replace the first) are refused with :class:`UnsafeArchiveError` naming the archive and the member. So are decompression
bombs: more than ``max_bytes`` extracted in all (default 256 GiB; NCT-CRC-HE-100K's 11.7 GB zip is far below),
more than ``max_ratio`` times the archive's own size (default 100x; histology archives are 1-5x, a bomb 1000x and
more), or more than ``max_members`` members. The sizes checked are the ones the extraction writes (zipfile never
writes more than a member's declared size; a tar header's size is the member's length), and a tar is read header
by header, so a tar.gz bomb is refused as soon as the members read so far cross a limit, not after decompressing
all of it. A truncated or damaged archive raises :class:`CorruptArchiveError` naming it (and the member, for a bad CRC).

A marker ``.<archive>.extracted.json`` in the destination records a completed extraction, so a re-run is a no-op;
an interrupted extraction has no marker and is simply redone (members are overwritten).
"""
from __future__ import annotations

import os
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Iterable, Optional

from ..progress import progress_bar

from ..io import atomic_write_json
from .hashing import read_stat_marker
from .errors import CorruptArchiveError, UnsafeArchiveError
from .safepaths import path_problem

DEFAULT_MAX_BYTES = 256 * 2 ** 30   # extracted bytes in all (the largest archive the kit fetches is 11.7 GB)
DEFAULT_MAX_RATIO = 100.0           # extracted bytes / archive bytes
DEFAULT_MAX_MEMBERS = 5_000_000     # NCT-CRC-HE-100K has 100,000; ILSVRC 2012 train 1.28 M (in 1,000 inner tars)
RATIO_FLOOR = 1 << 20               # below 1 MiB extracted in all, a ratio means nothing (a 50-byte zip of 5 kB)


def _gib(n: float) -> str:
    return f"{n / 2 ** 30:,.2f} GiB" if n >= 2 ** 30 else f"{int(n):,} bytes"


class _Budget:
    """The running checks of one extraction: names seen, bytes and members so far against the limits."""

    def __init__(self, archive: Path, max_bytes: Optional[int], max_ratio: Optional[float], max_members: Optional[int]):
        self.archive, self.max_bytes, self.max_ratio, self.max_members = archive, max_bytes, max_ratio, max_members
        self.archive_size = max(archive.stat().st_size, 1)
        self.total = 0
        self.count = 0
        self.seen: dict[str, tuple[int, bool]] = {}  # normalized name -> (index, is a folder)

    def add(self, name: str, size: int, is_dir: bool) -> None:
        archive = self.archive
        key = PurePosixPath(name.replace("\\", "/")).as_posix()
        if key in self.seen and not (is_dir and self.seen[key][1]):
            raise UnsafeArchiveError(
                f"{archive}: member {name!r} appears twice (members {self.seen[key][0] + 1} and {self.count + 1}); "
                "refusing to extract: the last copy would silently replace the first")
        self.seen.setdefault(key, (self.count, is_dir))
        self.count += 1
        self.total += max(size, 0)
        if self.max_members is not None and self.count > self.max_members:
            raise UnsafeArchiveError(f"{archive}: more than {self.max_members:,} members (at member {name!r}); "
                                     "refusing to extract (pass max_members= to allow more)")
        if self.max_bytes is not None and self.total > self.max_bytes:
            raise UnsafeArchiveError(
                f"{archive}: extracting would write more than the limit of {_gib(self.max_bytes)} (reached at member "
                f"{name!r}, {size:,} bytes); refusing (a decompression bomb? pass max_bytes= for a larger archive)")
        ratio = self.total / self.archive_size
        if self.max_ratio is not None and self.total > RATIO_FLOOR and ratio > self.max_ratio:
            raise UnsafeArchiveError(
                f"{archive}: members expand to {_gib(self.total)} from a {_gib(self.archive_size)} archive "
                f"({ratio:,.0f}x, limit {self.max_ratio:g}x; reached at member {name!r}, {size:,} bytes); refusing "
                "(a decompression bomb? pass max_ratio= if the archive is trusted)")


def _marker(archive: Path, dest: Path) -> Path:
    return dest / f".{archive.name}.extracted.json"


def _check_name(name: str, archive: Path, dest: Path) -> None:
    problem = path_problem(name)  # the same rule as for the paths a manifest names
    if problem:
        raise UnsafeArchiveError(f"{archive}: member {name!r} {problem} and would land outside {dest}; refusing to "
                                 "extract")
    # belt and braces: the resolved target must stay inside dest (a folder of dest may be a link)
    target = (dest / name.replace("\\", "/")).resolve()
    if target != dest and dest not in target.parents:
        raise UnsafeArchiveError(f"{archive}: member {name!r} resolves outside {dest}; refusing")


def _zip_members(zf: zipfile.ZipFile, archive: Path, dest: Path, budget: _Budget) -> list[zipfile.ZipInfo]:
    members = zf.infolist()
    for info in members:
        _check_name(info.filename, archive, dest)
        mode = info.external_attr >> 16  # unix mode bits, when the archiver stored them
        if stat.S_ISLNK(mode):
            raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a symbolic link; refusing to extract")
        if mode and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a device/FIFO file; refusing")
        budget.add(info.filename, info.file_size, info.is_dir())
    return members


def _tar_members(tf: tarfile.TarFile, archive: Path, dest: Path, budget: _Budget) -> list[tarfile.TarInfo]:
    members = []
    for m in tf:  # one header at a time: a bomb is refused before the rest of it is decompressed
        _check_name(m.name, archive, dest)
        if m.issym() or m.islnk():
            kind = "symbolic" if m.issym() else "hard"
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a {kind} link to {m.linkname!r}; refusing")
        if m.isdev():
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a device/FIFO file; refusing to extract")
        if not (m.isfile() or m.isdir()):
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} has unsupported type {m.type!r}; refusing")
        budget.add(m.name, m.size if m.isfile() else 0, m.isdir())
        members.append(m)
    return members


def is_extracted(archive: str | os.PathLike, dest: str | os.PathLike) -> bool:
    """True when ``dest`` holds a completed extraction of this very archive (same size and mtime)."""
    archive, dest = Path(archive), Path(dest)
    return read_stat_marker(_marker(archive, dest), archive) is not None


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike, *, progress: bool = True,
                 max_bytes: Optional[int] = DEFAULT_MAX_BYTES, max_ratio: Optional[float] = DEFAULT_MAX_RATIO,
                 max_members: Optional[int] = DEFAULT_MAX_MEMBERS) -> Path:
    """Extract a zip or tar archive into ``dest`` after checking every member; return ``dest``.

    ``max_bytes`` (extracted bytes in all), ``max_ratio`` (extracted / archive bytes, checked above 1 MiB) and
    ``max_members`` bound a decompression bomb; None lifts a limit. See the module docstring for what is refused."""
    archive = Path(archive)
    dest = Path(dest)
    if not archive.is_file():
        raise FileNotFoundError(f"archive {archive} does not exist")
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve()
    if is_extracted(archive, dest):
        return dest
    budget = _Budget(archive, max_bytes, max_ratio, max_members)
    current = None
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                members = _zip_members(zf, archive, dest, budget)
                for info in _bar(members, archive, progress):
                    current = info.filename
                    zf.extract(info, dest)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                members = _tar_members(tf, archive, dest, budget)
                for m in _bar(members, archive, progress):
                    current = m.name
                    # the 'data' filter (PEP 706) re-checks paths and strips setuid bits; our checks ran already
                    tf.extract(m, dest, filter="data")
        else:
            raise UnsafeArchiveError(f"{archive} is neither a zip nor a tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
        where = f" (member {current!r})" if current else ""
        raise CorruptArchiveError(f"{archive} is truncated or damaged{where}: {type(exc).__name__}: {exc}; nothing "
                                  "is marked extracted: replace the archive (delete it and run `histokit data "
                                  "prepare` again)") from None
    st = archive.stat()
    atomic_write_json(_marker(archive, dest), {
        "archive": archive.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "members": len(members),
        "bytes": budget.total,
    })
    return dest


def _bar(members: Iterable, archive: Path, progress: bool):
    return progress_bar(members, desc=f"extracting {archive.name}", unit="file", disable=not progress)
