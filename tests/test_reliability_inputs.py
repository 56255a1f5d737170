"""Bad inputs get an error that names the culprit, and nothing is lost: the bad file stays where it was.

Complements the per-module tests (test_data_images, test_data_manifests, test_checkpoints, ...) with the cases they
do not reach: bad tiles inside a real dataset and its DataLoader, 16-bit RGB and header-declared bombs at PIL's
real limit, empty / truncated / foreign checkpoints met on resume, and damaged manifests, split, feature and index
files.
"""
from __future__ import annotations

import shutil
import struct
import zlib

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from histokit import paths
from histokit.data import CorruptImageError, ImageTooLargeError, ManifestError, load_dataset, load_image, load_manifest
from histokit.data.splits import SplitMismatchError, load_or_make_split
from histokit.data.transforms import eval_transform
from histokit.io import atomic_torch_save
from histokit.models.checkpoints import CheckpointError as OfficialCheckpointError
from histokit.models.checkpoints import read_checkpoint
from histokit.retrieval.features import FeatureFileError, FeatureSet, load_features, save_features
from histokit.retrieval.index import IndexFileError, build_index, load_index, save_index
from histokit.train.checkpoint import CheckpointError, checkpoint_path, load_checkpoint
from histokit.train.engine import train

pytestmark = pytest.mark.bad_input


# ------------------------------------------------------------------------------ images


