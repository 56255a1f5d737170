"""Feature extraction on the bundled real Kather 2016 tiles, timing fields, latency, and the .npz artifact."""
import numpy as np
import pandas as pd
import pytest
import timm
import torch
from PIL import Image
from torch.utils.data import Dataset, TensorDataset

from histokit.models.base import Encoder, TokenOutput
from histokit.paths import BUNDLED_TILES_DIR
from histokit.retrieval.features import (
    FeatureFileError,
    FeatureSet,
    extract_features,
    l2_normalize,
    load_features,
    measure_latency,
    save_features,
)

IMG = 32  # small tiles keep the test cheap; the code path is the full one


class _Tiles(Dataset):
    """The bundled tiles as (tensor, label, index), decoded from PNG on every access."""

    def __init__(self, n=24):
        self.rows = pd.read_csv(BUNDLED_TILES_DIR / "labels.csv").iloc[::4].head(n).reset_index(drop=True)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = self.rows.iloc[i]
        img = Image.open(BUNDLED_TILES_DIR / row["path"]).convert("RGB").resize((IMG, IMG))
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return x, int(row["label"]), i


class _MeanPatchViT(Encoder):
    """Tiny timm ViT with Habijan et al.'s pooling (mean of final patch tokens), meeting the Encoder contract."""

    def __init__(self):
        super().__init__()
        self.vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, img_size=IMG,
                                     depth=1, embed_dim=32, num_heads=2)
        self.embed_dim = 32

    def forward_tokens(self, x, mask=None):
        tokens = self.vit.forward_features(x)
        patches = tokens[:, self.vit.num_prefix_tokens:]
        return TokenOutput(pooled=patches.mean(1), patch_tokens=patches, cls_tokens=tokens[:, :1])


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return _MeanPatchViT().eval()


@pytest.fixture(scope="module")
def tiles():
    return _Tiles()


def test_l2_normalize_numpy_and_torch():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(l2_normalize(x), [[0.6, 0.8], [0.0, 0.0]])
    t = l2_normalize(torch.tensor(x))
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), [[0.6, 0.8], [0.0, 0.0]])


def test_extract_features_on_real_tiles_matches_direct_forward(encoder, tiles):
    fs = extract_features(encoder, tiles, batch_size=10, progress=False)  # 24 items: a ragged last batch
    assert fs.features.shape == (24, 32) and fs.features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fs.features, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(fs.indices, np.arange(24))
    assert fs.labels.tolist() == tiles.rows["label"].tolist() and fs.labels.dtype == np.int64
    # Same as pooling + L2 applied by hand, in dataset order.
    with torch.no_grad():
        direct = torch.nn.functional.normalize(encoder(torch.stack([tiles[i][0] for i in range(24)])), dim=1)
    np.testing.assert_allclose(fs.features, direct.numpy(), atol=1e-5)
    raw = extract_features(encoder, tiles, batch_size=24, normalize=False, progress=False)
    assert not np.allclose(np.linalg.norm(raw.features, axis=1), 1.0)


def test_timing_states_its_conditions(encoder, tiles):
    t = extract_features(encoder, tiles, batch_size=8, progress=False).timing
    assert t["device"] == "cpu" and t["batch_size"] == 8 and t["precision"] == "fp32"
    assert t["decode_included"] is True and t["n_images"] == 24
    assert t["total_s"] >= t["model_s"] > 0
    assert t["ms_per_image"] == pytest.approx(1000 * t["total_s"] / 24)
    in_memory = TensorDataset(torch.rand(6, 3, IMG, IMG), torch.zeros(6, dtype=torch.long), torch.arange(6))
    assert extract_features(encoder, in_memory, progress=False).timing["decode_included"] is False


def test_bf16_autocast_close_to_fp32(encoder, tiles):
    fp32 = extract_features(encoder, tiles, batch_size=24, progress=False)
    bf16 = extract_features(encoder, tiles, batch_size=24, precision="bf16", progress=False)
    assert bf16.timing["precision"] == "bf16" and bf16.features.dtype == np.float32
    cos = (fp32.features * bf16.features).sum(1)
    assert cos.min() > 0.98


