"""Figures as ``data:`` URIs, so report.html opens offline and alone.

A figure small enough is embedded byte for byte. A large one (photographic tile grids at 150 dpi reach 3 MB) is
downscaled to ``MAX_SIDE`` pixels and, if still large, re-encoded as JPEG: a report embedding every run's
galleries at full size would weigh tens of MB. The report links the full-resolution PNG beside each figure.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path

MAX_SIDE = 1400
MAX_BYTES = 400_000
JPEG_QUALITY = 85


def data_uri(path: Path, *, max_side: int = MAX_SIDE, max_bytes: int = MAX_BYTES) -> str:
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    raw = path.read_bytes()
    try:
        with Image.open(io.BytesIO(raw)) as im:
            fmt, size = im.format, im.size
            if fmt in ("PNG", "JPEG") and len(raw) <= max_bytes and max(size) <= max_side:
                return _uri(f"image/{fmt.lower()}", raw)
            im = im.convert("RGB")
            im.thumbnail((max_side, max_side), Image.LANCZOS)
            buf = io.BytesIO()
            im.save(buf, format="PNG", optimize=True)
            if buf.tell() <= max_bytes:
                return _uri("image/png", buf.getvalue())
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
            return _uri("image/jpeg", buf.getvalue())
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"figure {path} is not a readable image: {err}") from err


def _uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
