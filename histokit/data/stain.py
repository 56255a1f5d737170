"""Macenko stain normalization (Macenko et al., ISBI 2009), through torchstain's implementation.

NCT-CRC-HE-100K is Macenko-normalized by its authors; Ye et al. (CypherViT) report CRC with and without it, so the
kit can apply the same normalization to any tile: ``MacenkoNormalizer().fit(target_tile)`` then ``norm(tile)``.

No tissue: Macenko estimates the stain vectors from the pixels whose optical density exceeds ``beta`` in every
channel; a blank (background) tile has none and the estimate is undefined. Such a tile raises :class:`NoTissueError`
(``on_no_tissue="raise"``, default) or is returned unchanged (``"passthrough"``, for datasets with background tiles
such as the CRC class BACK).
"""
from __future__ import annotations

import numpy as np
from PIL import Image
import torchstain

from .errors import DataError


class NoTissueError(DataError, ValueError):
    """Too few stained pixels to estimate the H&E stain vectors."""


class MacenkoNormalizer:
    """``fit(target: PIL)`` on a reference tile, then ``__call__(PIL) -> PIL`` (RGB uint8, same size).

    ``Io``, ``alpha`` and ``beta`` are Macenko's transmitted intensity, angle percentile and OD threshold (torchstain
    defaults 240, 1, 0.15). ``min_tissue_pixels`` is how many stained pixels a tile needs (default 1 % of it, at
    least 100); fewer triggers the ``on_no_tissue`` rule. Before ``fit`` the normalizer uses torchstain's
    reference stain matrix (from Macenko's paper).
    """

    def __init__(self, Io: float = 240, alpha: float = 1, beta: float = 0.15, on_no_tissue: str = "raise",
                 min_tissue_fraction: float = 0.01, min_tissue_pixels: int = 100):
        if on_no_tissue not in ("raise", "passthrough"):
            raise ValueError(f"on_no_tissue must be 'raise' or 'passthrough', got {on_no_tissue!r}")
        self.Io, self.alpha, self.beta = Io, alpha, beta
        self.on_no_tissue = on_no_tissue
        self.min_tissue_fraction, self.min_tissue_pixels = min_tissue_fraction, min_tissue_pixels
        self._impl = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
        self.fitted = False

    def stained_pixels(self, rgb: np.ndarray) -> int:
        """Pixels with optical density >= beta in all three channels (the ones Macenko's estimate uses)."""
        od = -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1) / self.Io)
        return int(np.count_nonzero(np.all(od >= self.beta, axis=1)))

    def _has_tissue(self, rgb: np.ndarray) -> bool:
        needed = max(self.min_tissue_pixels, int(self.min_tissue_fraction * rgb.shape[0] * rgb.shape[1]))
        return self.stained_pixels(rgb) >= needed

    @staticmethod
    def _as_array(image: Image.Image) -> np.ndarray:
        if not isinstance(image, Image.Image):
            raise TypeError(f"MacenkoNormalizer expects a PIL image, got {type(image).__name__}")
        return np.asarray(image.convert("RGB"), dtype=np.uint8)

    def fit(self, target: Image.Image) -> "MacenkoNormalizer":
        rgb = self._as_array(target)
        if not self._has_tissue(rgb):  # a target without tissue cannot define the stains, whatever the rule
            raise NoTissueError("Macenko target tile has too few stained pixels to estimate the H&E stain vectors")
        self._impl.fit(rgb, Io=self.Io, alpha=self.alpha, beta=self.beta)
        self.fitted = True
        return self

    def __call__(self, image: Image.Image) -> Image.Image:
        rgb = self._as_array(image)
        if not self._has_tissue(rgb):
            if self.on_no_tissue == "passthrough":
                return image.convert("RGB")
            raise NoTissueError(f"tile of size {image.size} has {self.stained_pixels(rgb)} stained pixels: too few "
                                f"for Macenko (use on_no_tissue='passthrough' to keep such tiles unchanged)")
        out, _, _ = self._impl.normalize(rgb, Io=self.Io, alpha=self.alpha, beta=self.beta, stains=False)
        return Image.fromarray(np.asarray(out, dtype=np.uint8))
