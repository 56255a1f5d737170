"""Cut large images (BACH 2048 x 1536, BRACS RoIs, VGH TMA cores) into tiles and drop tiles without tissue.

Tissue rule (documented, one for the kit): a pixel is tissue when its HSV saturation (0..255) exceeds a threshold;
stained tissue is saturated, background glass is white or grey. The threshold is Otsu's (OpenCV) on the saturation
of the **whole image**, clipped to [``MIN_SATURATION``, ``MAX_SATURATION``] = [40, 60]:

- the floor: on an image without tissue Otsu splits noise; tinted background glass reaches saturation ~30 on the
  Kather tiles (class EMPTY), so below 40 is never tissue;
- the cap: on an image that is all tissue Otsu splits nuclei from cytoplasm (thresholds 100-150); tissue starts
  well below that, so above 60 is always tissue.

``tile_image`` computes the threshold once per image and applies it to every tile, so a tile that is half glass
scores ~0.5 whatever the rest of the image looks like. On the bundled tiles: TUMOR ~0.93, EMPTY ~0.02, ADIPOSE ~0.07
(fat is mostly empty vacuoles).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np
from PIL import Image

MIN_SATURATION = 40
MAX_SATURATION = 60


@dataclass(frozen=True)
class Tile:
    """A tile cut at pixel (x, y) (its top-left corner in the source image)."""

    x: int
    y: int
    image: Image.Image
    tissue: float = 1.0


def _saturation(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB").convert("HSV"))[..., 1]


def tissue_threshold(image: Image.Image) -> int:
    """Saturation threshold (0..255): Otsu on the image's saturation, clipped to [MIN_SATURATION, MAX_SATURATION]."""
    sat = np.ascontiguousarray(_saturation(image))
    otsu, _ = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return int(min(max(otsu, MIN_SATURATION), MAX_SATURATION))


def tissue_fraction(image: Image.Image, threshold: Optional[int] = None) -> float:
    """Fraction of pixels whose saturation exceeds ``threshold`` (default: :func:`tissue_threshold` of ``image``)."""
    t = tissue_threshold(image) if threshold is None else threshold
    return float(np.mean(_saturation(image) > t))


def _check_grid_args(tile_size: int, stride: Optional[int], min_tissue: float) -> int:
    if tile_size <= 0 or (stride is not None and stride <= 0):
        raise ValueError(f"tile_image: tile_size and stride must be positive, got {tile_size}, {stride}")
    if not 0 <= min_tissue <= 1:
        raise ValueError(f"tile_image: min_tissue must be in [0, 1], got {min_tissue}")
    return stride or tile_size


def tile_grid(image: Image.Image, tile_size: int, stride: Optional[int] = None, min_tissue: float = 0.5
              ) -> list[tuple[int, int, float]]:
    """``(x, y, tissue fraction)`` of the tiles :func:`tile_image` keeps, without cropping them (row by row).

    The fractions come from one integral image of the tissue mask, so a 224 px / stride 112 grid over a 1128 x 720
    TMA image costs one saturation pass, not one per tile. An image smaller than one tile has no tiles."""
    stride = _check_grid_args(tile_size, stride, min_tissue)
    w, h = image.size
    if w < tile_size or h < tile_size:
        return []
    xs = np.arange(0, w - tile_size + 1, stride)
    ys = np.arange(0, h - tile_size + 1, stride)
    if min_tissue <= 0:
        return [(int(x), int(y), 1.0) for y in ys for x in xs]
    image = image.convert("RGB")
    sat = _saturation(image)
    mask = sat > tissue_threshold(image)
    integral = np.zeros((h + 1, w + 1), dtype=np.int64)
    integral[1:, 1:] = mask.cumsum(0).cumsum(1)
    y0, x0 = np.meshgrid(ys, xs, indexing="ij")
    y1, x1 = y0 + tile_size, x0 + tile_size
    counts = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    fractions = counts / float(tile_size * tile_size)
    return [(int(x), int(y), float(f)) for y, x, f in zip(y0.ravel(), x0.ravel(), fractions.ravel())
            if f >= min_tissue]


def tile_image(image: Image.Image, tile_size: int, stride: Optional[int] = None, min_tissue: float = 0.5
               ) -> list[Tile]:
    """Full ``tile_size`` tiles on a grid of step ``stride`` (default: ``tile_size``, no overlap), row by row,
    keeping those with tissue fraction >= ``min_tissue`` (0 keeps all). Partial tiles at the right / bottom
    border are not produced (no padding: a padded tile is not a real field of view)."""
    _check_grid_args(tile_size, stride, min_tissue)
    w, h = image.size
    if w < tile_size or h < tile_size:
        raise ValueError(f"tile_image: image of {w} x {h} px is smaller than one {tile_size} px tile")
    image = image.convert("RGB")
    return [Tile(x, y, image.crop((x, y, x + tile_size, y + tile_size)), frac)
            for x, y, frac in tile_grid(image, tile_size, stride, min_tissue)]
