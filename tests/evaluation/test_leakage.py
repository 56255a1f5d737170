"""Leakage audit on the bundled Kather 2016 tiles: planted copies are found, distinct tiles are not, the threshold is
exact (checked against a brute-force cosine matrix), and the pairs figure shows what was found."""
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance

from histokit.data.datasets import load_dataset
from histokit.evaluation.leakage import (PAIR_COLUMNS, SUMMARY_COLUMNS, leakage_summary, near_duplicates,
                                         pixel_descriptors)
from histokit.viz.pairs import duplicate_pairs_figure

THRESHOLD = 0.95


@pytest.fixture(scope="module")
def split():
    """Train = even tiles, test = odd tiles + an exact copy of train tile 5 + a JPEG-recompressed, 10 % brighter
    copy of train tile 17 (the kind of near-copy a re-exported dataset holds)."""
    tiles = [np.asarray(Image.open(p).convert("RGB")) for p in load_dataset("kather2016_tiny").paths]
    train, test = tiles[0::2], tiles[1::2]
    buf = io.BytesIO()
    ImageEnhance.Brightness(Image.fromarray(train[17])).enhance(1.1).save(buf, "JPEG", quality=75)
    test = test + [train[5].copy(), np.asarray(Image.open(buf).convert("RGB"))]
    return train, test, pixel_descriptors(train), pixel_descriptors(test)


def test_planted_copies_are_found_and_distinct_tiles_are_not(split):
    train, test, f_train, f_test = split
    pairs = near_duplicates(f_train, f_test, THRESHOLD)
    assert list(pairs.columns) == list(PAIR_COLUMNS)
    found = {(int(t), int(g)): c for t, g, c in pairs.itertuples(index=False)}
    assert set(found) == {(len(test) - 2, 5), (len(test) - 1, 17)}, found
    assert found[(len(test) - 2, 5)] == pytest.approx(1.0, abs=1e-5)  # the exact copy
    assert 0.99 < found[(len(test) - 1, 17)] < 1.0                     # re-encoded and brightened
    assert pairs["cosine"].is_monotonic_decreasing


def test_threshold_is_respected_exactly(split):
    _, _, f_train, f_test = split
    a = f_train / np.linalg.norm(f_train, axis=1, keepdims=True)
    b = f_test / np.linalg.norm(f_test, axis=1, keepdims=True)
    brute = b @ a.T
    for threshold in (0.3, 0.4):
        pairs = near_duplicates(f_train, f_test, threshold)
        expected = {(int(t), int(g)) for t, g in np.argwhere(brute >= threshold)}
        assert {(int(t), int(g)) for t, g in pairs[["test_idx", "train_idx"]].itertuples(index=False)} == expected
        assert (pairs["cosine"] >= threshold).all()
        np.testing.assert_allclose(pairs["cosine"], brute[pairs["test_idx"], pairs["train_idx"]], atol=1e-5)
    # distinct tiles do correlate a little: the lower threshold must find strictly more pairs than the planted two
    assert len(near_duplicates(f_train, f_test, 0.3)) > len(near_duplicates(f_train, f_test, THRESHOLD)) == 2


def test_summary_counts_test_items_and_pairs(split):
    train, test, f_train, f_test = split
    pairs = near_duplicates(f_train, f_test, THRESHOLD)
    row = leakage_summary(pairs, len(test), THRESHOLD, n_train=len(train), dataset="kather2016_tiny",
                          split="random")
    assert list(row) == list(SUMMARY_COLUMNS)
    assert row["n_pairs"] == 2 and row["n_test_with_duplicate"] == 2 and row["threshold"] == THRESHOLD
    assert row["fraction_test_with_duplicate"] == pytest.approx(2 / len(test))
    assert row["max_cosine"] == pytest.approx(1.0, abs=1e-5)
    # several training matches for one test tile count once in the fraction, every time in n_pairs
    many = pd.DataFrame({"test_idx": [0, 0, 3], "train_idx": [1, 2, 1], "cosine": [0.99, 0.98, 0.97]})
    row = leakage_summary(many, 10, 0.95)
    assert (row["n_pairs"], row["n_test_with_duplicate"], row["fraction_test_with_duplicate"]) == (3, 2, 0.2)
    empty = leakage_summary(pairs.iloc[:0], len(test), THRESHOLD)
    assert empty["fraction_test_with_duplicate"] == 0 and np.isnan(empty["max_cosine"])


def test_errors_name_the_parameter(split):
    _, _, f_train, f_test = split
    with pytest.raises(ValueError, match="threshold"):
        near_duplicates(f_train, f_test, 1.5)
    with pytest.raises(ValueError, match="train_feats has dimension"):
        near_duplicates(f_train[:, :10], f_test, THRESHOLD)
    zero = f_test.copy()
    zero[3] = 0
    with pytest.raises(ValueError, match=r"test_feats has all-zero rows \(first: \[3\]\)"):
        near_duplicates(f_train, zero, THRESHOLD)
    with pytest.raises(ValueError, match="n_test"):
        leakage_summary(pd.DataFrame({"test_idx": [7], "train_idx": [0], "cosine": [1.0]}), 5, THRESHOLD)
    with pytest.raises(ValueError, match="lacks column"):
        leakage_summary(pd.DataFrame({"test_idx": [0]}), 5, THRESHOLD)


def test_pairs_figure_shows_each_pair_with_its_cosine(split, tmp_path):
    train, test, f_train, f_test = split
    pairs = near_duplicates(f_train, f_test, THRESHOLD)
    out = tmp_path / "pairs.png"
    fig = duplicate_pairs_figure(pairs, test, train, out, n=8, threshold=THRESHOLD)
    assert out.stat().st_size > 0 and Image.open(out).format == "PNG"
    images = [ax for ax in fig.get_axes() if ax.get_images()]
    assert len(images) == 2 * len(pairs) == 4
    labels = sorted(ax.get_xlabel() for ax in images)
    assert labels == sorted([f"test #{len(test) - 2}", "train #5", f"test #{len(test) - 1}", "train #17"])
    titles = [sub._suptitle.get_text() for sub in fig.subfigs if sub.get_visible() and sub._suptitle]
    assert titles[0] == f"cosine {pairs['cosine'].iloc[0]:.4f}" and len(titles) == 2

    # a clean audit still gives a figure, and it says so
    fig = duplicate_pairs_figure(pairs.iloc[:0], test, train, tmp_path / "none.png", threshold=THRESHOLD)
    assert "No test tile has a near-duplicate" in " ".join(t.get_text() for t in fig.texts)
    with pytest.raises(ValueError, match="train_idx"):
        duplicate_pairs_figure(pairs.assign(train_idx=999), test, train, None)
