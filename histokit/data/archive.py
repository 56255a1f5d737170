"""Safe extraction of zip and tar(.gz/.bz2/.xz) archives.

Every member is checked before anything is written: absolute paths, ``..`` components (zip-slip / tar traversal),
symbolic and hard links, and device / FIFO members are refused with :class:`UnsafeArchiveError` naming the archive
and the member. A marker ``.<archive>.extracted.json`` in the destination records a completed extraction, so a re-run
is a no-op; an interrupted extraction has no marker and is simply redone (members are overwritten).
"""
from __future__ import annotations

import json
import os
import re
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from ..progress import progress_bar

from ..io import atomic_write_json
from .hashing import read_stat_marker
from .errors import UnsafeArchiveError

_DRIVE = re.compile(r"^[A-Za-z]:")


def _marker(archive: Path, dest: Path) -> Path:
    return dest / f".{archive.name}.extracted.json"


def _check_name(name: str, archive: Path, dest: Path) -> None:
    posix = name.replace("\\", "/")
    if posix.startswith("/") or _DRIVE.match(posix):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refusing to extract")
    if ".." in PurePosixPath(posix).parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} contains '..' and would escape {dest}; refusing")
    # belt and braces: the resolved target must stay inside dest
    target = (dest / posix).resolve()
    if target != dest and dest not in target.parents:
        raise UnsafeArchiveError(f"{archive}: member {name!r} resolves outside {dest}; refusing")


def _zip_members(zf: zipfile.ZipFile, archive: Path, dest: Path) -> list[zipfile.ZipInfo]:
    members = zf.infolist()
    for info in members:
        _check_name(info.filename, archive, dest)
        mode = info.external_attr >> 16  # unix mode bits, when the archiver stored them
        if stat.S_ISLNK(mode):
            raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a symbolic link; refusing to extract")
        if mode and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a device/FIFO file; refusing")
    return members


def _tar_members(tf: tarfile.TarFile, archive: Path, dest: Path) -> list[tarfile.TarInfo]:
    members = tf.getmembers()
    for m in members:
        _check_name(m.name, archive, dest)
        if m.issym() or m.islnk():
            kind = "symbolic" if m.issym() else "hard"
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a {kind} link to {m.linkname!r}; refusing")
        if m.isdev():
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a device/FIFO file; refusing to extract")
        if not (m.isfile() or m.isdir()):
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} has unsupported type {m.type!r}; refusing")
    return members


def is_extracted(archive: str | os.PathLike, dest: str | os.PathLike) -> bool:
    """True when ``dest`` holds a completed extraction of this very archive (same size and mtime)."""
    archive, dest = Path(archive), Path(dest)
    return read_stat_marker(_marker(archive, dest), archive) is not None


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike, *, progress: bool = True) -> Path:
    """Extract a zip or tar archive into ``dest`` after checking every member; return ``dest``."""
    archive = Path(archive)
    dest = Path(dest)
    if not archive.is_file():
        raise FileNotFoundError(f"archive {archive} does not exist")
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve()
    if is_extracted(archive, dest):
        return dest
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            members = _zip_members(zf, archive, dest)
            for info in progress_bar(members, desc=f"extracting {archive.name}", unit="file", disable=not progress):
                zf.extract(info, dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = _tar_members(tf, archive, dest)
            for m in progress_bar(members, desc=f"extracting {archive.name}", unit="file", disable=not progress):
                # the 'data' filter (PEP 706) re-checks paths and strips setuid bits; our checks ran already
                tf.extract(m, dest, filter="data")
    else:
        raise UnsafeArchiveError(f"{archive} is neither a zip nor a tar archive")
    st = archive.stat()
    atomic_write_json(_marker(archive, dest), {
        "archive": archive.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "members": len(members),
    })
    return dest
