"""File digests for verification: several algorithms in one pass, with a progress bar (archives reach 11 GB).

``histokit.io.file_digest`` computes one algorithm per pass; checking a manifest entry that lists both sha256 and
md5 on an 11 GB archive would read it twice, hence this one-pass variant.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable

from ..progress import progress_bar

_CHUNK = 1 << 20


def file_digests(path: str | os.PathLike, algorithms: Iterable[str], *, progress: bool = True) -> dict[str, str]:
    """``{algorithm: hexdigest}`` for every hashlib algorithm name in ``algorithms``, reading the file once."""
    hashers = {name: hashlib.new(name) for name in algorithms}
    if not hashers:
        return {}
    size = os.path.getsize(path)
    # small files are hashed silently: a bar per tile of a 100-tile verify would be noise
    show = progress and size > 64 * _CHUNK
    with open(path, "rb") as fh, progress_bar(total=size, unit="B", unit_scale=True, disable=not show,
                                      desc=f"hashing {os.path.basename(path)}") as bar:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            for h in hashers.values():
                h.update(chunk)
            bar.update(len(chunk))
    return {name: h.hexdigest() for name, h in hashers.items()}


def read_stat_marker(marker: Path, target: Path) -> dict | None:
    """The JSON record in ``marker`` if it still describes ``target`` (same size and mtime), else None.

    Download and extraction both leave such a marker so a re-run can be a no-op without re-hashing.
    """
    import json

    if not marker.is_file():
        return None
    try:
        rec = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    st = target.stat()
    return rec if rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns else None
