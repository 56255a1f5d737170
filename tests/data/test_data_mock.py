"""`histokit data mock`: every mock lands in the real release's layout and loads through the ordinary loaders, with
the real class names, image sizes and official splits; `data verify` passes on each and names a truncated image;
mocks are deterministic and never overwrite a folder that is not a mock."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from histokit.data import DataError, load_dataset, load_manifest, prepare, verify
from histokit.data.cli import main
from histokit.data.mock import (BRACS_SIZES, IMAGENET_SIZES, IMAGENET_SYNSETS, MARKER, MOCKABLE, STATE, mock_dataset,
                                write_all_mocks, write_mock)
from histokit.data.splits import make_split, official_split
from histokit.data.verify import CORRUPT, UNCHECKED

FULL_PROFILE = {"bracs", "nct_crc_he_100k", "nct_crc_he_100k_nonorm", "crc_val_he_7k", "bach", "kimia_path24c",
                "pannuke", "breastpathq", "imagenet1k", "vgh_nki"}

# one file each mock must hold, as the real release names it (relative to <root>/<name>/)
LAYOUT = {
    "nct_crc_he_100k": r"NCT-CRC-HE-100K/ADI/ADI-[A-Z]{8}\.tif",
    "nct_crc_he_100k_nonorm": r"NCT-CRC-HE-100K-NONORM/TUM/TUM-[A-Z]{8}\.tif",
    "crc_val_he_7k": r"CRC-VAL-HE-7K/STR/STR-TCGA-[A-Z]{8}\.tif",
    "kather2016": r"Kather_texture_2016_image_tiles_5000/01_TUMOR/\d+_CRC-Prim-HE-\d\d_\d{3}\.tif_Row_\d+_Col_\d+\.tif",
    "pathmnist": r"pathmnist_224/test_labels\.npy",
    "bracs": r"BRACS_RoI/latest_version/test/6_IC/BRACS_\d+_IC_\d+\.png",
    "bach": r"ICIAR2018_BACH_Challenge/Photos/InSitu/is001\.tif",
    "kimia_path24c": r"train/s23/s23_0\.jpg",
    "pannuke": r"Fold 3/masks/fold3/masks\.npy",
    "breastpathq": r"breastpathq/datasets/validation/\d+_1\.tif",
    "imagenet1k": r"train/n01440764/n01440764_\d+\.JPEG",
    "vgh_nki": r"images/VGH/VGH_0001\.jpg",
}


@pytest.fixture(scope="module")
def mock_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mock")
    write_all_mocks(root, per_class=1, seed=0)
    return root


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_every_full_profile_dataset_has_a_mock():
    assert FULL_PROFILE <= set(MOCKABLE) and set(LAYOUT) == set(MOCKABLE)


@pytest.mark.parametrize("name", MOCKABLE)
def test_mock_loads_like_the_real_release(mock_root, name):
    m = load_manifest(name)
    folder = mock_root / name
    assert (folder / MARKER).is_file() and "not the real dataset" in (folder / MARKER).read_text().replace("NOT", "not")
    assert "CC BY 4.0" in (folder / MARKER).read_text()
    assert any(re.fullmatch(LAYOUT[name], f) for f in _files(folder)), f"{name}: no file like {LAYOUT[name]}"
    ds = load_dataset(name, mock_root)
    if m.classes:
        assert ds.classes == list(m.classes)
    elif name == "imagenet1k":
        assert ds.classes == list(IMAGENET_SYNSETS)
    elif name == "vgh_nki":
        assert ds.classes == ["NKI", "VGH"]
    else:
        assert ds.is_regression and ((ds.labels >= 0) & (ds.labels <= 1)).all()
    if ds.classes:
        assert min(ds.class_counts().values()) >= 1
    size = ds[0][0].size
    if name == "bracs":
        assert size in BRACS_SIZES
    elif name == "imagenet1k":
        assert size in IMAGENET_SIZES
    elif name == "vgh_nki":
        assert size == (224, 224)  # a tile; its source images are checked in test_vgh_nki_mock_images
    else:
        assert size == tuple(m.layout.image_size)
    if m.splits["type"] == "official":
        named = official_split(ds)
        assert list(named) == list(m.splits["names"])
        if ds.classes:  # the official test sets (and every other split) hold every class
            for split, idx in named.items():
                assert set(ds.labels[idx]) == set(range(len(ds.classes))), (name, split)
    else:
        assert set(ds.splits) == {None}


@pytest.mark.parametrize("name", MOCKABLE)
def test_verify_passes_on_every_mock(mock_root, name):
    report = verify(name, mock_root, progress=False)
    assert report.ok, report.summary()
    assert all(c.status == UNCHECKED for c in report.checks)  # archives: absent, their extracted layout is checked
    assert report.content[0].status == "ok"


def test_mock_details(mock_root):
    """Things the loaders do not check but the real releases have: PanNuke's float64 arrays and masks, BACH's CSV,
    BreastPathQ's label columns, VGH/NKI's image size, BRACS's patient-level (slide-disjoint) split."""
    fold = mock_root / "pannuke" / "Fold 1"
    images = np.load(fold / "images" / "fold1" / "images.npy", mmap_mode="r")
    masks = np.load(fold / "masks" / "fold1" / "masks.npy", mmap_mode="r")
    types = np.load(fold / "images" / "fold1" / "types.npy")
    assert images.dtype == np.float64 and images.shape == (19, 256, 256, 3) and 0 <= images.min() <= images.max() <= 255
    assert masks.dtype == np.float64 and masks.shape == (19, 256, 256, 6) and types.dtype.kind == "U"
    csv = (mock_root / "bach" / "ICIAR2018_BACH_Challenge" / "Photos" / "microscopy_ground_truth.csv").read_text()
    assert "b001.tif,Benign" in csv.splitlines() and len(csv.splitlines()) == 8
    labels = pd.read_csv(mock_root / "breastpathq" / "breastpathq" / "datasets" / "train_labels.csv")
    assert list(labels.columns) == ["slide", "rid", "y"] and len(labels) == 8
    with Image.open(mock_root / "vgh_nki" / "images" / "NKI" / "NKI_0001.jpg") as im:
        assert im.size == (1128, 720) and im.format == "JPEG"
    with Image.open(next((mock_root / "bach").rglob("*.tif"))) as im:
        assert im.size == (2048, 1536) and im.format == "TIFF"
    bracs = load_dataset("bracs", mock_root)
    by_split = {s: {g for g, sp in zip(bracs.groups, bracs.splits) if sp == s} for s in ("train", "val", "test")}
    assert not (by_split["train"] & by_split["val"]) and not (by_split["train"] & by_split["test"])
    kather = load_dataset("kather2016", mock_root)
    assert all(re.fullmatch(r"CRC-Prim-HE-\d\d", g) for g in kather.groups)


