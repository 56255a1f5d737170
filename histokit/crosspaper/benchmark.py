"""The common benchmark: every (paper, model) of every run of one profile, on every data it has, under ONE protocol.

Each paper's own tables follow that paper's protocol (its split, k, normalization, kNN flavour), so their numbers
cannot be set side by side. Here the stored features of all four papers' runs are re-evaluated the same way:

* one stratified 80/10/10 split per data (make_split, seed 0), shared by every method on that data; where the
  recipe names an official test set (CRC-VAL-HE-7K), it replaces the 10 % test part;
* retrieval: queries = test, gallery = train, cosine on L2-normalized features, exact FAISS search; mAP@10 (AP@k
  normalized by min(k, R)), P@10, nDCG@10, each with a 95 % percentile bootstrap interval over queries;
* DINO's weighted kNN (k = 20 capped to the gallery, T = 0.07), top-1;
* a linear probe (logistic regression, C chosen on the val split), test accuracy.

Writes ``benchmark.csv``, ``benchmark.md`` and ``benchmark_heatmap.png`` to ``results/benchmark/<profile>/``.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from .. import paths
from ..evaluation.knn import weighted_knn
from ..evaluation.linear import linear_probe
from ..evaluation.stats import bootstrap_ci
from ..io import atomic_write_json
from ..retrieval.features import FeatureSet
from ..retrieval.metrics import evaluate_retrieval
from .collect import (SPLIT_FRACTIONS, SPLIT_SEED, Collection, DataGroup, FeatureEntry, check_profile_folder,
                      check_same_labels, collect_feature_sets, common_split, shown_path)
from .tables import write_table_files

K = 10
AP_NORMALIZATION = "min_k_R"
KNN_K, KNN_T = 20, 0.07
N_BOOT, BOOT_SEED = 1000, 0
METRICS = ("mAP@10", "P@10", "nDCG@10", "kNN top-1", "linear acc")
HEATMAP_METRICS = ("mAP@10", "kNN top-1")
SMALL_PROBLEM = 1 << 22             # training-matrix entries below which BLAS runs single-threaded
KEY_COLUMNS = ("method", "data", "n_train", "n_val", "n_test")
TRAILING_COLUMNS = ("paper", "model", "weights")
TIE_METRICS = ("kNN top-1", "linear acc")   # per-image correctness: few test images, few possible values


def _with_ci(values: np.ndarray) -> tuple[float, str]:
    """(mean, "[low, high]") of per-query values in %; no interval for fewer than two queries."""
    mean = float(np.mean(values))
    if values.size < 2:
        return mean, ""
    low, high = bootstrap_ci(values, n_boot=N_BOOT, seed=BOOT_SEED)
    return mean, f"[{low:.2f}, {high:.2f}]"


def _parts(main: FeatureSet, test: Optional[FeatureSet], split: dict) -> dict:
    def rows(name: str) -> FeatureSet:
        idx = split[name]
        return FeatureSet(main.features[idx], main.labels[idx], main.indices[idx])

    return {"train": rows("train"), "val": rows("val"), "test": test if test is not None else rows("test")}


def _blas_threads(n_values: int):
    """One BLAS / OpenMP thread for small problems: they gain nothing from threads, and on a machine whose cores
    are shared, spinning BLAS threads made the linear probes crawl (measured on a loaded 2-core machine: the five
    esvit smoke methods took 307 s with two threads, 10 s with one)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1) if n_values < SMALL_PROBLEM else contextlib.nullcontext()


def evaluate_method(parts: dict) -> dict:
    """Per-query values (in %) of every metric for one method's train / val / test features."""
    with _blas_threads(parts["train"].features.size):
        return _evaluate_method(parts)


def _evaluate_method(parts: dict) -> dict:
    train, val, test = parts["train"], parts["val"], parts["test"]
    result = evaluate_retrieval(train.features, train.labels, test.features, test.labels, k=K,
                                ap_normalization=AP_NORMALIZATION)
    per_query = {"mAP@10": result.per_query[f"AP@{K}"], "P@10": result.per_query[f"P@{K}"],
                 "nDCG@10": result.per_query[f"nDCG@{K}"]}
    knn = weighted_knn(train.features, train.labels, test.features, test.labels, k=min(KNN_K, len(train)), T=KNN_T)
    per_query["kNN top-1"] = (knn["predictions"] == test.labels).astype(np.float64)
    if len(val) and np.unique(train.labels).size > 1:
        probe = linear_probe(train.features, train.labels, val.features, val.labels, test.features, test.labels,
                             seed=SPLIT_SEED)
        per_query["linear acc"] = (probe["predictions"] == test.labels).astype(np.float64)
    return {name: 100.0 * np.asarray(values, dtype=np.float64) for name, values in per_query.items()}


