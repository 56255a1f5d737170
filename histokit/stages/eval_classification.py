"""Patch-level protocols on frozen features (Ye et al. Tables 1, 3, 4; Chen & Krishnan Table 1).

A recipe names the table column each number goes to: ``params["columns"] = {dataset: {measure: column}}`` with
measures ``knn`` / ``knn_top3`` (DINO weighted k-NN, %), ``linear`` (linear probe, %), ``knn_auc`` (Chen &
Krishnan's scikit-learn k-NN macro one-vs-rest AUC) and, for BreastPathQ linear regression, ``mse`` (predictions
clipped to [0, 1]), ``mse_unclipped`` (raw predictions), ``tau`` (scipy tau-b, clipped predictions),
``tau_unclipped`` (tau-b, raw predictions) and ``tau_bpq`` (the reference repository's ``kendalltau_bpq``, raw
predictions). Row labels per model come from ``params["rows"] = {model: {key column: value}}``.

``params["fit_on"]``: what the probes without a validation-chosen hyper-parameter (``knn_auc``, the regression)
are fitted on — ``"train"`` (default: the training split, the validation split held out) or ``"train+val"`` (every
training tile, in dataset order, as Chen & Krishnan's notebook fits ``KNeighborsClassifier`` / ``LinearRegression``
on the whole training set).

Units: the evaluation functions return fractions (histokit.evaluation); the records these stages write, which the
tables render, hold accuracies in percent, converted here with :func:`percent` (``100.0 * fraction``, the same
float the functions returned before they returned fractions, so no table value moved).
"""
from __future__ import annotations

import numpy as np

from ..evaluation.knn import sklearn_knn_auc, weighted_knn
from ..evaluation.linear import linear_probe
from ..evaluation.regression import regression_probe
from ..evaluation.stats import bootstrap_ci, mean_std, ttest
from ..papers.recipe import EvalSpec
from ..data.splits import make_split
from .common import split_indices
from .context import StageContext
from ..retrieval.features import FeatureSet
from .index import feature_parts, load_feature_set

DINO_KS = (10, 20, 100, 200)   # facebookresearch/dino eval_knn.py's nb_knn


def percent(fraction):
    """A fraction (a float or an array of per-item values) as the percent a table shows: ``100.0 * fraction``."""
    return 100.0 * fraction


def row_labels(spec: EvalSpec, model: str) -> dict:
    return {**spec.labels, **spec.params.get("rows", {}).get(model, {})}


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


def _record(spec, model, dataset, column, value, *, per_item=None, note="", seed=0, **extra):
    rec = {"table": spec.table, "model": model, "dataset": dataset, "metric": column, "value": float(value),
           "note": note, **extra}
    if per_item is not None and len(per_item) >= 2:
        rec["ci_low"], rec["ci_high"] = bootstrap_ci(per_item, seed=seed)
        rec["n"] = len(per_item)
    return rec


FIT_ON = ("train", "train+val")


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


def probe_measures(ctx: StageContext, spec: EvalSpec, model: str, dataset: str, columns: dict) -> list[dict]:
    parts = feature_parts(ctx, model, dataset)
    labels = row_labels(spec, model)
    train, test = parts["train"], parts["test"]
    fit_on = spec.params.get("fit_on", "train")
    fit = fit_set(parts, fit_on)
    fitted = f"fitted on {len(fit)} tiles ({fit_on})"
    out = []

    def add(measure, value, **kw):
        if measure in columns:
            out.append(_record(spec, model, dataset, columns[measure], value, seed=ctx.seed, **labels, **kw))

    if ctx.recipe.dataset(dataset).task == "regression":
        reg = regression_probe(fit.features, fit.labels, test.features, test.labels)
        what = f"{reg['model']} regression on frozen features, {fitted}"
        add("mse", reg["mse"], note=f"{what}; MSE of the predictions clipped to [0, 1]")
        add("mse_unclipped", reg["mse_unclipped"], note=f"{what}; MSE of the raw predictions")
        add("tau", reg["kendall_tau"], note=f"{what}; scipy Kendall tau-b of the clipped predictions "
                                            f"(p = {reg['kendall_p']:.2g})")
        add("tau_unclipped", reg["kendall_tau_unclipped"], note=f"{what}; scipy Kendall tau-b of the raw predictions")
        add("tau_bpq", reg["tau_bpq"], note=f"{what}; the reference's kendalltau_bpq (variant 'd') of the raw "
                                            "predictions")
        return out
    if {"knn", "knn_top3"} & set(columns):
        knn = knn_with_k_sweep(parts, spec.params.get("knn_ks", DINO_KS))
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


def eval_classification_probes(ctx: StageContext, spec: EvalSpec) -> list[dict]:
    """k-NN / linear / k-NN AUC / regression on frozen features, one record per (model, dataset, column)."""
    columns = spec.params["columns"]
    return [r for m in spec.models for d in spec.datasets for r in probe_measures(ctx, spec, m, d, columns[d])]


