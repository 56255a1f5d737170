"""Patch-level probes on frozen features (Ye et al. Tables 1, 4; Chen & Krishnan Table 1).

``columns = {dataset: {measure: table column}}`` names the column each number goes to, with measures ``knn`` /
``knn_top3`` (DINO weighted k-NN, %), ``linear`` (linear probe, %), ``knn_auc`` (Chen & Krishnan's scikit-learn
k-NN macro one-vs-rest AUC) and, for BreastPathQ linear regression, ``mse`` (predictions clipped to [0, 1]),
``mse_unclipped`` (raw predictions), ``tau`` (scipy tau-b, clipped predictions), ``tau_unclipped`` (tau-b, raw
predictions) and ``tau_bpq`` (the reference repository's ``kendalltau_bpq``, raw predictions). Row labels per model
come from ``rows = {model: {key column: value}}``.

``fit_on``: what the probes without a validation-chosen hyper-parameter (``knn_auc``, the regression) are fitted
on — ``"train"`` (the training split, the validation split held out) or ``"train+val"`` (every training tile, in
dataset order, as Chen & Krishnan's notebook fits ``KNeighborsClassifier`` / ``LinearRegression`` on the whole
training set).

Units: the evaluation functions return fractions; the records hold accuracies in percent (:func:`percent`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ...retrieval.features import FeatureSet
from ..knn import sklearn_knn_auc, weighted_knn
from ..linear import linear_probe
from ..regression import regression_probe
from .base import Protocol
from .records import percent, record

DINO_KS = (10, 20, 100, 200)   # facebookresearch/dino eval_knn.py's nb_knn
FIT_ON = ("train", "train+val")
MEASURES = ("knn", "knn_top3", "linear", "knn_auc", "mse", "mse_unclipped", "tau", "tau_unclipped", "tau_bpq")


def knn_with_k_sweep(parts: dict, ks=DINO_KS, T: float = 0.07) -> dict:
    """DINO weighted k-NN; Ye et al. sweep k, so k is chosen on the validation split and the test set scored once.

    Returns :func:`~histokit.evaluation.knn.weighted_knn`'s result (``top1`` / ``top3`` fractions) with ``correct``
    (1.0 / 0.0 per test item) and ``k_candidates``."""
    train, val, test = parts["train"], parts.get("val"), parts["test"]
    usable = [k for k in ks if k <= len(train)] or [len(train)]
    chosen = usable[0]
    if val is not None and len(val) and len(usable) > 1:
        scores = {k: weighted_knn(train.features, train.labels, val.features, val.labels, k=k, T=T)["top1"]
                  for k in usable}
        chosen = max(usable, key=lambda k: (scores[k], -k))
    n_cls = int(max(train.labels.max(), test.labels.max())) + 1
    out = weighted_knn(train.features, train.labels, test.features, test.labels, k=chosen, T=T, num_classes=n_cls)
    out["correct"] = (out["predictions"] == test.labels).astype(float)
    out["k_candidates"] = usable
    return out


def fit_set(parts: dict, fit_on: str = "train") -> FeatureSet:
    """The features a probe without a validation-chosen hyper-parameter is fitted on: the training split, or
    (``"train+val"``) the training and validation splits together in dataset order (every training tile)."""
    if fit_on not in FIT_ON:
        raise ValueError(f"fit_on must be one of {FIT_ON}, got {fit_on!r}")
    train, val = parts["train"], parts.get("val")
    if fit_on == "train" or val is None or not len(val):
        return train
    indices = np.concatenate([train.indices, val.indices])
    order = np.argsort(indices, kind="stable")
    return FeatureSet(np.concatenate([train.features, val.features])[order],
                      np.concatenate([train.labels, val.labels])[order], indices[order], train.timing)


@dataclass(frozen=True)
class ClassificationProbes(Protocol):
    """k-NN / linear / k-NN AUC / regression on frozen features, one record per (model, dataset, column)."""
    columns: dict = field(default_factory=dict)   # {dataset: {measure: column}}
    rows: dict = field(default_factory=dict)      # {model: {key column: label}}
    fit_on: str = "train"
    knn_ks: tuple = DINO_KS                       # the k candidates of the weighted k-NN, chosen on val

    kind: ClassVar[str] = "classification_probes"
    words: ClassVar[str] = "frozen-feature k-NN / linear / AUC probes"

    def check(self, recipe) -> None:
        super().check(recipe)
        where = f"{recipe.paper}: {self.kind} evaluation of table {self.table!r}"
        if self.fit_on not in FIT_ON:
            raise ValueError(f"{where}: fit_on must be one of {FIT_ON}, got {self.fit_on!r}")
        for dataset in self.datasets:
            if dataset not in self.columns:
                raise ValueError(f"{where}: columns has no entry for dataset {dataset!r}")
        for dataset, cols in self.columns.items():
            unknown = sorted(set(cols) - set(MEASURES))
            if unknown:
                raise ValueError(f"{where}: columns[{dataset!r}] has unknown measures {unknown}; known: {MEASURES}")
        if not self.knn_ks or any(not isinstance(k, int) or k < 1 for k in self.knn_ks):
            raise ValueError(f"{where}: knn_ks must be positive integers, got {self.knn_ks!r}")

    def run(self, ctx) -> list[dict]:
        return [r for m in self.models for d in self.datasets for r in self.measures(ctx, m, d, self.columns[d])]

    def measures(self, ctx, model: str, dataset: str, columns: dict) -> list[dict]:
        from ...stages.index import feature_parts

        parts = feature_parts(ctx, model, dataset)
        labels = self.row_labels(model)
        train, test = parts["train"], parts["test"]
        fit = fit_set(parts, self.fit_on)
        fitted = f"fitted on {len(fit)} tiles ({self.fit_on})"
        out = []

        def add(measure, value, **kw):
            if measure in columns:
                out.append(record(self, model, dataset, columns[measure], value, seed=ctx.seed, **labels, **kw))

        if ctx.recipe.dataset(dataset).task == "regression":
            reg = regression_probe(fit.features, fit.labels, test.features, test.labels)
            what = f"{reg['model']} regression on frozen features, {fitted}"
            add("mse", reg["mse"], note=f"{what}; MSE of the predictions clipped to [0, 1]")
            add("mse_unclipped", reg["mse_unclipped"], note=f"{what}; MSE of the raw predictions")
            add("tau", reg["kendall_tau"], note=f"{what}; scipy Kendall tau-b of the clipped predictions "
                                                f"(p = {reg['kendall_p']:.2g})")
            add("tau_unclipped", reg["kendall_tau_unclipped"],
                note=f"{what}; scipy Kendall tau-b of the raw predictions")
            add("tau_bpq", reg["tau_bpq"], note=f"{what}; the reference's kendalltau_bpq (variant 'd') of the raw "
                                                "predictions")
            return out
        if {"knn", "knn_top3"} & set(columns):
            knn = knn_with_k_sweep(parts, self.knn_ks)
            note = f"weighted k-NN, T = 0.07, k = {knn['k']} chosen on val from {knn['k_candidates']}"
            add("knn", percent(knn["top1"]), per_item=percent(knn["correct"]), note=note)
            add("knn_top3", percent(knn["top3"]), note=note)
        if "linear" in columns:
            val = parts.get("val")
            lin = linear_probe(train.features, train.labels, val.features, val.labels, test.features, test.labels,
                               seed=ctx.seed)
            correct = percent((lin["predictions"] == test.labels).astype(float))
            add("linear", percent(lin["accuracy"]), per_item=correct,
                note=f"logistic regression, C = {lin['best_C']:g} chosen on val")
        if "knn_auc" in columns:
            auc = sklearn_knn_auc(fit.features, fit.labels, test.features, test.labels, k=5)
            skipped = auc["auc_skipped_classes"]
            add("knn_auc", auc["auc_macro_ovr"],
                note=f"KNeighborsClassifier(k=5), macro one-vs-rest AUC, {fitted}" +
                     (f"; classes {skipped} absent from the test split are left out" if skipped else ""))
        return out
