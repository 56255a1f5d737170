"""tile_image: grid counts, positions, the tissue filter; tissue_fraction on synthetic and real images."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from histokit.data import load_dataset
from histokit.data.tiling import MAX_SATURATION, MIN_SATURATION, tile_image, tissue_fraction, tissue_threshold

PINK = (200, 110, 170)   # eosin-like, saturated
GLASS = (242, 242, 240)  # background


def _half_tissue(w=2048, h=1536):
    arr = np.empty((h, w, 3), dtype=np.uint8)
    arr[:] = GLASS
    arr[:, : w // 2] = PINK
    return Image.fromarray(arr)


def test_bach_sized_grid_counts():
    img = Image.new("RGB", (2048, 1536), PINK)
    assert len(tile_image(img, 512, min_tissue=0)) == 4 * 3
    tiles = tile_image(img, 512, stride=256, min_tissue=0)
    assert len(tiles) == 7 * 5
    assert (tiles[0].x, tiles[0].y) == (0, 0) and (tiles[-1].x, tiles[-1].y) == (1536, 1024)
    assert all(t.image.size == (512, 512) for t in tiles)
    assert len(tile_image(Image.new("RGB", (1000, 1000)), 224, min_tissue=0)) == 4 * 4  # no partial tiles


def test_tissue_filter_keeps_the_tissue_half():
    img = _half_tissue()
    kept = tile_image(img, 512, min_tissue=0.5)
    assert len(kept) == 2 * 3 and all(t.x < 1024 for t in kept) and all(t.tissue == 1.0 for t in kept)
    straddling = tile_image(_half_tissue(w=1536), 512, stride=256, min_tissue=0.5)
    assert {t.x for t in straddling} == {0, 256, 512}  # x=512 is exactly half tissue (>= 0.5)
    assert np.array_equal(np.asarray(kept[0].image), np.asarray(img.crop((0, 0, 512, 512))))


def test_tissue_fraction_synthetic():
    assert tissue_fraction(_half_tissue(256, 128)) == pytest.approx(0.5)
    assert tissue_fraction(Image.new("RGB", (64, 64), GLASS)) == 0.0
    assert tissue_threshold(Image.new("RGB", (64, 64), GLASS)) == MIN_SATURATION  # blank: the floor applies
    noisy_pink = np.random.default_rng(0).normal(PINK, 10, (64, 64, 3)).clip(0, 255).astype(np.uint8)
    assert tissue_threshold(Image.fromarray(noisy_pink)) == MAX_SATURATION  # all tissue: the cap applies
    assert tissue_fraction(Image.fromarray(noisy_pink)) > 0.95


def test_tissue_fraction_real_tiles():
    ds = load_dataset("kather2016_tiny")
    def mean_fraction(cls):
        return np.mean([tissue_fraction(ds[i][0]) for i in np.flatnonzero(ds.labels == ds.classes.index(cls))[:4]])

    assert mean_fraction("EMPTY") < 0.1 and mean_fraction("ADIPOSE") < 0.2 and mean_fraction("TUMOR") > 0.7


def test_bad_arguments():
    img = Image.new("RGB", (100, 100))
    with pytest.raises(ValueError, match="smaller than one 224 px tile"):
        tile_image(img, 224)
    with pytest.raises(ValueError, match="positive"):
        tile_image(img, 0)
    with pytest.raises(ValueError, match="min_tissue"):
        tile_image(img, 10, min_tissue=2)
