"""`histokit data verify` on hand-placed datasets checks what the manifest's layout promises, not just that the folder
is not empty: every official split and every class has images, every image decodes under the kit's
decompression-bomb limit and passes PIL's verify(); each bad file is named by path and the command exits 1.
Valid layouts come from `histokit data mock` (ImageNet, BreastPathQ: fast) or are written tiny by hand in the real
folder structure (BRACS, Kimia Path24C: their mocks are full-size images), then damaged."""
from __future__ import annotations

import csv
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from histokit.data import load_manifest, verify
from histokit.data.cli import main
from histokit.data.mock import mock_dataset
from histokit.data.verify import CORRUPT, MISSING, TOO_LARGE

pytestmark = pytest.mark.bad_input


def _image(path, fmt="PNG", seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def _bracs(root):
    """BRACS_RoI/latest_version/<split>/<k_CLASS>/BRACS_<slide>_<CLASS>_1.png, one 16 px RoI per class and split."""
    m = load_manifest("bracs")
    base = root / "bracs" / m.layout.subdir
    for i, split in enumerate(m.layout.params["split_dirs"].values()):
        for j, (folder, cls) in enumerate(m.class_folders.items()):
            _image(base / split / folder / f"BRACS_{1000 + 10 * i + j}_{cls}_1.png", seed=10 * i + j)
    return base


def _kimia(root):
    """<split>/s0 ... s23/<patch>.jpg, one 16 px patch per scan and split."""
    base = root / "kimia_path24c"
    for split in ("train", "test"):
        for k in range(24):
            _image(base / split / f"s{k}" / f"patch_{k}.jpg", fmt="JPEG", seed=k)
    return base


def _verify(name, root, capsys):
    """(report, exit code, stdout) of the library call and of `histokit data verify NAME --root ROOT`."""
    report = verify(name, root, progress=False)
    code = main(["data", "verify", name, "--root", str(root), "--quiet"])
    return report, code, capsys.readouterr().out


def test_valid_hand_placed_layouts_verify(tmp_path, capsys):
    _bracs(tmp_path)
    _kimia(tmp_path)
    mock_dataset("imagenet1k", tmp_path, per_class=1)
    mock_dataset("breastpathq", tmp_path, per_class=1)
    for name in ("bracs", "kimia_path24c", "imagenet1k", "breastpathq"):
        report, code, out = _verify(name, tmp_path, capsys)
        assert report.ok and code == 0, out


def test_a_png_cut_short_near_its_end_is_named(tmp_path, capsys):
    """The last 16 bytes gone (IDAT checksum and IEND): PIL still decodes it, its verify() does not."""
    base = _bracs(tmp_path)
    victim = base / "val" / "3_FEA" / "BRACS_1013_FEA_1.png"
    victim.write_bytes(victim.read_bytes()[:-16])
    Image.open(victim).load()  # decodes: a loader alone would not notice
    report, code, out = _verify("bracs", tmp_path, capsys)
    [bad] = report.errors
    assert bad.status == CORRUPT and bad.path == victim and "verify" in bad.detail
    assert code == 1 and str(victim) in out


def test_an_image_bomb_is_an_error_naming_the_file(tmp_path, capsys):
    """A PNG whose header claims 20,000 x 20,000 px (~60 bytes on disk), over the limit the loader applies."""
    base = _bracs(tmp_path)
    victim = base / "train" / "6_IC" / "BRACS_1006_IC_1.png"

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    victim.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20_000, 20_000, 8, 2, 0, 0, 0))
                       + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    report, code, out = _verify("bracs", tmp_path, capsys)
    [bad] = report.errors
    assert bad.status == TOO_LARGE and bad.path == victim and "max_pixels" in bad.detail
    assert code == 1 and str(victim) in out and "1 too large" in out


def test_label_csvs_without_rows_are_not_a_dataset(tmp_path, capsys):
    mock_dataset("breastpathq", tmp_path, per_class=1)
    layout = tmp_path / "breastpathq" / "breastpathq" / "datasets"
    for name in ("train_labels.csv", "val_labels.csv"):
        header = next(csv.reader((layout / name).open()))
        (layout / name).write_text(",".join(header) + "\n")
    report, code, out = _verify("breastpathq", tmp_path, capsys)
    assert [c.status for c in report.content] == [MISSING] and "holds no image at all" in out
    assert code == 1 and "0 samples" not in out and "1 ok" not in out


def test_an_empty_official_split_is_named(tmp_path, capsys):
    base = _kimia(tmp_path)
    for patch in (base / "test").glob("s*/*.jpg"):
        patch.unlink()  # the 24 scan folders stay, empty
    report, code, out = _verify("kimia_path24c", tmp_path, capsys)
    [bad] = report.errors
    assert bad.status == MISSING and bad.path == base / "test" and "official split test has no images" in out
    assert code == 1


def test_a_class_without_images_is_named(tmp_path, capsys):
    base = _bracs(tmp_path)
    for roi in base.glob("*/2_UDH/*.png"):
        roi.unlink()
    report, code, out = _verify("bracs", tmp_path, capsys)
    [bad] = report.errors
    assert bad.status == MISSING and "class UDH has no images (its folder '2_UDH'" in out and code == 1


def test_an_empty_synset_folder_is_named(tmp_path, capsys):
    mock_dataset("imagenet1k", tmp_path, per_class=1)
    (tmp_path / "imagenet1k" / "train" / "n99999999").mkdir()
    report, code, out = _verify("imagenet1k", tmp_path, capsys)
    [bad] = report.errors
    assert "class n99999999 has no images" in bad.detail and code == 1
