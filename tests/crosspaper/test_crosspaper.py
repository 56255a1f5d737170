"""The common benchmark and the leakage audit across papers, on a fake runs tree of the bundled tiles' real labels:
one split for every method, the retrieval / kNN / probe numbers wired the right way round, bootstrap intervals,
official test sets and regression data, a planted duplicate tile found by the pixel descriptor, the row for data
without group ids, and the CLI steps after `reproduce all`."""
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from histokit import cli
from histokit.crosspaper import run_benchmark, run_leakage_audit
from histokit.crosspaper.benchmark import KEY_COLUMNS, METRICS
from histokit.data.datasets import PatchDataset, load_dataset
from histokit.data.splits import make_split
from histokit.evaluation.knn import weighted_knn
from histokit.retrieval.features import FeatureFileError
from histokit.retrieval.metrics import evaluate_retrieval

from feature_helpers import clustered, write_features  # shared with the stage tests (tests/feature_helpers.py)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = "kather2016_tiny"


@pytest.fixture(scope="module")
def labels():
    return load_dataset(TINY).labels


@pytest.fixture(scope="module")
def runs(tmp_path_factory, labels):
    """esvit: a clustered encoder and a random one on "CRC"; chen2022: the esvit encoder's very features on
    "CRC-NONORM" (raw tiles, the same data) and another clustered one on "CRC-NORM" (Macenko: other data)."""
    runs = tmp_path_factory.mktemp("runs")
    good = clustered(labels, 0)
    write_features(runs, "esvit", "smoke", "EsViT + k-NN", "CRC", good, labels)
    write_features(runs, "esvit", "smoke", "ResNet50 + k-NN", "CRC",
                   np.random.default_rng(1).normal(size=(len(labels), 16)).astype(np.float32), labels)
    write_features(runs, "chen2022", "smoke", "ImageNet ResNet-50", "CRC-NONORM", good, labels)
    write_features(runs, "chen2022", "smoke", "ImageNet ResNet-50", "CRC-NORM", clustered(labels, 2), labels)
    return runs


@pytest.fixture(scope="module")
def bench(runs, tmp_path_factory):
    return run_benchmark("smoke", runs_dir=runs, out=tmp_path_factory.mktemp("results") / "benchmark" / "smoke")


def _ci(text):
    low, high = (float(x) for x in text.strip("[]").split(","))
    return low, high


def test_every_method_on_every_data_under_one_split(bench, labels):
    table = pd.read_csv(bench["csv"])
    assert {(m, d) for m, d in zip(table["method"], table["data"])} == {
        ("esvit: EsViT + k-NN", TINY), ("esvit: ResNet50 + k-NN", TINY),
        ("chen2022: ImageNet ResNet-50", TINY), ("chen2022: ImageNet ResNet-50", f"{TINY}+macenko")}
    for column in list(KEY_COLUMNS) + [c for m in METRICS for c in (m, f"{m} 95% CI")]:
        assert column in table.columns, column
    split = make_split(labels, fractions=(0.8, 0.1, 0.1), seed=0)
    assert (table["n_train"] == len(split["train"])).all() and (table["n_val"] == len(split["val"])).all()
    assert (table["n_test"] == len(split["test"])).all()
    # The same features reached through two papers' runs get the same numbers: one split, one protocol.
    by = table.set_index(["method", "data"])
    esvit, chen = by.loc[("esvit: EsViT + k-NN", TINY)], by.loc[("chen2022: ImageNet ResNet-50", TINY)]
    for column in [c for m in METRICS for c in (m, f"{m} 95% CI")]:
        assert esvit[column] == chen[column], column
    # queries = test, gallery = train, the kit's metric and kNN; a clustered encoder beats a random one
    good = clustered(labels, 0)
    tr, te = split["train"], split["test"]
    direct = evaluate_retrieval(good[tr], labels[tr], good[te], labels[te], k=10, ap_normalization="min_k_R")
    assert esvit["mAP@10"] == pytest.approx(100 * direct.means["mAP@10"], abs=1e-3)
    assert esvit["kNN top-1"] == pytest.approx(100 * weighted_knn(good[tr], labels[tr], good[te], labels[te], k=20,
                                                                  T=0.07)["top1"])
    random_row = by.loc[("esvit: ResNet50 + k-NN", TINY)]
    assert esvit["mAP@10"] > 90 and random_row["mAP@10"] < 50
    for _, row in table.iterrows():
        for metric in METRICS:
            low, high = _ci(row[f"{metric} 95% CI"])
            assert low <= row[metric] + 1e-6 and row[metric] <= high + 1e-6, (row["method"], metric)
    assert _ci(random_row["mAP@10 95% CI"])[1] - _ci(random_row["mAP@10 95% CI"])[0] > 0


