"""One unit convention in the public API: fractions in [0, 1] in code (retrieval, kNN, linear probe, Kimia eta),
percent only where a table renders them — and the records the tables render hold the same floats as when kNN and the
linear probe returned percent themselves (issue 20, item 3)."""
from types import SimpleNamespace

import numpy as np
import pytest

from histokit.evaluation.knn import majority_knn, sklearn_knn_auc, weighted_knn
from histokit.evaluation.linear import linear_probe
from histokit.retrieval.features import FeatureSet
from histokit.retrieval.metrics import evaluate_retrieval
from histokit.evaluation.protocols.probes import ClassificationProbes, knn_with_k_sweep
from histokit.stages import index


def _blobs(n, seed, d=8, classes=3, spread=2.5):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    return FeatureSet((np.eye(d)[:classes] * 2)[labels] + spread * rng.normal(size=(n, d)), labels, np.arange(n))


def test_every_public_metric_is_a_fraction():
    train, val, test = _blobs(60, 0), _blobs(15, 1), _blobs(23, 2)
    values = {
        "weighted_knn top1": weighted_knn(train.features, train.labels, test.features, test.labels)["top1"],
        "weighted_knn top3": weighted_knn(train.features, train.labels, test.features, test.labels)["top3"],
        "majority_knn top1": majority_knn(train.features, train.labels, test.features, test.labels)["top1"],
        "sklearn_knn_auc": sklearn_knn_auc(train.features, train.labels, test.features, test.labels)["auc_macro_ovr"],
        "linear_probe": linear_probe(train.features, train.labels, val.features, val.labels, test.features,
                                     test.labels, Cs=(0.1, 1.0))["accuracy"],
        **{f"retrieval {k}": v for k, v in evaluate_retrieval(train.features, train.labels, test.features,
                                                               test.labels, k=10).means.items()},
    }
    for name, value in values.items():
        assert 0.0 <= value <= 1.0, name
    assert 0.0 < values["weighted_knn top1"] < 1.0  # not a degenerate 0 / 1 that both conventions share


@pytest.mark.parametrize("seed", range(6))
def test_table_records_are_the_floats_the_percent_api_gave(monkeypatch, seed):
    """probe_measures (kNN with the k sweep, linear probe) records 100 * fraction: bit for bit the value the
    functions returned when they computed 100 * mean themselves, and the per-item values behind the intervals."""
    rng = np.random.default_rng(seed)
    n_test = int(rng.integers(7, 60))
    parts = {"train": _blobs(80, seed), "val": _blobs(20, seed + 100), "test": _blobs(n_test, seed + 200)}
    monkeypatch.setattr(index, "feature_parts", lambda ctx, model, dataset: parts)
    ctx = SimpleNamespace(recipe=SimpleNamespace(dataset=lambda key: SimpleNamespace(task="classification")), seed=0)
    spec = ClassificationProbes("t", ("m",), ("d",))
    records = spec.measures(ctx, "m", "d", {"knn": "kNN", "knn_top3": "kNN@3", "linear": "Linear"})
    by = {r["metric"]: r for r in records}
    test = parts["test"]
    knn = knn_with_k_sweep(parts)
    assert by["kNN"]["value"] == 100.0 * float(np.mean(knn["predictions"] == test.labels))  # exact, not approx
    ranked_hit3 = by["kNN@3"]["value"]
    assert ranked_hit3 == 100.0 * knn["top3"] and 0.0 <= ranked_hit3 <= 100.0
    lin = linear_probe(parts["train"].features, parts["train"].labels, parts["val"].features, parts["val"].labels,
                       test.features, test.labels, seed=0)
    assert by["Linear"]["value"] == 100.0 * float(np.mean(lin["predictions"] == test.labels))
    # the intervals are bootstrapped over per-item values of 0 / 100, as before
    old_items = (knn["predictions"] == test.labels).astype(float) * 100.0
    from histokit.evaluation.stats import bootstrap_ci

    assert (by["kNN"]["ci_low"], by["kNN"]["ci_high"]) == bootstrap_ci(old_items, seed=0)


def test_the_package_is_typed_and_the_api_page_names_real_calls():
    import importlib
    import re
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    assert (root / "histokit" / "py.typed").is_file()
    package_data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["histokit"]
    page = (root / "docs" / "api.md").read_text()
    assert "## Units" in page and "Fractions in code, percent only when a table renders" in page
    names = 0
    for heading in re.split(r"^## ", page, flags=re.MULTILINE)[1:]:
        packages = re.findall(r"`(histokit\.\w+)`", heading.splitlines()[0])
        for call in re.findall(r"^\| `([\w.]+)\(", heading, re.MULTILINE):
            found = False
            for dotted in [f"{package}.{call}" for package in packages] + [f"histokit.{call}"]:
                module, _, attr = dotted.rpartition(".")
                try:
                    found = found or hasattr(importlib.import_module(module), attr)
                except ImportError:
                    pass
            assert found, f"docs/api.md lists {call}, which none of {packages} has"
            names += 1
    assert names >= 15
