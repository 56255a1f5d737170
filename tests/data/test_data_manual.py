"""Hand-placed datasets: they load once they are where the manifest says, whatever their access (VGH/NKI is
`unavailable`, BRACS `login`); an empty or README-only folder gives the manual steps and fails `data verify`;
classes come from folder names when the manifest lists none; VGH/NKI is loaded as its manifest's 224 px tiles."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from histokit.data import DatasetNotFoundError, ManualDownloadRequired, load_dataset, load_manifest, verify
from histokit.data.cli import main
from histokit.data.datasets import read_sample_image, tile_index_path
from histokit.data.splits import make_split
from histokit.data.verify import MISSING

PINK = (200, 110, 170)   # saturated, stained: tissue
GLASS = (242, 242, 240)  # background


def _tma(path, tissue_until=None, size=(1128, 720)):
    """A VGH/NKI-sized image: tissue left of column ``tissue_until`` (all tissue when None), glass right of it."""
    w, h = size
    arr = np.empty((h, w, 3), dtype=np.uint8)
    arr[:] = GLASS
    arr[:, : (tissue_until or w)] = PINK
    arr = (arr.astype(np.int16) + np.random.default_rng(0).integers(-3, 4, arr.shape)).clip(0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=95)
    return path


@pytest.mark.parametrize("name", ["vgh_nki", "bracs", "imagenet1k"])
def test_missing_or_readme_only_folder_asks_for_the_manual_steps(tmp_path, name):
    with pytest.raises(ManualDownloadRequired):
        load_dataset(name, tmp_path)
    layout = tmp_path / name / load_manifest(name).layout.subdir
    layout.mkdir(parents=True)
    (layout / "README.txt").write_text("put the images here")
    with pytest.raises(ManualDownloadRequired, match=r"only documentation \(README.txt\)") as info:
        load_dataset(name, tmp_path)
    assert f"histokit data verify {name}" in str(info.value)
    report = verify(name, tmp_path, progress=False)
    assert not report.ok and report.content[0].status == MISSING
    assert "README.txt" in report.summary() and "by hand" in report.summary()


def test_cli_verify_fails_on_a_readme_only_folder(tmp_path, capsys):
    (tmp_path / "vgh_nki" / "images").mkdir(parents=True)
    (tmp_path / "vgh_nki" / "images" / "README.txt").write_text("images go here")
    assert main(["data", "verify", "vgh_nki", "--root", str(tmp_path), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "holds no dataset files, only documentation (README.txt)" in out and "Stanford" in out


def test_open_dataset_readme_only_is_not_found(tmp_path):
    layout = tmp_path / "crc_val_he_7k" / "CRC-VAL-HE-7K"
    layout.mkdir(parents=True)
    (layout / "README.md").write_text("x")
    with pytest.raises(DatasetNotFoundError, match="histokit data prepare crc_val_he_7k"):
        load_dataset("crc_val_he_7k", tmp_path)
    assert not verify("crc_val_he_7k", tmp_path, progress=False).ok


def test_vgh_nki_loads_once_populated_as_tiles(tmp_path):
    """224 px tiles, stride 112, >= 70 % tissue on 1128 x 720 images: 9 x 5 = 45 tiles when all is tissue; with
    tissue left of column 560 a tile at x has (560 - x) / 224 tissue, so x in {0, 112, 224, 336}: 4 x 5 = 20."""
    with pytest.raises(ManualDownloadRequired, match="Stanford"):
        load_dataset("vgh_nki", tmp_path)
    half = _tma(tmp_path / "vgh_nki" / "images" / "VGH" / "core_1.jpg", tissue_until=560)
    full = _tma(tmp_path / "vgh_nki" / "images" / "NKI" / "core_1.jpg")
    ds = load_dataset("vgh_nki", tmp_path)
    assert ds.classes == ["NKI", "VGH"] and len(ds) == 45 + 20
    assert ds.class_counts() == {"NKI": 45, "VGH": 20}
    vgh = [s for s in ds.samples if s.path == str(half)]
    assert sorted({s.box[0] for s in vgh}) == [0, 112, 224, 336] and sorted({s.box[1] for s in vgh}) == [0, 112, 224,
                                                                                                         336, 448]
    assert all(s.group == "images/VGH/core_1.jpg" for s in vgh)  # tiles of one image stay in one group
    assert ds.paths is None  # tiles are not files: read them through the dataset
    tile = ds.samples[ds.keys.index(f"{half}[112,224,336,448]")]
    with Image.open(half) as src:
        expected = np.asarray(src.convert("RGB").crop((112, 224, 336, 448)))
    assert np.array_equal(np.asarray(read_sample_image(tile)), expected) and ds[0][0].size == (224, 224)
    # the tile list is cached next to the dataset and reused while the images are unchanged
    index = tile_index_path(tmp_path / "vgh_nki", 224, 112, 0.7)
    stored = json.loads(index.read_text())
    assert stored["params"]["stride"] == 112 and len(stored["images"]["images/VGH/core_1.jpg"]["tiles"]) == 20
    stamp = index.stat().st_mtime_ns
    assert len(load_dataset("vgh_nki", tmp_path)) == 65 and index.stat().st_mtime_ns == stamp
    _tma(full, tissue_until=560)  # an image replaced on disk is tiled afresh
    assert len(load_dataset("vgh_nki", tmp_path)) == 40
    report = verify("vgh_nki", tmp_path, progress=False)
    assert report.ok and "40 tiles kept" in report.summary()
    split = make_split(ds.labels, ds.groups, fractions=(0.5, 0.5), seed=0)  # group-aware: by image
    groups = np.asarray(ds.groups)
    assert not set(groups[split["train"]]) & set(groups[split["test"]])


def test_loose_images_are_one_class(tmp_path):
    _tma(tmp_path / "vgh_nki" / "images" / "a.png")
    ds = load_dataset("vgh_nki", tmp_path)
    assert ds.classes == ["images"] and len(ds) == 45


def test_imagenet_synset_tree_discovers_sorted_classes(tmp_path):
    train = tmp_path / "imagenet1k" / "train"
    for synset, n in [("n01518878", 2), ("n01440764", 3), ("n01443537", 1)]:  # created out of order
        for i in range(n):
            (train / synset).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (50, 40), (i * 40, 100, 150)).save(train / synset / f"{synset}_{i + 10}.JPEG")
    (train / ".ipynb_checkpoints").mkdir()  # hidden folders are never classes
    ds = load_dataset("imagenet1k", tmp_path)
    assert ds.classes == ["n01440764", "n01443537", "n01518878"]
    assert ds.class_counts() == {"n01440764": 3, "n01443537": 1, "n01518878": 2}
    assert all(p.split("/")[-2] == ds.classes[lab] for p, lab in zip(ds.paths, ds.labels))
    report = verify("imagenet1k", tmp_path, progress=False)
    assert report.ok and "3 classes; the full release has 1000" in report.summary()


def test_bracs_placed_by_hand_loads_and_corrupt_rois_are_named(tmp_path):
    """A login dataset placed by hand is read as it is; verify names a RoI that does not decode."""
    base = tmp_path / "bracs" / "BRACS_RoI" / "latest_version"
    folders = ["0_N", "1_PB", "2_UDH", "3_FEA", "4_ADH", "5_DCIS", "6_IC"]
    for split in ("train", "val", "test"):
        for k, folder in enumerate(folders):
            (base / split / folder).mkdir(parents=True)
            cls = folder.split("_", 1)[1]
            Image.new("RGB", (64, 48), (200, 100 + k * 10, 150)).save(base / split / folder / f"BRACS_{k}_{cls}_1.png")
    assert len(load_dataset("bracs", tmp_path)) == 21
    bad = base / "val" / "3_FEA" / "BRACS_3_FEA_1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    report = verify("bracs", tmp_path, progress=False)
    assert not report.ok and [c.name for c in report.errors] == ["BRACS_RoI/latest_version/val/3_FEA/BRACS_3_FEA_1.png"]
