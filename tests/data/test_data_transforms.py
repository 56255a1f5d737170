"""Transforms: eval normalization by hand, multi-crop / two-view shapes and the papers' parameters."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from histokit.data import load_dataset
from histokit.data.transforms import (GaussianBlur, HALF_MEAN_STD, IMAGENET_MEAN, IMAGENET_STD, MultiCropTransform,
                                      RandomRotate90, TwoViewTransform, eval_transform)


@pytest.fixture(scope="module")
def tile():
    return load_dataset("kather2016_tiny")[0][0]


def _find(compose, kind):
    """All transforms of type ``kind`` inside nested Compose / RandomApply."""
    found = []
    for t in getattr(compose, "transforms", [compose]):
        if isinstance(t, kind):
            found.append(t)
        if isinstance(t, (T.Compose, T.RandomApply)):
            found += _find(t, kind)
    return found


def test_eval_transform_normalizes_by_hand():
    img = Image.new("RGB", (50, 40), (51, 102, 204))
    for mean, std in [(IMAGENET_MEAN, IMAGENET_STD), (HALF_MEAN_STD, HALF_MEAN_STD)]:
        x = eval_transform(32, mean, std)(img)
        assert x.shape == (3, 32, 32)
        want = (np.array([51, 102, 204]) / 255 - np.array(mean)) / np.array(std)
        assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor(want, dtype=torch.float32), atol=1e-5)


def test_multicrop_shapes_and_dino_parameters(tile):
    mc = MultiCropTransform(64, 32, n_global=2, n_local=4)
    views = mc(tile)
    assert [tuple(v.shape) for v in views] == [(3, 64, 64)] * 2 + [(3, 32, 32)] * 4
    crop_g = _find(mc.global1, T.RandomResizedCrop)[0]
    crop_l = _find(mc.local, T.RandomResizedCrop)[0]
    assert crop_g.scale == (0.4, 1.0) and crop_l.scale == (0.05, 0.4)
    jitter = _find(mc.global1, T.ColorJitter)[0]
    assert jitter.brightness == (0.6, 1.4) and jitter.hue == (-0.1, 0.1)
    assert _find(mc.global2, T.RandomSolarize) and not _find(mc.global1, T.RandomSolarize)
    ps = {name: [b.p for b in _find(getattr(mc, name), GaussianBlur)] for name in ("global1", "global2", "local")}
    assert ps == {"global1": [1.0], "global2": [0.1], "local": [0.5]}
    assert not _find(mc.global1, T.GaussianBlur)  # DINO blurs with PIL, not a tensor kernel


def test_pil_blur_is_dinos_radius_and_probability(tile):
    import random

    from PIL import ImageFilter

    random.seed(3)
    out = GaussianBlur(p=1.0)(tile)
    random.seed(3)
    random.random()  # DINO draws do_it first, then the radius
    want = tile.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))
    assert np.array_equal(np.asarray(out), np.asarray(want)) and not np.array_equal(np.asarray(out), np.asarray(tile))
    assert GaussianBlur(p=0.0)(tile) is tile


def test_multicrop_views_are_random(tile):
    torch.manual_seed(0)
    a, b = MultiCropTransform(48, 24, n_local=0)(tile)
    assert not torch.equal(a, b)


def test_histology_option_adds_vertical_flip_and_rotation(tile):
    plain, histo = MultiCropTransform(32, 16), MultiCropTransform(32, 16, histology=True)
    assert not _find(plain.global1, T.RandomVerticalFlip)
    assert _find(histo.global1, T.RandomVerticalFlip) and _find(histo.global1, RandomRotate90)
    assert _find(TwoViewTransform(32, histology=True).view1, RandomRotate90)


def test_rotate90_is_lossless():
    arr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    img = Image.fromarray(arr)
    outs = {np.asarray(RandomRotate90()(img)).tobytes() for _ in range(60)}
    assert len(outs) == 4  # 0, 90, 180, 270 all occur, and nothing else


def test_two_view_simclr_and_mocov3(tile):
    simclr = TwoViewTransform(48)
    v1, v2 = simclr(tile)
    assert v1.shape == v2.shape == (3, 48, 48)
    jitter = _find(simclr.view1, T.ColorJitter)[0]
    # SimCLR's strength s = 1: brightness 0.8 s, hue 0.2 s
    assert jitter.brightness == pytest.approx((0.2, 1.8)) and jitter.hue == pytest.approx((-0.2, 0.2))
    assert _find(simclr.view1, T.RandomResizedCrop)[0].scale == (0.08, 1.0)
    moco = TwoViewTransform(48, style="mocov3")
    assert _find(moco.view2, T.RandomSolarize) and not _find(moco.view1, T.RandomSolarize)
    with pytest.raises(ValueError, match="style"):
        TwoViewTransform(48, style="byol")