def _row(entry: FeatureEntry, group: DataGroup, parts: dict, per_query: dict) -> dict:
    row = {"method": entry.method, "data": group.key, "n_train": len(parts["train"]), "n_val": len(parts["val"]),
           "n_test": len(parts["test"])}
    for metric in METRICS:
        if metric in per_query:
            row[metric], row[f"{metric} 95% CI"] = _with_ci(per_query[metric])
        else:
            row[metric], row[f"{metric} 95% CI"] = float("nan"), ""
    row.update(paper=entry.paper, model=entry.model, weights=entry.weights, _rank=entry.model_rank)
    # which test images each accuracy got right (not a column): tie_notes tells a tie of chance from a shared answer
    row["_hits"] = {m: tuple(np.asarray(per_query[m]) > 0) for m in TIE_METRICS if m in per_query}
    return row


def benchmark_group(group: DataGroup) -> Optional[tuple[list, list]]:
    """Rows of every method on one data and the inputs it read (path + sha256); None for a regression target."""
    rows, inputs, reference, split = [], [], None, None
    for entry in group.entries:
        main, test = entry.load()
        if main.labels.dtype.kind == "f":
            return None
        if reference is None:  # the first feature set fixes the labels; every other must agree, then one split
            reference, reference_test = main.labels, None if test is None else test.labels
            split = common_split(reference)
        check_same_labels(reference, main, entry)
        if test is not None:
            check_same_labels(reference_test, test, entry, "test")
        parts = _parts(main, test, split)
        rows.append(_row(entry, group, parts, evaluate_method(parts)))
        inputs.append({"method": entry.method, "data": group.key, "features": shown_path(entry.path),
                       "sha256": entry.sha256, "test_features": shown_path(entry.test_path) if entry.test_path else "",
                       "test_sha256": entry.test_sha256 or ""})
    return rows, inputs


def _order(collection: Collection, rows: list) -> list:
    """Rows by data (as found), then paper (alphabetical), then the paper's own model order (its recipe)."""
    data_rank = {key: i for i, key in enumerate(collection.groups)}
    return sorted(rows, key=lambda r: (data_rank[r["data"]], r["paper"], r["_rank"]))


def protocol_notes(collection: Collection, skipped: list) -> list:
    train, val, test = (int(round(100 * f)) for f in SPLIT_FRACTIONS)
    notes = [
        f"One split per data, shared by every method: make_split stratified {train}/{val}/{test} (train/val/test), "
        f"seed {SPLIT_SEED}; where the recipe names an official test set (data '… (test: <set>)') that set replaces "
        "the test part. Recipes whose own tables use another split (an official or group-aware one) are "
        "re-evaluated on this split here.",
        f"Retrieval: queries = test, gallery = train; cosine similarity on L2-normalized features, exact FAISS "
        f"search; a gallery item is relevant when it has the query's label. mAP@{K} with AP@k normalized by "
        f"min(k, R) ('{AP_NORMALIZATION}', R = relevant items in the gallery); P@{K}; nDCG@{K} with binary gains. "
        "All in %.",
        f"95% CI: percentile bootstrap of the mean over test queries ({N_BOOT} resamples, seed {BOOT_SEED}); for kNN "
        "and the linear probe over per-query correctness.",
        f"kNN top-1: DINO's weighted vote (Caron et al. 2021), cosine, k = min({KNN_K}, n_train), weights "
        f"exp(sim / {KNN_T}), in %.",
        "linear acc: multinomial logistic regression on frozen features, C (inverse L2 strength) chosen on the val "
        "split from 1e-3 … 1e4, test accuracy in %.",
        "Features are each run's stored ones (runs/<paper>/<profile>/features/, sha256-verified), extracted with "
        "that run's weights, image size and normalization; 'weights' says where each model's weights came from.",
        "data = <manifest>[+stain normalization][+class merges][ (test: official test set)]: the images and labels "
        "underneath, whatever each paper calls them.",
    ]
    if collection.papers_missing:
        notes.append(f"No {collection.profile} run with stored features for: {', '.join(collection.papers_missing)} "
                     f"(looked in {shown_path(collection.runs_dir)}/<paper>/{collection.profile}/features/).")
    return notes + skipped + collection.notes


def tie_notes(rows: list) -> list:
    """A footnote for each (data, accuracy) where most methods (at least three) share one value: with n test images
    an accuracy takes only n + 1 values, so a tie says the test split cannot tell the features apart, not that the
    methods agree. It counts the tied methods, those among them with random weights (``weights`` starting with
    "random"), and how many got exactly the same test images right."""
    notes = []
    for data in dict.fromkeys(r["data"] for r in rows):
        group = [r for r in rows if r["data"] == data]
        for metric in TIE_METRICS:
            scored = [r for r in group if metric in r.get("_hits", {})]
            if len(scored) < 3:
                continue
            value, count = Counter(round(float(r[metric]), 6) for r in scored).most_common(1)[0]
            if count < 3 or 2 * count <= len(scored):
                continue
            tied = [r for r in scored if round(float(r[metric]), 6) == value]
            same = Counter(r["_hits"][metric] for r in tied).most_common(1)[0][1]
            randoms = sum(str(r.get("weights", "")).strip().lower().startswith("random") for r in tied)
            n_test = int(tied[0]["n_test"])
            missed = n_test - int(round(value * n_test / 100.0))
            notes.append(
                f"{data}: {metric} is {value:.2f} for {count} of {len(scored)} methods"
                + (f", {randoms} of them with randomly initialised weights" if randoms else "")
                + f". With {n_test} test images an accuracy moves in steps of {100.0 / n_test:.3g} points, so "
                f"methods tie easily: each of them misses {missed}, and {same} of the {count} miss exactly the same "
                "test images. The tie says the test split is too small to tell these features apart, not that the "
                "methods are equally good; the 95% CI shows how little one such number pins down.")
    return notes


