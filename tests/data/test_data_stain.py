"""MacenkoNormalizer on real tiles: shape / range, parity with torchstain called directly, the self-normalization
fixed point, and the no-tissue rule."""
from __future__ import annotations

import numpy as np
import pytest
import torchstain
from PIL import Image

from histokit.data import load_dataset
from histokit.data.stain import MacenkoNormalizer, NoTissueError


@pytest.fixture(scope="module")
def tiles():
    ds = load_dataset("kather2016_tiny")
    first = {}
    for i, y in enumerate(ds.labels):
        first.setdefault(ds.classes[y], ds[i][0])
    return first


def test_output_shape_range_and_torchstain_parity(tiles):
    target, source = tiles["TUMOR"], tiles["LYMPHO"]
    norm = MacenkoNormalizer().fit(target)
    out = norm(source)
    arr = np.asarray(out)
    assert out.mode == "RGB" and out.size == source.size and arr.dtype == np.uint8
    assert 0 <= arr.min() and arr.max() <= 255 and arr.std() > 5  # a real image, not a constant
    ref = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
    ref.fit(np.asarray(target))
    expected, _, _ = ref.normalize(np.asarray(source), stains=False)
    assert np.array_equal(arr, expected)


def test_normalizing_the_target_to_itself_is_near_identity(tiles):
    target = tiles["STROMA"]
    out = np.asarray(MacenkoNormalizer().fit(target)(target), dtype=np.float64)
    diff = np.abs(out - np.asarray(target, dtype=np.float64)).mean()
    assert diff < 8  # only the OD component outside the H-E plane is lost (2-5 levels on these tiles)


def test_normalization_moves_colour_towards_target(tiles):
    target, source = tiles["TUMOR"], tiles["DEBRIS"]
    out = MacenkoNormalizer().fit(target)(source)
    mean = lambda im: np.asarray(im, dtype=np.float64).reshape(-1, 3).mean(0)
    assert np.linalg.norm(mean(out) - mean(target)) < np.linalg.norm(mean(source) - mean(target))


def test_no_tissue_raises_or_passes_through(tiles):
    blank = Image.new("RGB", (64, 64), (245, 245, 245))
    norm = MacenkoNormalizer().fit(tiles["TUMOR"])
    with pytest.raises(NoTissueError, match="too few"):
        norm(blank)
    passthrough = MacenkoNormalizer(on_no_tissue="passthrough").fit(tiles["TUMOR"])
    assert np.array_equal(np.asarray(passthrough(blank)), np.asarray(blank))
    with pytest.raises(NoTissueError, match="target"):
        MacenkoNormalizer().fit(blank)
    with pytest.raises(ValueError, match="on_no_tissue"):
        MacenkoNormalizer(on_no_tissue="skip")