def _png(path, width: int, height: int, bit_depth: int, color_type: int, rows: bytes = b"") -> bytes:
    """A PNG written chunk by chunk (PIL cannot write 16-bit colour, nor a header that lies about the size)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("channels, color_type", [(3, 2), (4, 6)])
def test_16bit_rgb_and_rgba_keep_the_high_byte_as_documented(tmp_path, channels, color_type):
    samples = np.array([[0x00FF, 0xFFFF, 0x8000], [0x0100, 0x7FFF, 0x1234]], dtype=np.uint16)  # two pixels
    if channels == 4:
        samples = np.concatenate([samples, np.full((2, 1), 0xFFFF, np.uint16)], axis=1)  # opaque
    _png(tmp_path / "rgb16.png", 2, 1, 16, color_type, b"\x00" + samples.astype(">u2").tobytes())
    out = np.asarray(load_image(tmp_path / "rgb16.png"))
    assert out.shape == (1, 2, 3) and out.dtype == np.uint8
    assert out[0].tolist() == [[0, 255, 128], [1, 127, 18]]  # v >> 8 (histokit/data/images.py rule table)


@pytest.mark.parametrize("side", [10_000, 20_000])  # 100 Mpx: PIL only warns; 400 Mpx: PIL raises
def test_decompression_bomb_refused_at_pils_default_limit(tmp_path, side):
    path = tmp_path / "bomb.png"
    data = _png(path, side, side, 8, 2)  # the header claims side x side pixels; the file is ~60 bytes
    assert side * side > Image.MAX_IMAGE_PIXELS == 89_478_485
    with pytest.raises(ImageTooLargeError) as err:
        load_image(path)
    msg = str(err.value)
    assert "bomb.png" in msg and "max_pixels" in msg and "89,478,485" in msg
    assert path.read_bytes() == data


@pytest.fixture
def tile_copy(tmp_path):
    """The bundled dataset copied under a data root, as `histokit data prepare` would lay it out."""
    root = tmp_path / "data"
    shutil.copytree(paths.BUNDLED_TILES_DIR, root / "kather2016_tiny")  # the manifest's layout.subdir is ""
    return root


@pytest.mark.parametrize("damage", ["truncated", "zero_bytes", "html_page"])
def test_a_bad_tile_in_a_dataset_stops_the_loader_naming_it_and_stays_on_disk(tile_copy, damage):
    ds = load_dataset("kather2016_tiny", tile_copy, transform=eval_transform(32))
    victim = ds.paths[37]
    data = open(victim, "rb").read()
    bad = {"truncated": data[: len(data) // 3], "zero_bytes": b"",
           "html_page": b"<!DOCTYPE html><html><body>404 Not Found</body></html>"}[damage]
    with open(victim, "wb") as fh:
        fh.write(bad)
    assert ds[36][0].shape == (3, 32, 32)  # its neighbours still load
    with pytest.raises(CorruptImageError, match=victim.split("/")[-1]):
        ds[37]
    with pytest.raises(CorruptImageError, match=victim.split("/")[-1]):  # and so does a batch through a DataLoader
        list(DataLoader(ds.subset(range(32, 40)), batch_size=4))
    assert open(victim, "rb").read() == bad  # not deleted, moved or "fixed"
    assert len(load_dataset("kather2016_tiny", tile_copy)) == 100  # and not silently dropped from the dataset


# ------------------------------------------------------------------------------ checkpoints


@pytest.fixture
def good_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    atomic_torch_save({"w": torch.arange(2000, dtype=torch.float32)}, path)
    return path


@pytest.mark.parametrize("cut", ["empty", "half", "first_100_bytes"])
def test_a_cut_short_official_checkpoint_names_the_file(good_checkpoint, cut):
    data = good_checkpoint.read_bytes()
    good_checkpoint.write_bytes({"empty": b"", "half": data[: len(data) // 2], "first_100_bytes": data[:100]}[cut])
    with pytest.raises(OfficialCheckpointError, match="weights.pt.*(empty|truncated or corrupt)"):
        read_checkpoint(good_checkpoint)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 1)

    def forward(self, x):
        return self.lin(x).pow(2).mean(), {}


def _tensor_loader():
    return DataLoader([torch.randn(4) for _ in range(4)], batch_size=2)


@pytest.mark.parametrize("content, says", [
    (b"", "empty"),
    (b"<!DOCTYPE html><html><head><title>Sign in</title></head></html>", "HTML"),
    ("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n".encode(), "Git-LFS pointer"),
    ("cut", "cannot load checkpoint"),
    ("foreign", "not a histokit training checkpoint"),
])
def test_resume_from_a_bad_checkpoint_names_it_and_keeps_it(tmp_path, content, says):
    path = checkpoint_path(tmp_path)
    if content == "cut":
        train(Tiny(), _tensor_loader(), epochs=1, lr=1e-2, progress=False, checkpoint_dir=tmp_path)
        content = path.read_bytes()[:300]
    elif content == "foreign":  # a training checkpoint that pickles a class: not one the engine wrote
        torch.save({"model": {}, "optimizer": torch.optim.SGD}, path)
        content = path.read_bytes()
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=says) as err:
        train(Tiny(), _tensor_loader(), epochs=2, lr=1e-2, progress=False, checkpoint_dir=tmp_path)
    assert str(path) in str(err.value)
    assert path.read_bytes() == content  # left in place for inspection
    with pytest.raises(CheckpointError, match=says):
        load_checkpoint(path)


# ------------------------------------------------------------------------------ manifests, splits, artifacts


def _manifest_copy(tmp_path, text: str, name: str = "bach"):
    (tmp_path / f"{name}.yaml").write_text(text)
    return tmp_path


def test_a_manifest_that_is_not_yaml_names_the_file(tmp_path):
    mdir = _manifest_copy(tmp_path, "name: bach\nfiles: [unclosed\n")
    with pytest.raises(ManifestError, match=r"bach\.yaml is not valid YAML"):
        load_manifest("bach", manifest_dir=mdir)


def test_a_manifest_that_is_a_list_names_the_file(tmp_path):
    mdir = _manifest_copy(tmp_path, "- just\n- a list\n")
    with pytest.raises(ManifestError, match=r"(?s)bach\.yaml.*field <top level>"):
        load_manifest("bach", manifest_dir=mdir)


def test_a_manifest_under_another_name_is_refused(tmp_path):
    text = (paths.MANIFEST_DIR / "bach.yaml").read_text()
    mdir = _manifest_copy(tmp_path, text, name="bach_copy")
    with pytest.raises(ManifestError, match=r"field name is 'bach' but the file is named 'bach_copy'"):
        load_manifest("bach_copy", manifest_dir=mdir)


def test_a_manifest_with_a_wrong_type_names_the_field(tmp_path):
    data = yaml.safe_load((paths.MANIFEST_DIR / "bach.yaml").read_text())
    data["files"][0]["size"] = "ten gigabytes"
    mdir = _manifest_copy(tmp_path, yaml.safe_dump(data))
    with pytest.raises(ManifestError, match=r"field files\.0\.size:"):
        load_manifest("bach", manifest_dir=mdir)


def test_a_damaged_split_file_is_refused_not_remade(tmp_path):
    path = tmp_path / "split.json"
    load_or_make_split(path, np.arange(40) % 4, seed=0)
    path.write_text(path.read_text()[:50])
    with pytest.raises(SplitMismatchError, match=r"split\.json is not valid JSON"):
        load_or_make_split(path, np.arange(40) % 4, seed=0)
    assert len(path.read_text()) == 50  # not overwritten: the indices a run used are never silently replaced


def _features():
    rng = np.random.default_rng(0)
    return FeatureSet(rng.standard_normal((8, 4)), np.arange(8) % 2, np.arange(8))


def test_a_truncated_feature_file_names_the_file(tmp_path):
    path = tmp_path / "train.npz"
    save_features(path, _features())
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(FeatureFileError, match=r"train\.npz is not a readable"):
        load_features(path)


def test_a_feature_file_without_labels_names_the_field(tmp_path):
    path = tmp_path / "train.npz"
    np.savez(path, features=np.zeros((2, 3), np.float32), indices=np.arange(2), timing_json=np.array("{}"))
    with pytest.raises(FeatureFileError, match=r"train\.npz lacks field\(s\) \['labels'\]"):
        load_features(path)


@pytest.mark.parametrize("sidecar, says", [("{not json", "not valid JSON"), ('{"dim": 4, "ntotal": 8}', "'sha256'")])
def test_a_damaged_index_sidecar_names_the_file(tmp_path, sidecar, says):
    path = tmp_path / "gallery.faiss"
    save_index(build_index(_features().features), path)
    (tmp_path / "gallery.faiss.json").write_text(sidecar)
    with pytest.raises(IndexFileError, match=rf"gallery\.faiss\.json.*{says}|{says}.*gallery\.faiss\.json"):
        load_index(path)
