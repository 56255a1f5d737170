"""Grad-CAM++ on LGFFEM's outer neck nodes (Sensors 2025, Figs. 4-6): map shapes/ranges, the target, the figure."""
import numpy as np
import pytest
import torch
from PIL import Image

from histokit.models.backbones import create_encoder
from histokit.paths import BUNDLED_TILES_DIR
from histokit.viz.gradcam import EmbeddingSimilarityTarget, gradcam_figure, node_gradcams

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def _tile(rel: str, size: int = 64) -> torch.Tensor:
    im = Image.open(BUNDLED_TILES_DIR / rel).convert("RGB").resize((size, size), Image.BILINEAR)
    return torch.from_numpy(((np.asarray(im) / 255.0 - MEAN) / STD).transpose(2, 0, 1).copy()).float()


@pytest.fixture(scope="module")
def model_and_tiles():
    torch.manual_seed(0)
    model = create_encoder("lgffem_test").eval()
    return model, _tile("01_TUMOR/image_0_label_0.png"), _tile("01_TUMOR/image_1_label_0.png")


def test_similarity_target_is_cosine():
    ref = torch.tensor([1.0, 0.0])
    assert EmbeddingSimilarityTarget(ref)(torch.tensor([3.0, 3.0])).item() == pytest.approx(2 ** -0.5)
    with pytest.raises(ValueError, match="reference"):
        EmbeddingSimilarityTarget(torch.zeros(1, 2))


def test_node_maps_have_image_shape_and_unit_range(model_and_tiles):
    model, query, retrieved = model_and_tiles
    with torch.no_grad():
        ref = model(retrieved.unsqueeze(0))[0]
    maps = node_gradcams(model, query, ref)
    expected_keys = {(layer, n) for layer in range(2) for n in ("P1_2", "P2_2", "P3_2", "P4_2", "combined")}
    assert set(maps) == expected_keys
    for key, cam in maps.items():
        assert cam.shape == (64, 64), key
        assert np.isfinite(cam).all() and cam.min() >= 0.0 and cam.max() <= 1.0 + 1e-6, key
    assert maps[(1, "combined")].max() == pytest.approx(1.0, abs=1e-3)  # the library rescales the combination
    # Different nodes see different resolutions, so their maps differ.
    assert not np.allclose(maps[(1, "P1_2")], maps[(1, "P4_2")])
    with pytest.raises(ValueError, match="layer 5"):
        node_gradcams(model, query, ref, layers=[5])
    with pytest.raises(ValueError, match="image"):
        node_gradcams(model, query[0], ref)


def test_gradcam_figure_written(model_and_tiles, tmp_path):
    model, query, retrieved = model_and_tiles
    out = gradcam_figure(model, query, [retrieved], tmp_path / "figs" / "gradcam.png", layers=[1],
                         retrieved_titles=["S0-2"], progress=False)
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as im:
        w, h = im.size
    assert w > h  # 2 rows x (image + 4 nodes + combined) columns
    assert not list(out.parent.glob(".*.tmp"))  # atomic write left no temp file
    with pytest.raises(ValueError, match="retrieved"):
        gradcam_figure(model, query, [], tmp_path / "x.png", progress=False)