def test_default_counts_allow_a_stratified_80_10_10_split(tmp_path):
    """Without an official split a mock has 2 x 5 images per class: every class reaches val and test."""
    write_mock("nct_crc_he_100k", tmp_path)
    ds = load_dataset("nct_crc_he_100k", tmp_path)
    assert set(ds.class_counts().values()) == {10}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to an unstratified split
        split = make_split(ds.labels, fractions=(0.8, 0.1, 0.1), seed=0)
    for part in ("val", "test"):
        assert set(ds.labels[split[part]]) == set(range(9))


def test_mock_is_deterministic_and_kept_when_unchanged(tmp_path):
    a = write_mock("crc_val_he_7k", tmp_path / "a", per_class=1, seed=3)
    b = write_mock("crc_val_he_7k", tmp_path / "b", per_class=1, seed=3)
    files = _files(a)
    assert files == _files(b) and len(files) == 9 * 2 + 2
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    again = mock_dataset("crc_val_he_7k", tmp_path / "a", per_class=1, seed=3)
    assert again.skipped
    other = write_mock("crc_val_he_7k", tmp_path / "a", per_class=1, seed=4)  # new parameters: rewritten
    assert (other / STATE).read_text() != (b / STATE).read_text()
    assert _files(other) != files  # the seed draws the tile codes in the file names too


def test_mock_never_overwrites_a_real_folder(tmp_path):
    real = tmp_path / "bach" / "ICIAR2018_BACH_Challenge"
    real.mkdir(parents=True)
    (real / "data.tif").write_bytes(b"real")
    with pytest.raises(DataError, match="not a mock"):
        write_mock("bach", tmp_path, per_class=1)
    assert (real / "data.tif").read_bytes() == b"real"
    with pytest.raises(DataError, match="no mock"):
        write_mock("kather2016_tiny", tmp_path)


def test_cli_mock_verify_and_a_truncated_image(tmp_path, capsys):
    assert main(["data", "mock", "nct_crc_he_100k", "--root", str(tmp_path), "--per-class", "1"]) == 0
    out = capsys.readouterr().out
    assert "nct_crc_he_100k" in out and "18 files" in out and "Not real data" in out
    assert main(["data", "verify", "nct_crc_he_100k", "--root", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "18 image file(s) decoded" in out and "the full release has 100,000" in out  # a warning, not a failure
    victim = sorted((tmp_path / "nct_crc_he_100k" / "NCT-CRC-HE-100K" / "LYM").glob("*.tif"))[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    report = verify("nct_crc_he_100k", tmp_path, progress=False)
    assert not report.ok and [c.status for c in report.errors] == [CORRUPT]
    assert report.errors[0].name == f"NCT-CRC-HE-100K/LYM/{victim.name}"
    assert main(["data", "verify", "nct_crc_he_100k", "--root", str(tmp_path), "--quiet"]) == 1
    assert victim.name in capsys.readouterr().out


def test_prepare_accepts_an_extracted_layout_without_its_archive(tmp_path):
    write_mock("crc_val_he_7k", tmp_path, per_class=1)
    # no CRC-VAL-HE-7K.zip: prepare must not try to download it
    assert prepare("crc_val_he_7k", tmp_path, progress=False) == tmp_path / "crc_val_he_7k" / "CRC-VAL-HE-7K"


@pytest.mark.parametrize("name", ["pannuke", "vgh_nki"])
def test_sample_grid_reads_array_rows_and_tiles(mock_root, tmp_path, name):
    """Stage 01 draws a sample grid of every recipe dataset: array rows (PanNuke) and tiles (VGH/NKI) are not
    files, so the dataset says so (paths is None) and the grid reads them through the dataset."""
    from histokit.viz.grid import sample_grid

    ds = load_dataset(name, mock_root)
    assert ds.paths is None and len(ds.keys) == len(ds)
    sample_grid(ds, ds.classes, per_class=1, path=tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 0