def original_test_fraction(ctx: StageContext, dataset: str, n_pooled: int, n_official_test: int | None) -> float:
    """The share of the pooled images that the dataset's own official split puts in its test set: CRC-VAL-HE-7K
    over NCT-CRC-HE-100K + CRC-VAL-HE-7K (7,180 / 107,180), PanNuke's last fold over the three folds (about a
    third), BreastPathQ's validation set over train + validation (187 / 2,766); the recipe's split otherwise."""
    if n_official_test is None:  # no separate test set: the test part of the dataset's (official or kit) split
        n_official_test = len(split_indices(ctx, dataset)["test"])
    return n_official_test / n_pooled


def resplit_scores(ctx: StageContext, model: str, dataset: str, n_splits: int, test_fraction="original") -> dict:
    """Ye et al. Table 3: the official train and test sets pooled, re-split ``n_splits`` times "adhering strictly to
    the original distribution ratios" (stratified, seeds 0..n-1), weighted k-NN (k = 20, T = 0.07) top-1 on each
    re-split (BreastPathQ: MSE and Kendall tau of the regression probe). ``test_fraction``: "original" (the
    dataset's own official test share, :func:`original_test_fraction`), a number, or {dataset: either}.

    Returns {measure: [one value per re-split]} (``acc`` in percent, as the table shows it) plus ``test_fraction``
    (the share used) and ``labels`` (the pooled labels: two models with equal labels were scored on the same
    re-splits, so their values pair up)."""
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


MEASURES = ("acc", "mse", "tau")


def eval_resplit_knn(ctx: StageContext, spec: EvalSpec) -> list[dict]:
    """Mean ± std over re-splits per (model, dataset); between the paired backbones the p-value of Welch's t-test
    (column ``<measure>_pvalue``) and of the paired t-test (``<measure>_pvalue_paired``, ``scipy.stats.ttest_rel``:
    both backbones are scored on the same seeded re-splits of the same pooled images)."""
    p = spec.params
    n_splits, test_fraction = p.get("n_splits", 5), p.get("test_fraction", "original")
    scores = {(m, d): resplit_scores(ctx, m, d, n_splits, test_fraction) for m in spec.models for d in spec.datasets}
    out = []
    for (m, d), measures in scores.items():
        cols, labels = p["columns"][d], row_labels(spec, m)
        note = (f"{n_splits} stratified re-splits of train + test, test fraction {measures['test_fraction']:.4g} "
                f"({measures['fraction_source']})")
        for measure in MEASURES:
            if measure not in measures:
                continue
            mean, std = mean_std(measures[measure])
            for suffix, value in (("mean", mean), ("std", std)):
                if f"{measure}_{suffix}" in cols:
                    out.append(_record(spec, m, d, cols[f"{measure}_{suffix}"], value, note=note, **labels))
    for vanilla, cypher in p.get("compare", ()):
        for d in spec.datasets:
            a, b = scores[(vanilla, d)], scores[(cypher, d)]
            for measure in MEASURES:
                if measure not in a:
                    continue
                for paired, suffix, what in ((False, "pvalue", "Welch t-test"),
                                             (True, "pvalue_paired", "paired t-test (scipy ttest_rel)")):
                    column = p["columns"][d].get(f"{measure}_{suffix}")
                    if column is None:
                        continue
                    if paired and not np.array_equal(a["labels"], b["labels"]):
                        raise ValueError(f"{d}: {vanilla} and {cypher} were not scored on the same images, so their "
                                         f"re-splits do not pair up")
                    pvalue = ttest(a[measure], b[measure], paired=paired)
                    for m in (vanilla, cypher):
                        out.append(_record(spec, m, d, column, pvalue, note=f"{what} over the {n_splits} re-splits",
                                           **row_labels(spec, m)))
    return out


def eval_label_fraction(ctx: StageContext, spec: EvalSpec) -> list[dict]:
    """Ye et al. Table 2: fine-tune each model end to end on 1 ... 100 % of the training labels, drawn evenly per
    class, and report top-1 accuracy on the (unchanged) test split. One cached result per (model, fraction)."""
    from .finetune_fractions import finetune_fraction

    out = []
    for m in spec.models:
        for d in spec.datasets:
            for fraction, column in spec.params["fractions"].items():
                result = finetune_fraction(ctx, m, d, float(fraction), spec.params)
                out.append(_record(spec, m, d, column, result["accuracy"], per_item=np.asarray(result["correct"]),
                                   note=f"{result['n_train']} training tiles, {result['epochs']} epochs, "
                                        f"full fine-tuning", seed=ctx.seed, **row_labels(spec, m)))
    return out