def test_benchmark_markdown_and_heatmap(bench):
    md = bench["md"].read_text()
    assert md.startswith("# Common benchmark") and "not a reproduction" in md
    assert "min(k, R)" in md and "seed 0" in md and "k = min(20, n_train)" in md
    assert "No smoke run with stored features for: cyphervit, lgffem" in md
    assert bench["heatmap"].read_bytes()[:8] == PNG_MAGIC
    inputs = json.loads(bench["inputs"].read_text())["inputs"]
    assert len(inputs) == 4 and all(len(i["sha256"]) == 64 for i in inputs)


def test_official_test_set_replaces_the_test_part_and_regression_is_skipped(tmp_path):
    """chen2022 full: CRC-NONORM (MUS merged into STR) queries its official test set; BreastPathQ is a regression."""
    runs = tmp_path / "runs"
    main_y = np.repeat(np.arange(7), 10)
    test_y = np.repeat(np.arange(7), 3)
    centers = np.random.default_rng(0).normal(size=(7, 8))
    write_features(runs, "chen2022", "full", "ImageNet ResNet-50", "CRC-NONORM",
                   (centers[main_y] + 0.1).astype(np.float32), main_y)
    write_features(runs, "chen2022", "full", "ImageNet ResNet-50", "CRC-NONORM",
                   (centers[test_y] - 0.1).astype(np.float32), test_y, test=True)
    write_features(runs, "chen2022", "full", "ImageNet ResNet-50", "BreastPathQ",
                   np.random.default_rng(1).normal(size=(30, 8)).astype(np.float32), np.linspace(0, 1, 30))
    out = run_benchmark("full", runs_dir=runs, out=tmp_path / "benchmark" / "full")
    table = out["table"]
    assert list(table["data"]) == ["nct_crc_he_100k_nonorm+MUS→STR (test: crc_val_he_7k)"]
    row = table.iloc[0]
    assert (row["n_train"], row["n_val"], row["n_test"]) == (56, 7, 21)
    assert row["mAP@10"] == pytest.approx(100.0) and row["kNN top-1"] == pytest.approx(100.0)
    md = out["md"].read_text()
    assert "breastpathq: a regression target" in md and "not a reproduction" not in md