def test_bad_arguments_are_named(encoder, tiles):
    with pytest.raises(ValueError, match="precision"):
        extract_features(encoder, tiles, precision="fp16", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(encoder, tiles, batch_size=0, progress=False)
    pairs = TensorDataset(torch.rand(4, 3, IMG, IMG), torch.zeros(4))
    with pytest.raises(ValueError, match=r"\(image_tensor, label, index\)"):
        extract_features(encoder, pairs, progress=False)


def test_measure_latency_fields(encoder):
    out = measure_latency(encoder, IMG, device="cpu", batch_size=2, warmup=1, repeats=3)
    assert out["ms_per_batch"] > 0 and out["ms_per_image"] == pytest.approx(out["ms_per_batch"] / 2)
    assert out["decode_included"] is False and out["batch_size"] == 2 and out["image_size"] == [IMG, IMG]


def test_save_load_roundtrip_and_checksum(tmp_path, encoder, tiles):
    fs = extract_features(encoder, tiles, batch_size=24, progress=False)
    path = tmp_path / "feats" / "train.npz"
    digest = save_features(path, fs)
    assert len(digest) == 64 and not list(path.parent.glob(".*tmp"))
    back = load_features(path, expected_sha256=digest)
    np.testing.assert_array_equal(back.features, fs.features)
    np.testing.assert_array_equal(back.labels, fs.labels)
    np.testing.assert_array_equal(back.indices, fs.indices)
    assert back.timing == fs.timing
    with pytest.raises(FeatureFileError, match="expected"):
        load_features(path, expected_sha256="0" * 64)
    path.write_bytes(b"not an npz")
    with pytest.raises(FeatureFileError, match="train.npz"):
        load_features(path)
    with pytest.raises(FeatureFileError, match="not found"):
        load_features(tmp_path / "nope.npz")


def test_featureset_validates_shapes():
    with pytest.raises(ValueError, match="labels"):
        FeatureSet(np.zeros((3, 2)), np.zeros(2), np.arange(3))


def test_uint8_batches_are_normalized_on_the_device_or_refused(encoder):
    pixels = torch.randint(0, 256, (5, 3, IMG, IMG), dtype=torch.uint8)
    ds = TensorDataset(pixels, torch.zeros(5, dtype=torch.long), torch.arange(5))
    with pytest.raises(ValueError, match="uint8_mean_std"):
        extract_features(encoder, ds, progress=False)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    fs = extract_features(encoder, ds, batch_size=2, uint8_mean_std=(mean, std), progress=False)
    by_hand = (pixels.float() / 255 - torch.tensor(mean).reshape(1, 3, 1, 1)) / torch.tensor(std).reshape(1, 3, 1, 1)
    ref = extract_features(encoder, TensorDataset(by_hand, torch.zeros(5), torch.arange(5)), progress=False)
    np.testing.assert_allclose(fs.features, ref.features, atol=1e-6)
    assert fs.timing["input_dtype"] == "uint8"


def test_num_workers_auto_and_bad_values(encoder, tiles, monkeypatch):
    from histokit.data import loading
    from histokit.retrieval import features as F

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(loading, "usable_cpus", lambda: 16)
    assert F.auto_num_workers("cpu") == 4 and F.auto_num_workers("cuda") == 15
    monkeypatch.setattr(loading, "usable_cpus", lambda: 2)
    assert F.auto_num_workers("cpu") == 0 and F.auto_num_workers("cuda") == 1
    assert extract_features(encoder, tiles, num_workers="auto", progress=False).timing["num_workers"] == 0
    with pytest.raises(ValueError, match="num_workers"):
        extract_features(encoder, tiles, num_workers="many", progress=False)


def test_channels_last_is_the_convnet_default_and_changes_no_value():
    from histokit.models.backbones import create_encoder
    from histokit.retrieval.features import is_convnet

    torch.manual_seed(0)
    cnn = create_encoder("resnet_test").eval()
    assert is_convnet(cnn) and not is_convnet(_MeanPatchViT())
    ds = TensorDataset(torch.rand(4, 3, IMG, IMG), torch.zeros(4), torch.arange(4))
    plain = extract_features(cnn, ds, channels_last=False, progress=False)
    fast = extract_features(cnn, ds, progress=False)
    assert fast.timing["channels_last"] is True and plain.timing["channels_last"] is False
    np.testing.assert_allclose(fast.features, plain.features, atol=1e-5)


def test_compile_option_goes_through_torch_compile(encoder, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda module: calls.append(module) or module)
    ds = TensorDataset(torch.rand(3, 3, IMG, IMG), torch.zeros(3), torch.arange(3))
    fs = extract_features(encoder, ds, compile=True, progress=False)
    assert calls == [encoder] and fs.timing["compiled"] is True
