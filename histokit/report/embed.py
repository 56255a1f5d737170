"""Figures as ``data:`` URIs, so report.html opens offline and alone.

A figure small enough is embedded byte for byte. A large one (photographic tile grids at 150 dpi reach 3 MB) is
downscaled to ``MAX_SIDE`` pixels and, if still large, re-encoded as JPEG: a report embedding every run's
galleries at full size would weigh tens of MB. The report links the full-resolution PNG beside each figure.

Re-encoding is the slow part of writing the report (about 40 large figures across the papers' smoke and rehearsal
results), so the trial PNG uses zlib level 1, and each result is kept in ``runs/cache/report_figures`` under the
figure's sha256: a report written again re-encodes only figures that changed.
"""
from __future__ import annotations

import base64
import hashlib
import io
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Optional

MAX_SIDE = 1400
MAX_BYTES = 400_000
JPEG_QUALITY = 85


_CACHE_DIR: ContextVar[Optional[Path]] = ContextVar("report_figure_cache", default=None)


def default_cache_dir() -> Path:
    from .. import paths

    return paths.RUNS_DIR / "cache" / "report_figures"


@contextmanager
def figure_cache(cache_dir: Optional[Path]):
    """Within the block, :func:`data_uri` keeps re-encoded figures in ``cache_dir`` (None: no cache)."""
    token = _CACHE_DIR.set(Path(cache_dir) if cache_dir is not None else None)
    try:
        yield
    finally:
        _CACHE_DIR.reset(token)


def data_uri(path: Path, *, max_side: int = MAX_SIDE, max_bytes: int = MAX_BYTES,
             cache_dir: Optional[Path] = None) -> str:
    """``path`` as a data URI (see the module docstring); ``cache_dir`` (default: the :func:`figure_cache` block's)
    keeps re-encoded figures by content."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    raw = path.read_bytes()
    try:
        with Image.open(io.BytesIO(raw)) as im:
            fmt, size = im.format, im.size
            if fmt in ("PNG", "JPEG") and len(raw) <= max_bytes and max(size) <= max_side:
                return _uri(f"image/{fmt.lower()}", raw)  # small enough: byte for byte
            cached = None
            cache_dir = cache_dir if cache_dir is not None else _CACHE_DIR.get()
            if cache_dir is not None:
                key = hashlib.sha256(raw + f"|{max_side}|{max_bytes}|{JPEG_QUALITY}".encode()).hexdigest()
                cached = Path(cache_dir) / f"{key}.uri"
                if cached.is_file():
                    return cached.read_text(encoding="ascii")
            uri = _reencoded(im, max_side, max_bytes, len(raw))
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"figure {path} is not a readable image: {err}") from err
    if cached is not None:
        from ..io import atomic_write_text

        atomic_write_text(cached, uri)
    return uri


def _reencoded(im, max_side: int, max_bytes: int, raw_bytes: int) -> str:
    from PIL import Image

    pixels = im.size[0] * im.size[1]
    im = im.convert("RGB")
    im.thumbnail((max_side, max_side), Image.LANCZOS)
    # A PNG shrinks about with its pixel count: one far over the limit after downscaling (a photographic tile
    # grid) goes straight to JPEG; otherwise a trial PNG at zlib's fastest level decides.
    if raw_bytes * (im.size[0] * im.size[1]) / pixels <= 2 * max_bytes:
        buf = io.BytesIO()
        im.save(buf, format="PNG", compress_level=1)
        if buf.tell() <= max_bytes:
            return _uri("image/png", buf.getvalue())
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return _uri("image/jpeg", buf.getvalue())


def _uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