def test_refusals_name_what_is_wrong(runs, tmp_path):
    with pytest.raises(ValueError, match="'full' profile's folder"):
        run_benchmark("smoke", runs_dir=runs, out=tmp_path / "benchmark" / "full")
    with pytest.raises(FileNotFoundError, match="no stored feature sets"):
        run_benchmark("smoke", runs_dir=tmp_path / "empty", out=tmp_path / "benchmark" / "smoke")
    bad = tmp_path / "bad"
    path = write_features(bad, "esvit", "smoke", "EsViT + k-NN", "CRC", np.ones((3, 2), np.float32),
                          np.arange(3))
    sidecar = path.with_suffix(".json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "sha256": "0" * 64}))
    with pytest.raises(FeatureFileError, match="crc.npz"):
        run_benchmark("smoke", runs_dir=bad, out=tmp_path / "b2" / "smoke")


def tampered_loader(name):
    """The bundled tiles with test tile t replaced by a copy of training tile g of the same class, and group ids."""
    ds = load_dataset(name)
    split = make_split(ds.labels, fractions=(0.8, 0.1, 0.1), seed=0)
    t = int(split["test"][0])
    g = int(next(i for i in split["train"] if ds.labels[i] == ds.labels[t]))
    samples = [replace(s, group=f"slide{i % 20}") for i, s in enumerate(ds.samples)]
    samples[t] = replace(samples[g], group=samples[t].group)
    return PatchDataset(samples, ds.classes, name=ds.name)


def _rows(table, data, split):
    return table[(table["dataset"] == data) & (table["split"] == split)].set_index("descriptor")


def test_audit_rows_thresholds_figures_and_no_group_ids(runs, tmp_path):
    out = tmp_path / "leakage" / "smoke"
    (out).mkdir(parents=True)
    (out / "pairs_old_data_random_pixels.png").write_bytes(PNG_MAGIC)  # from an earlier audit: removed
    result = run_leakage_audit("smoke", runs_dir=runs, out=out)
    table = pd.read_csv(result["csv"], keep_default_na=False)
    random_tiny = _rows(table, TINY, "random 80/10/10 (Habijan et al.)")
    pixels = random_tiny.loc["pixels (32 px NCC)"]
    assert (int(pixels["n_train"]), int(pixels["n_test"]), int(pixels["n_pairs"])) == (80, 10, 0)
    assert float(pixels["threshold"]) == 0.95 and float(pixels["fraction_test_with_duplicate"]) == 0.0
    assert float(random_tiny.loc["features: esvit: EsViT + k-NN", "threshold"]) == 0.99
    # data the esvit run has no features of falls back to another paper's encoder
    assert "features: chen2022: ImageNet ResNet-50" in _rows(table, f"{TINY}+macenko",
                                                           "random 80/10/10 (Habijan et al.)").index
    grouped = _rows(table, TINY, "group-aware")
    assert list(grouped.index) == ["—"] and "has no group ids" in grouped.iloc[0]["note"]
    assert grouped.iloc[0]["n_test"] == ""
    names = {p.name for p in result["figures"]}
    assert {f"pairs_{TINY}_random_pixels.png", f"pairs_{TINY}_random_features.png",
            f"pairs_{TINY}+macenko_random_pixels.png"} <= names
    assert all((out / n).read_bytes()[:8] == PNG_MAGIC for n in names)
    assert not (out / "pairs_old_data_random_pixels.png").exists()
    md = result["md"].read_text()
    assert "normalized cross-correlation" in md and "Threshold 0.95" in md and "Threshold 0.99" in md


def test_audit_finds_a_planted_duplicate_and_splits_by_group(runs, tmp_path):
    result = run_leakage_audit("smoke", runs_dir=runs, out=tmp_path / "leakage" / "smoke",
                               dataset_loader=tampered_loader)
    table = result["table"]
    pixels = _rows(table, TINY, "random 80/10/10 (Habijan et al.)").loc["pixels (32 px NCC)"]
    assert pixels["n_test_with_duplicate"] == 1 and pixels["fraction_test_with_duplicate"] == pytest.approx(0.1)
    assert pixels["max_cosine"] == pytest.approx(1.0, abs=1e-4)
    grouped = _rows(table, TINY, "group-aware")
    assert set(grouped.index) == {"pixels (32 px NCC)", "features: esvit: EsViT + k-NN"}
    assert (grouped["n_test"] > 0).all() and (grouped["n_train"] + grouped["n_test"] <= 100).all()


def test_cli_commands_and_the_steps_after_reproduce_all(monkeypatch, tmp_path, capsys):
    from histokit import crosspaper, paths, report, runner

    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path / "no_runs")
    monkeypatch.setattr(paths, "RESULTS_DIR", tmp_path / "results")
    assert cli.main(["benchmark", "--profile", "smoke"]) == 1
    assert cli.main(["audit"]) == 1
    assert "no stored feature sets" in capsys.readouterr().err

    called = []
    monkeypatch.setattr(runner, "reproduce", lambda paper, *a, **k: called.append(paper) or
                        runner.RunResult(paper, "smoke", tmp_path / "no_runs", None))

    def failing_benchmark(profile):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(crosspaper, "run_benchmark", failing_benchmark)
    monkeypatch.setattr(crosspaper, "run_leakage_audit", lambda profile, data_root=None: called.append("audit") or
                        {"md": "l.md", "csv": "l.csv", "figures": []})
    monkeypatch.setattr(report, "write_report", lambda results_dir, profile=None, figure_cache_dir=None: called.append("report") or
                        ("R.md", "r.html"))
    assert cli.main(["reproduce", "all"]) == 1
    assert called == ["chen2022", "cyphervit", "esvit", "lgffem", "audit", "report"]
    out = capsys.readouterr()
    assert "common benchmark failed: RuntimeError: disk on fire" in out.err
    assert "Tables and figures:" in out.out and "esvit      not published" in out.out  # the closing summary
    called.clear()
    assert cli.main(["reproduce", "esvit"]) == 0
    assert called == ["esvit", "report"]