def heatmap_frame(table: pd.DataFrame, methods: Optional[list] = None) -> pd.DataFrame:
    """methods (rows, in ``methods``' order) x (data, metric): a column per data and metric of HEATMAP_METRICS."""
    frame = pd.DataFrame(index=pd.Index(list(dict.fromkeys(methods or table["method"])), name="method"))
    for data in dict.fromkeys(table["data"]):
        part = table[table["data"] == data].set_index("method")
        for metric in HEATMAP_METRICS:
            frame[f"{data} · {metric}"] = part[metric]
    frame.columns.name = "data / metric"
    return frame


def benchmark_dir(profile: str, with_encoders: bool = False) -> Path:
    """``results/benchmark/<profile>``; with your encoders ``results/evaluate/benchmark/<profile>``, beside
    ``histokit evaluate``'s tables, so the papers-only benchmark is never overwritten by a user's run."""
    return paths.RESULTS_DIR / ("evaluate/benchmark" if with_encoders else "benchmark") / profile


def run_benchmark(profile: str = "smoke", runs_dir: Optional[Path] = None, out: Optional[Path] = None,
                  encoders: Sequence[str] = (), data_root: Optional[str] = None, device: str = "auto",
                  say=print) -> dict:
    """Evaluate every stored feature set of ``profile`` under the common protocol; write the table and heat map.
    ``encoders`` (encoder specs, as ``histokit evaluate`` takes them) add a row per encoder and data
    (:mod:`histokit.crosspaper.user_rows`).

    Returns ``{"csv", "md", "heatmap", "inputs", "table"}``. Raises FileNotFoundError when no run of this profile
    stored any features.
    """
    from ..viz.grid import save_figure
    from ..viz.heatmap import metric_heatmap

    out = check_profile_folder(Path(out) if out is not None else benchmark_dir(profile, bool(encoders)),
                               profile, "benchmark")
    collection = collect_feature_sets(profile, runs_dir)
    if not collection.n_feature_sets:
        papers = ", ".join(collection.papers_found + collection.papers_missing)
        raise FileNotFoundError(f"no stored feature sets under {collection.runs_dir}/<paper>/{profile}/features/ "
                                f"(papers looked for: {papers}); run `histokit reproduce <paper> --profile "
                                f"{profile}` first")
    user_notes = []
    if encoders:
        from .user_rows import add_user_entries

        user_notes = add_user_entries(collection, encoders, data_root=data_root, device=device, say=say)
    rows, inputs, skipped = [], [], []
    for group in collection.groups.values():
        result = None if group.regression else benchmark_group(group)
        if result is None:
            skipped.append(f"{group.key}: a regression target (float labels), not part of a retrieval / "
                           f"classification benchmark; skipped ({len(group.entries)} feature set(s)).")
            continue
        rows += result[0]
        inputs += result[1]
    if not rows:
        raise FileNotFoundError(f"the {profile} runs under {collection.runs_dir} stored features only for "
                                "regression data; nothing to benchmark")
    columns = list(KEY_COLUMNS) + [c for m in METRICS for c in (m, f"{m} 95% CI")] + list(TRAILING_COLUMNS)
    table = pd.DataFrame(_order(collection, rows), columns=columns)
    table[list(METRICS)] = table[list(METRICS)].round(3)
    title = "Common benchmark: every method on every data under one protocol"
    written = write_table_files(out, "benchmark", title, table, profile=profile,
                                notes=protocol_notes(collection, skipped) + user_notes + tie_notes(rows),
                                provenance={"inputs": "benchmark_inputs.json"})
    inputs_path = atomic_write_json(out / "benchmark_inputs.json", {"profile": profile, "inputs": inputs,
                                                                   **({"encoders": list(encoders)} if encoders else {})})
    title = f"Common benchmark — {profile} profile" + ("\nnot a reproduction" if profile == "smoke" else "")
    heatmap_path = out / "benchmark_heatmap.png"
    methods = [r["method"] for r in sorted(rows, key=lambda r: (r["paper"], r["_rank"]))]  # each paper's order
    frame = heatmap_frame(table, methods)
    figure = metric_heatmap(frame, None, title=title, metric_label="%")
    for label in figure.axes[0].get_xticklabels():  # data keys are long: slanted, they never overlap
        label.set(rotation=30, ha="right", rotation_mode="anchor")
    longest = max(len(str(c)) for c in frame.columns)  # ~0.07 in a character; room for the slanted labels
    width, height = figure.get_size_inches()
    figure.set_size_inches(width + 0.03 * longest, height + 0.035 * longest)
    save_figure(figure, heatmap_path)
    return {**written, "heatmap": heatmap_path, "inputs": inputs_path, "table": table}
