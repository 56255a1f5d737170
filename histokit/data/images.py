"""``load_image(path) -> PIL.Image`` in RGB, with one documented rule per input mode; nothing is silently skipped.

Conversion rule (the mode PIL reports after opening):

============================  ========================================================================
``RGB``                        returned as is
``RGBA``, ``LA``, ``La``,      alpha-composited onto a white background, then RGB (slides are scanned
``RGBa``, ``PA``, ``P`` with   on white glass: a transparent pixel is empty background, not black)
transparency
``P`` (no transparency)        palette expanded to RGB
``1``, ``L``                   grey replicated into R, G, B
``I;16*``, ``I``               16-bit grey scaled to 8 bits by ``round(v / 257)`` (0 -> 0, 65535 -> 255;
                               values outside 0..65535 are clipped), then replicated to RGB. A fixed
                               scale, not min-max, so intensities stay comparable across images
16-bit RGB / RGBA (48/64-bit   PIL itself decodes them as ``RGB`` / ``RGBA`` keeping the high byte of
PNG)                           each sample (``v >> 8``: 0x00FF -> 0, 0xFFFF -> 255); then as above
``CMYK``, ``YCbCr``            PIL's conversion to RGB (CMYK without an ICC profile: naive inversion)
anything else (``F``, ...)     :class:`ValueError` naming the file and the mode
============================  ========================================================================

Errors: a zero-byte, truncated or undecodable file raises :class:`CorruptImageError` naming the file; an image
with more pixels than PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, 89,478,485 px by default)
raises :class:`ImageTooLargeError` naming the file, its size and how to allow it (``max_pixels=``). PIL itself
only warns between 1x and 2x the limit; here anything over the limit is an error. A bad file is never deleted,
moved or skipped: the error stops the run and the file stays where it is.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import CorruptImageError, ImageTooLargeError

_ALPHA_MODES = {"RGBA", "LA", "La", "RGBa", "PA"}
_GREY16_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
_PLAIN_MODES = {"1", "L", "CMYK", "YCbCr"}
WHITE = (255, 255, 255)


def to_rgb(img: Image.Image, source: str = "<image>") -> Image.Image:
    """Apply the module's conversion rule to an already decoded image (``source`` names it in errors)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "P":
        return img.convert("RGB")
    if mode in _GREY16_MODES:
        values = np.asarray(img, dtype=np.float64)
        grey = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode in _PLAIN_MODES:
        return img.convert("RGB")
    raise ValueError(f"{source}: unsupported image mode {mode!r} (supported: RGB, RGBA, LA, P, 1, L, I, I;16, "
                     f"CMYK, YCbCr)")


def load_image(path: str | os.PathLike, *, max_pixels: Optional[int] = None) -> Image.Image:
    """Decode ``path`` fully and return an RGB image (see the module docstring for the per-mode rule).

    ``max_pixels`` raises PIL's decompression-bomb limit for this call (e.g. large BRACS RoIs); ``None`` keeps it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    if path.stat().st_size == 0:
        raise CorruptImageError(f"{path}: zero-byte file (an interrupted copy or download?)")
    old_limit = Image.MAX_IMAGE_PIXELS
    limit = old_limit if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            # PIL only *warns* between 1x and 2x its limit; we want one rule: over the limit is an error
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if max_pixels is not None:  # PIL has no per-call limit; restore the global one afterwards
                Image.MAX_IMAGE_PIXELS = max_pixels
            try:
                with Image.open(path) as img:
                    img.load()  # decode now, so truncation surfaces here and not in a DataLoader worker
                    img = img.copy() if img.mode == "RGB" else to_rgb(img, str(path))
            finally:
                Image.MAX_IMAGE_PIXELS = old_limit
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(
            f"{path}: {exc}. Pass load_image(..., max_pixels=N) with N above the image's pixel count if the file "
            f"is trusted (limit now {limit:,} pixels)"
        ) from None
    except UnidentifiedImageError as exc:
        raise CorruptImageError(f"{path}: not a decodable image ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if isinstance(exc, ValueError) and "unsupported image mode" in str(exc):
            raise
        raise CorruptImageError(f"{path}: corrupt or truncated image ({type(exc).__name__}: {exc})") from None
    return img


def array_to_image(array: np.ndarray, source: str = "<array>") -> Image.Image:
    """An (H, W, 3) or (H, W) array to an RGB image: uint8 as is, float arrays in 0..255 (PanNuke) rounded."""
    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"{source}: image array has non-numeric dtype {arr.dtype}")
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        return Image.fromarray(arr).convert("RGB")
    if arr.ndim == 3 and arr.shape[2] == 3:
        return Image.fromarray(arr)
    raise ValueError(f"{source}: expected an (H, W, 3) or (H, W) image array, got shape {arr.shape}")
