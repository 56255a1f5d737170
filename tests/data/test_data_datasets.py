"""PatchDataset and the layout loaders, on the bundled tiles and on small trees in each real dataset's layout."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from histokit.data import (DatasetNotFoundError, ManualDownloadRequired, PatchDataset, Sample, load_class_folders,
                           load_dataset, merge_classes, official_split)
from histokit.data.transforms import eval_transform

from data_helpers import write_png

KATHER_COUNTS = [18, 8, 13, 12, 12, 10, 18, 9]


def test_bundled_tiles_load_with_class_counts():
    ds = load_dataset("kather2016_tiny")
    assert ds.classes == ["TUMOR", "STROMA", "COMPLEX", "LYMPHO", "DEBRIS", "MUCOSA", "ADIPOSE", "EMPTY"]
    assert np.bincount(ds.labels).tolist() == KATHER_COUNTS
    assert ds.labels.dtype == np.int64 and len(ds.paths) == 100 and ds.groups == [None] * 100
    image, label, index = ds[5]
    assert image.mode == "RGB" and image.size == (224, 224) and index == 5 and label == ds.labels[5]
    # the folder a file sits in is its class
    assert all(f"0{lab + 1}_" in p for p, lab in zip(ds.paths, ds.labels))


def test_transform_subset_and_dataloader():
    ds = load_dataset("kather2016_tiny", transform=eval_transform(32))
    sub = ds.subset([3, 50, 99])
    assert len(sub) == 3 and sub.labels.tolist() == ds.labels[[3, 50, 99]].tolist()
    x, y, idx = next(iter(torch.utils.data.DataLoader(sub, batch_size=3)))
    assert x.shape == (3, 3, 32, 32) and y.tolist() == sub.labels.tolist() and idx.tolist() == [0, 1, 2]


def test_merge_classes_chen_krishnan(tmp_path):
    classes = ["ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"]
    samples = [Sample(f"{c}.png", i) for i, c in enumerate(classes)] + [Sample("mus2.png", 5)]
    merged = merge_classes(PatchDataset(samples, classes), {"MUS": "STR"})
    assert merged.classes == ["ADI", "BACK", "DEB", "LYM", "MUC", "NORM", "STR", "TUM"]
    names = [merged.classes[i] for i in merged.labels]
    assert names == ["ADI", "BACK", "DEB", "LYM", "MUC", "STR", "NORM", "STR", "TUM", "STR"]
    with pytest.raises(ValueError, match="'XYZ'"):
        merge_classes(PatchDataset(samples, classes), {"XYZ": "STR"})
    with pytest.raises(ValueError, match="target 'MUS'"):
        merge_classes(PatchDataset(samples, classes), {"STR": "MUS", "MUS": "ADI"})


@pytest.mark.bad_input
def test_bad_label_rejected():
    with pytest.raises(ValueError, match=r"x\.png: label 3"):
        PatchDataset([Sample("x.png", 3)], ["a", "b"])


@pytest.mark.bad_input
def test_class_folders_unknown_folder_is_an_error(tmp_path):
    write_png(tmp_path / "A" / "1.png")
    write_png(tmp_path / "Typo" / "1.png")
    with pytest.raises(ValueError, match="Typo"):
        load_class_folders(tmp_path, ["A"])


@pytest.mark.bad_input
def test_group_regex_must_match(tmp_path):
    write_png(tmp_path / "A" / "no_group_here.png")
    with pytest.raises(ValueError, match="no_group_here.png"):
        load_class_folders(tmp_path, ["A"], group_regex=r"(CRC-Prim-HE-\d+)")


def test_bracs_layout_official_split_and_slide_groups(tmp_path):
    base = tmp_path / "bracs" / "BRACS_RoI" / "latest_version"
    folders = ["0_N", "1_PB", "2_UDH", "3_FEA", "4_ADH", "5_DCIS", "6_IC"]
    for split, wsi in [("train", 1003), ("val", 1200), ("test", 1500)]:
        for k, folder in enumerate(folders):
            write_png(base / split / folder / f"BRACS_{wsi + k}_{folder[2:]}_1.png")
    ds = load_dataset("bracs", tmp_path)
    assert ds.classes == ["N", "PB", "UDH", "FEA", "ADH", "DCIS", "IC"] and len(ds) == 21
    assert ds.groups[0] == "BRACS_1003"
    parts = official_split(ds)
    assert list(parts) == ["train", "val", "test"] and all(len(v) == 7 for v in parts.values())
    test = load_dataset("bracs", tmp_path, split="test")
    assert len(test) == 7 and set(test.splits) == {"test"}


def test_kimia_layout_scan_is_label_and_group(tmp_path):
    base = tmp_path / "kimia_path24c"
    for split, n in [("train", 2), ("test", 1)]:
        for s in range(24):
            for i in range(n):
                write_png(base / split / f"s{s}" / f"{i}.jpg")
    ds = load_dataset("kimia_path24c", tmp_path)
    assert len(ds) == 72 and np.bincount(ds.labels).tolist() == [3] * 24
    assert all(g == ds.classes[y] for g, y in zip(ds.groups, ds.labels))
    assert {k: len(v) for k, v in official_split(ds).items()} == {"train": 48, "test": 24}


def test_breastpathq_csv_regression(tmp_path):
    base = tmp_path / "breastpathq" / "breastpathq" / "datasets"
    for split, folder, csv in [("train", "train", "train_labels.csv"), ("val", "validation", "val_labels.csv")]:
        rows = [{"slide": 99000 + i, "rid": i + 1, "y": i / 4} for i in range(3)]
        for r in rows:
            write_png(base / folder / f"{r['slide']}_{r['rid']}.tif")
        pd.DataFrame(rows).to_csv(base / csv, index=False)
    ds = load_dataset("breastpathq", tmp_path)
    assert ds.is_regression and ds.labels.dtype == np.float64
    assert ds.labels.tolist() == [0, 0.25, 0.5] * 2 and ds.groups[:3] == ["99000", "99001", "99002"]
    assert ds[4][1] == 0.25 and ds.splits == ["train"] * 3 + ["val"] * 3
    (base / "validation" / "99000_1.tif").unlink()
    with pytest.raises(DatasetNotFoundError, match="99000_1.tif"):
        load_dataset("breastpathq", tmp_path)


@pytest.mark.bad_input
def test_breastpathq_csv_missing_column(tmp_path):
    base = tmp_path / "breastpathq" / "breastpathq" / "datasets"
    base.mkdir(parents=True)
    pd.DataFrame({"slide": [1], "rid": [1]}).to_csv(base / "train_labels.csv", index=False)
    with pytest.raises(ValueError, match=r"train_labels\.csv: missing column\(s\) \['y'\]"):
        load_dataset("breastpathq", tmp_path)


def test_pannuke_npy_memory_mapped(tmp_path):
    rng = np.random.default_rng(0)
    tissues = ["Breast", "Colon", "HeadNeck"]
    for k in (1, 2, 3):
        d = tmp_path / "pannuke" / f"Fold {k}" / "images" / f"fold{k}"
        d.mkdir(parents=True)
        np.save(d / "images.npy", rng.uniform(0, 255, (k + 1, 8, 8, 3)))  # float64, as published
        np.save(d / "types.npy", np.array([tissues[(k + i) % 3] for i in range(k + 1)]))
    ds = load_dataset("pannuke", tmp_path)
    assert len(ds) == 2 + 3 + 4 and len(ds.classes) == 19
    assert ds.groups == ["fold1"] * 2 + ["fold2"] * 3 + ["fold3"] * 4
    img, label, _ = ds[2]
    raw = np.load(tmp_path / "pannuke" / "Fold 2" / "images" / "fold2" / "images.npy")[0]
    assert np.array_equal(np.asarray(img), np.clip(np.rint(raw), 0, 255).astype(np.uint8))
    assert ds.classes[label] == tissues[2]
    assert list(official_split(ds)) == ["fold1", "fold2", "fold3"]


@pytest.mark.bad_input
def test_pannuke_unknown_tissue_named(tmp_path):
    d = tmp_path / "pannuke" / "Fold 1" / "images" / "fold1"
    d.mkdir(parents=True)
    np.save(d / "images.npy", np.zeros((1, 4, 4, 3)))
    np.save(d / "types.npy", np.array(["Brain"]))
    with pytest.raises(ValueError, match=r"fold1/types\.npy: tissue types \['Brain'\]"):
        load_dataset("pannuke", tmp_path)
    np.save(d / "types.npy", np.array(["Breast"]))
    with pytest.raises(DatasetNotFoundError, match="fold2.*Fold 2"):
        load_dataset("pannuke", tmp_path)  # fold 2 missing


def test_pathmnist_arrays(tmp_path):
    d = tmp_path / "pathmnist" / "pathmnist_224"
    d.mkdir(parents=True)
    for split, n in [("train", 3), ("val", 1), ("test", 2)]:
        np.save(d / f"{split}_images.npy", np.full((n, 4, 4, 3), 7, dtype=np.uint8))
        np.save(d / f"{split}_labels.npy", np.arange(n).reshape(-1, 1))
    ds = load_dataset("pathmnist", tmp_path)
    assert ds.splits == ["train"] * 3 + ["val"] + ["test"] * 2 and ds.labels.tolist() == [0, 1, 2, 0, 0, 1]
    assert np.asarray(ds[3][0]).max() == 7


@pytest.mark.bad_input
def test_missing_dataset_says_what_to_download(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("crc_val_he_7k", tmp_path)
    msg = str(info.value)
    assert "https://zenodo.org/records/1214456/files/CRC-VAL-HE-7K.zip" in msg
    assert str(tmp_path / "crc_val_he_7k" / "CRC-VAL-HE-7K.zip") in msg
    assert "histokit data prepare crc_val_he_7k" in msg


@pytest.mark.bad_input
def test_unavailable_dataset_cannot_load(tmp_path):
    with pytest.raises(ManualDownloadRequired):
        load_dataset("vgh_nki", tmp_path)


@pytest.mark.bad_input
def test_no_official_split_on_bundled_tiles():
    with pytest.raises(ValueError, match="make_split"):
        official_split(load_dataset("kather2016_tiny"))