def test_audit_searches_an_official_test_set(tmp_path):
    """Full-profile layout on the bundled tiles: tiles 0-69 stand for the training data, 70-99 plus a copy of one
    training-split tile for its official test set; the planted copy is the one pixel near-duplicate found."""
    tiny = load_dataset(TINY)
    main_y = tiny.labels[:70]
    copied = int(make_split(main_y, fractions=(0.8, 0.1, 0.1), seed=0)["train"][0])
    test_rows = list(range(70, 100)) + [copied]
    sets = {"nct_crc_he_100k_nonorm": tiny.subset(range(70)), "crc_val_he_7k": tiny.subset(test_rows)}
    runs = tmp_path / "runs"
    write_features(runs, "chen2022", "full", "ImageNet ResNet-50", "CRC-NONORM", clustered(main_y, 0), main_y)
    write_features(runs, "chen2022", "full", "ImageNet ResNet-50", "CRC-NONORM",
                   clustered(tiny.labels[test_rows], 0), tiny.labels[test_rows], test=True)
    result = run_leakage_audit("full", runs_dir=runs, out=tmp_path / "leakage" / "full",
                               dataset_loader=sets.__getitem__)
    data = "nct_crc_he_100k_nonorm+MUS→STR (test: crc_val_he_7k)"
    official = _rows(result["table"], data, "official test set").loc["pixels (32 px NCC)"]
    assert (official["n_train"], official["n_test"], official["n_test_with_duplicate"]) == (56, 31, 1)
    assert official["max_cosine"] == pytest.approx(1.0, abs=1e-4)
    assert (tmp_path / "leakage" / "full" / "pairs_nct_crc_he_100k_nonorm+MUS_STR_test_crc_val_he_7k_official-test_"
            "pixels.png").is_file()


def test_raw_embeddings_of_a_run_are_l2_normalized_when_read(tmp_path, labels):
    # chen2022 stores raw embeddings (its probes read them); the benchmark compares every method on cosine
    from histokit.crosspaper.collect import collect_feature_sets

    raw = clustered(labels, 4) * np.random.default_rng(5).uniform(0.5, 3.0, size=(len(labels), 1)).astype(np.float32)
    path = write_features(tmp_path, "chen2022", "smoke", "ImageNet ResNet-50", "CRC-NONORM", raw, labels)
    meta = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**meta, "l2_normalized": False}))
    (entry,) = [e for g in collect_feature_sets("smoke", tmp_path).groups.values() for e in g.entries]
    main, _ = entry.load()
    np.testing.assert_allclose(np.linalg.norm(main.features, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(main.features, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
