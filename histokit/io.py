"""Atomic writes and file digests: an artifact is either complete on disk or absent, never half-written."""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

_CHUNK = 1 << 20


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks (``algorithm`` is any hashlib name: sha256, md5, ...)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    return file_digest(path, "sha256")


def slug(text: str, *, sep: str = "-", keep: str = "", lower: bool = True) -> str:
    """``text`` as a name part: every run of characters other than letters, digits and ``keep`` becomes ``sep``
    (an HTML anchor ``"esvit-smoke"``; ``slug("EsViT + k-NN", sep="_", keep="._-")`` is ``"esvit_k-nn"``)."""
    text = text.lower() if lower else text
    return re.sub(rf"[^A-Za-z0-9{re.escape(keep)}]+", sep, text).strip(sep)


def _naming(exc: OSError, path: Path, doing: str = "") -> OSError:
    """The same OS error (same errno, hence the same subclass: PermissionError, ...) with ``path`` as its filename:
    a full disk raises ENOSPC from ``write()`` with no file name at all, which would leave the user guessing."""
    return OSError(exc.errno, f"{exc.strerror}{doing}", str(path))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file lives in the same directory so the final ``os.replace`` is atomic on POSIX.
    On any exception the temporary file is removed and ``path`` is left as it was; an ``OSError`` that names no file
    (a full disk, a read-only directory) is re-raised naming ``path``.
    A process killed outright (SIGKILL, power loss) can leave a hidden ``.<name>.*.tmp`` beside ``path``: it is never
    read, and ``path`` itself is still the complete previous version.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if exc.errno is None:
            raise
        raise _naming(exc, path, " (creating a temporary file beside it)") from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be read by others
        os.replace(tmp_path, path)
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:
            raise _naming(exc, path) from exc
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through a temporary file, so a crash mid-save never leaves a corrupt checkpoint.

    torch's zip writer reports a failed write (a full disk, above all) as ``RuntimeError: [enforce fail at
    inline_container.cc:...] unexpected pos N vs M``, naming neither the file nor the cause: it is re-raised as an
    ``OSError`` naming ``path`` and the space left on its filesystem."""
    import errno
    import shutil

    import torch

    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as err:
            text = str(err)
            if "inline_container" not in text and "PytorchStreamWriter" not in text:
                raise
            free = shutil.disk_usage(Path(path).parent).free
            code = errno.ENOSPC if free < _LOW_SPACE else errno.EIO
            cause = "no space left on the device" if code == errno.ENOSPC else "write failed"
            raise OSError(code, f"{cause} while torch.save wrote it ({free / 2**20:.0f} MiB free on that filesystem; "
                                f"torch said: {text.strip().splitlines()[-1][:160]})", str(path)) from err
    return Path(path)


_LOW_SPACE = 1 << 30  # under 1 GiB free when a checkpoint write fails: the disk filled up during it
