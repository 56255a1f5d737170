"""Ye et al. Table 3: the official train and test sets pooled and re-split ``n_splits`` times "adhering strictly to
the original distribution ratios", weighted k-NN (BreastPathQ: the regression probe) on each, mean ± std, and
t-tests between paired backbones."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Union

import numpy as np

from ...data.splits import make_split
from ..knn import weighted_knn
from ..regression import regression_probe
from ..stats import mean_std, ttest
from .base import Protocol
from .records import percent, record

MEASURES = ("acc", "mse", "tau")
SUFFIXES = ("mean", "std", "pvalue", "pvalue_paired")


def original_test_fraction(ctx, dataset: str, n_pooled: int, n_official_test: int | None) -> float:
    """The share of the pooled images that the dataset's own official split puts in its test set: CRC-VAL-HE-7K
    over NCT-CRC-HE-100K + CRC-VAL-HE-7K (7,180 / 107,180), PanNuke's last fold over the three folds (about a
    third), BreastPathQ's validation set over train + validation (187 / 2,766); the recipe's split otherwise."""
    from ...stages.common import split_indices

    if n_official_test is None:  # no separate test set: the test part of the dataset's (official or kit) split
        n_official_test = len(split_indices(ctx, dataset)["test"])
    return n_official_test / n_pooled


def resplit_scores(ctx, model: str, dataset: str, n_splits: int, test_fraction="original") -> dict:
    """Weighted k-NN (k = 20, T = 0.07) top-1 on each of ``n_splits`` stratified re-splits (seeds 0..n-1) of the
    pooled official train + test (BreastPathQ: MSE and Kendall tau of the regression probe). ``test_fraction``:
    "original" (the dataset's own official test share, :func:`original_test_fraction`), a number, or {dataset:
    either}.

    Returns {measure: [one value per re-split]} (``acc`` in percent, as the table shows it) plus ``test_fraction``
    (the share used) and ``labels`` (the pooled labels: two models with equal labels were scored on the same
    re-splits, so their values pair up)."""
    from ...stages.index import load_feature_set

    full = load_feature_set(ctx, model, dataset)
    parts = [full]
    if ctx.recipe.dataset(dataset).test_dataset:
        parts.append(load_feature_set(ctx, model, dataset, test=True))
    feats = np.concatenate([p.features for p in parts])
    labels = np.concatenate([p.labels for p in parts])
    if isinstance(test_fraction, dict):
        test_fraction = test_fraction.get(dataset, "original")
    source = "the official split's" if test_fraction == "original" else "set by the recipe"
    if test_fraction == "original":
        test_fraction = original_test_fraction(ctx, dataset, len(labels), len(parts[1]) if len(parts) > 1 else None)
    test_fraction = float(test_fraction)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"{dataset}: re-split test fraction must be in (0, 1), got {test_fraction}")
    regression = ctx.recipe.dataset(dataset).task == "regression"
    scores = {"acc": [], "mse": [], "tau": []}
    for seed in range(n_splits):
        split = make_split(labels, None, (1 - test_fraction, test_fraction), seed)  # stratified unless regression
        tr, te = split["train"], split["test"]
        if regression:
            reg = regression_probe(feats[tr], labels[tr], feats[te], labels[te])
            scores["mse"].append(reg["mse"])
            scores["tau"].append(reg["kendall_tau"])
        else:
            k = min(20, len(tr))
            scores["acc"].append(percent(weighted_knn(feats[tr], labels[tr], feats[te], labels[te], k=k)["top1"]))
    out = {k: v for k, v in scores.items() if v}
    out.update(test_fraction=test_fraction, fraction_source=source, labels=labels)
    return out


@dataclass(frozen=True)
class ResplitKnn(Protocol):
    """Mean ± std over re-splits per (model, dataset); between the paired backbones (``compare``) the p-value of
    Welch's t-test (column ``<measure>_pvalue``) and of the paired t-test (``<measure>_pvalue_paired``,
    ``scipy.stats.ttest_rel``: both backbones are scored on the same seeded re-splits of the same pooled images).
    ``columns = {dataset: {"<measure>_<mean|std|pvalue|pvalue_paired>": table column}}``."""
    columns: dict = field(default_factory=dict)
    rows: dict = field(default_factory=dict)
    n_splits: int = 5
    test_fraction: Union[str, float, dict] = "original"
    compare: tuple = ()                    # (model, model) pairs tested against each other

    kind: ClassVar[str] = "resplit_knn"
    words: ClassVar[str] = "k-NN over the paper's re-splits"

    def check(self, recipe) -> None:
        super().check(recipe)
        where = f"{recipe.paper}: {self.kind} evaluation of table {self.table!r}"
        if not isinstance(self.n_splits, int) or self.n_splits < 2:
            raise ValueError(f"{where}: n_splits must be an integer >= 2, got {self.n_splits!r}")
        fractions = self.test_fraction.values() if isinstance(self.test_fraction, dict) else [self.test_fraction]
        for f in fractions:
            if f != "original" and not (isinstance(f, (int, float)) and 0.0 < f < 1.0):
                raise ValueError(f"{where}: test_fraction must be 'original' or in (0, 1), got {f!r}")
        for dataset in self.datasets:
            if dataset not in self.columns:
                raise ValueError(f"{where}: columns has no entry for dataset {dataset!r}")
        known = {f"{m}_{s}" for m in MEASURES for s in SUFFIXES}
        for dataset, cols in self.columns.items():
            if set(cols) - known:
                raise ValueError(f"{where}: columns[{dataset!r}] has unknown keys {sorted(set(cols) - known)}")
        for pair in self.compare:
            if len(pair) != 2 or any(m not in self.models for m in pair):
                raise ValueError(f"{where}: compare pair {pair!r} must name two of its models")

    def run(self, ctx) -> list[dict]:
        n_splits = self.n_splits
        scores = {(m, d): resplit_scores(ctx, m, d, n_splits, self.test_fraction)
                  for m in self.models for d in self.datasets}
        out = []
        for (m, d), measures in scores.items():
            cols, labels = self.columns[d], self.row_labels(m)
            note = (f"{n_splits} stratified re-splits of train + test, test fraction {measures['test_fraction']:.4g} "
                    f"({measures['fraction_source']})")
            for measure in MEASURES:
                if measure not in measures:
                    continue
                mean, std = mean_std(measures[measure])
                for suffix, value in (("mean", mean), ("std", std)):
                    if f"{measure}_{suffix}" in cols:
                        out.append(record(self, m, d, cols[f"{measure}_{suffix}"], value, note=note, **labels))
        for vanilla, cypher in self.compare:
            for d in self.datasets:
                a, b = scores[(vanilla, d)], scores[(cypher, d)]
                for measure in MEASURES:
                    if measure not in a:
                        continue
                    for paired, suffix, what in ((False, "pvalue", "Welch t-test"),
                                                 (True, "pvalue_paired", "paired t-test (scipy ttest_rel)")):
                        column = self.columns[d].get(f"{measure}_{suffix}")
                        if column is None:
                            continue
                        if paired and not np.array_equal(a["labels"], b["labels"]):
                            raise ValueError(f"{d}: {vanilla} and {cypher} were not scored on the same images, so "
                                             f"their re-splits do not pair up")
                        pvalue = ttest(a[measure], b[measure], paired=paired)
                        for m in (vanilla, cypher):
                            out.append(record(self, m, d, column, pvalue, note=f"{what} over the {n_splits} re-splits",
                                              **self.row_labels(m)))
        return out
