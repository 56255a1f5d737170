"""Cut large images (BACH 2048 x 1536, BRACS RoIs, VGH TMA cores) into tiles and drop tiles without tissue.

Tissue rule (documented, one for the kit): a pixel is tissue when its HSV saturation exceeds a threshold; stained
tissue is saturated, background glass is white or grey. The threshold is Otsu's (OpenCV) on the saturation of the
**whole image**, floored at ``MIN_SATURATION`` = 20 / 255 so that a blank image (whose Otsu threshold would split
noise) counts as empty. ``tile_image`` computes it once per image and applies it to every tile, so a tile that is
half background gets ~0.5, not the 0.5 a per-tile Otsu would force.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np
from PIL import Image

MIN_SATURATION = 20


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
    """Saturation threshold (0..255): Otsu on the image's saturation, at least ``MIN_SATURATION``."""
    sat = np.ascontiguousarray(_saturation(image))
    otsu, _ = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return int(max(otsu, MIN_SATURATION))


def tissue_fraction(image: Image.Image, threshold: Optional[int] = None) -> float:
    """Fraction of pixels whose saturation exceeds ``threshold`` (default: :func:`tissue_threshold` of ``image``)."""
    t = tissue_threshold(image) if threshold is None else threshold
    return float(np.mean(_saturation(image) > t))


def tile_image(image: Image.Image, tile_size: int, stride: Optional[int] = None, min_tissue: float = 0.5
               ) -> list[Tile]:
    """Full ``tile_size`` tiles on a grid of step ``stride`` (default: ``tile_size``, no overlap), row by row,
    keeping those with tissue fraction >= ``min_tissue`` (0 keeps all). Partial tiles at the right / bottom
    border are not produced (no padding: a padded tile is not a real field of view)."""
    if tile_size <= 0 or (stride is not None and stride <= 0):
        raise ValueError(f"tile_image: tile_size and stride must be positive, got {tile_size}, {stride}")
    if not 0 <= min_tissue <= 1:
        raise ValueError(f"tile_image: min_tissue must be in [0, 1], got {min_tissue}")
    stride = stride or tile_size
    w, h = image.size
    if w < tile_size or h < tile_size:
        raise ValueError(f"tile_image: image of {w} x {h} px is smaller than one {tile_size} px tile")
    image = image.convert("RGB")
    threshold = tissue_threshold(image) if min_tissue > 0 else None
    sat = _saturation(image) if threshold is not None else None
    tiles = []
    for y in range(0, h - tile_size + 1, stride):
        for x in range(0, w - tile_size + 1, stride):
            frac = 1.0 if sat is None else float(np.mean(sat[y:y + tile_size, x:x + tile_size] > threshold))
            if frac >= min_tissue:
                tiles.append(Tile(x, y, image.crop((x, y, x + tile_size, y + tile_size)), frac))
    return tiles
