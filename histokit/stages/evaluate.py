"""Stages 05 (evaluate) and 06 (ablations): run each EvalSpec of the recipe, write records, rebuild the tables.

Each evaluation ``kind`` is one protocol; a new paper adds kinds here only when it brings a new protocol.
"""
from __future__ import annotations

import json
from typing import Callable

import numpy as np
import pandas as pd

from ..evaluation.stats import bootstrap_ci
from ..io import atomic_write_text, sha256_file
from ..papers.recipe import EvalSpec
from ..results import WEIGHTS_COLUMN, build_table, merge_records, read_records, records_frame, write_table
from ..retrieval.metrics import evaluate_retrieval
from .common import slug
from .eval_kimia import eval_kimia_eta
from .eval_classification import eval_classification_probes, eval_label_fraction, eval_resplit_knn
from .context import StageContext
from .index import gallery_and_queries

RETRIEVAL_COLUMNS = {"mAP@{k}": "AP@{k}", "Precision@{k}": "P@{k}", "nDCG@{k}": "nDCG@{k}"}


def _retrieval_records(ctx: StageContext, spec: EvalSpec, model: str, dataset: str, scheme=None, extra=None):
    p = spec.params
    k = p.get("k", 10)
    parts = gallery_and_queries(ctx, model, dataset, p.get("gallery", "train"), p.get("queries", "test"), scheme)
    base = {"table": spec.table, "model": model, "dataset": dataset, **spec.labels, **(extra or {}),
            **weights_as_run(ctx, spec, model, dataset)}
    if parts is None:
        return [dict(base, metric=col.format(k=k), value=np.nan, note="no group ids in this dataset")
                for col in RETRIEVAL_COLUMNS]
    gallery, queries = parts
    result = evaluate_retrieval(gallery.features, gallery.labels, queries.features, queries.labels, k=k,
                                ap_normalization=p.get("ap_normalization", "min_k_R"), device=ctx.device)
    records = []
    for column, per_query_key in RETRIEVAL_COLUMNS.items():
        values = result.per_query[per_query_key.format(k=k)] * 100.0
        low, high = bootstrap_ci(values, seed=ctx.seed)
        records.append(dict(base, metric=column.format(k=k), value=float(values.mean()), ci_low=low, ci_high=high,
                            n=len(values), note=f"AP normalisation {result.ap_normalization}"))
    if p.get("timing"):
        timing = json.loads(ctx.path("timing", slug(model), slug(dataset) + ".json").read_text())
        if "feature_extraction_batch_size" not in timing:  # written before batch-1 extraction was timed: its
            timing["feature_extraction_amortized_ms"] = timing.pop("feature_extraction_ms", None)  # was amortized
        for metric, batch in TIMING_COLUMNS.items():
            if timing.get(metric) is None:
                continue
            # device: the extraction device's model, which decides whether a Δ against the paper is printed
            records.append(dict(base, metric=metric, value=float(timing[metric]),
                                device=timing.get("device_name") or str(timing["device"]),
                                note=f"device {timing['device']}, {timing['precision']}, "
                                     f"batch {timing.get(batch, 1) if batch else 1}"))
    return records


# Timing columns of a retrieval table -> the timing field holding the batch it was measured at (None: batch 1).
TIMING_COLUMNS = {"feature_extraction_ms": "feature_extraction_batch_size", "retrieval_latency_ms": None,
                  "feature_extraction_amortized_ms": "extraction_batch_size"}


def weight_lineage(ctx: StageContext, spec: str, dataset: str) -> list[str]:
    """The weight sources that win, from a model row's weights back to the first initialisation, each as
    ``kind:name`` (``["train:esvit_finetune_CRC", "train:esvit_pretrain", "random"]``): a checkpoint counts when
    given, a training run when its encoder exists (as :func:`~histokit.stages.common.resolve_weights` picks)."""
    from ..papers.recipe import weight_sources
    from .common import trained_weights_path

    chain: list[str] = []
    while spec:
        won = None
        for kind, value in weight_sources(spec, dataset):
            if kind == "checkpoint" and not ctx.checkpoints.get(value):
                continue
            if kind == "train" and not trained_weights_path(ctx, value).exists():
                continue
            won = (kind, value)
            break
        if won is None:
            break
        chain.append(f"{won[0]}:{won[1]}" if won[1] else won[0])
        if won[0] != "train" or f"train:{won[1]}" in chain[:-1]:
            break
        run = ctx.recipe.train_spec(won[1])
        spec, dataset = run.init, run.dataset
    return chain


def weights_as_run(ctx: StageContext, spec: EvalSpec, model: str, dataset: str) -> dict:
    """Record fields naming the weights as used. ``spec.params["as_run"]`` maps a weight source (``"train:
    esvit_pretrain"``) to ``{"row_label": ..., "note": ...}``: when that source is in the row's
    :func:`weight_lineage` (the kit's own pretraining stood in for official weights), the table prints
    ``row_label`` for the row (its paper key still finds the paper's numbers) and ``note`` as a footnote."""
    rules = spec.params.get("as_run") or {}
    if not rules:
        return {}
    lineage = weight_lineage(ctx, ctx.recipe.model(model).weights, dataset)
    out: dict = {}
    for source, rule in rules.items():
        used = source in lineage and not out
        if rule.get("note"):  # a note an earlier run of this directory left stays only while it is true
            ctx.add_note(spec.table, rule["note"]) if used else ctx.replace_notes(spec.table, rule["note"])
        if used and rule.get("row_label"):
            out = {"row_label": rule["row_label"]}
    return out


def eval_retrieval(ctx: StageContext, spec: EvalSpec) -> list[dict]:
    return [r for m in spec.models for d in spec.datasets for r in _retrieval_records(ctx, spec, m, d)]


def eval_retrieval_split_variants(ctx: StageContext, spec: EvalSpec) -> list[dict]:
    """The paper's random 80/10/10 split beside a group-aware (patient / slide) split of the same data."""
    records = []
    for m in spec.models:
        for d in spec.datasets:
            records += _retrieval_records(ctx, spec, m, d, "random", {"split": "random 80/10/10 (paper)"})
            group = _retrieval_records(ctx, spec, m, d, "group", {"split": "group-aware 80/10/10"})
            if any(np.isnan(r["value"]) for r in group):
                ctx.add_note(spec.table, f"{d}: the data has no patient/slide ids, so no group-aware split exists; "
                                         "that row stays empty.")
            records += group
    return records


EVALUATIONS: dict[str, Callable[[StageContext, EvalSpec], list]] = {
    "retrieval": eval_retrieval,
    "retrieval_split_variants": eval_retrieval_split_variants,
    "classification_probes": eval_classification_probes,
    "label_fraction": eval_label_fraction,
    "resplit_knn": eval_resplit_knn,
    "kimia_eta": eval_kimia_eta,
}


def with_row_keys(ctx: StageContext, records: list[dict]) -> list[dict]:
    """A table keyed by ``method`` (Ye et al.) takes the model's row label when the recipe gives no other."""
    for rec in records:
        for key in ctx.recipe.table(rec["table"]).keys:
            if key not in rec and key == "method":
                rec[key] = rec["model"]
            if key not in rec:
                raise ValueError(f"recipe {ctx.paper}: table {rec['table']!r} is keyed by {key!r} but the "
                                 f"evaluation of {rec['model']!r} gives no such label (EvalSpec labels / rows)")
    return records


def weights_used(ctx: StageContext, model: str, dataset: str) -> str:
    """The weights (model, dataset)'s numbers were computed with, in words (resolve_weights' ``source``): the feature
    sidecar's ``weights``, written when the features were extracted; else a label-fraction result's (the weights
    its fine-tuning started from); "" when neither exists."""
    from ..sidecars import check_sidecar
    from .index import RERUN, feature_path

    features = feature_path(ctx, model, dataset)
    candidates = [features.with_suffix(".json")]
    candidates += sorted(ctx.path("label_fraction", slug(model), slug(dataset)).glob("*.json"))
    for path in candidates:
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(meta, dict):
            continue
        if path == candidates[0]:  # the feature sidecar must be (model, dataset)'s, or its weights are another's
            check_sidecar(path, {"model": model, "dataset": dataset}, meta=meta,
                          what=f"the features of {model!r} on {dataset!r}", remedy=RERUN.format(path=features))
        if meta.get("weights"):
            return str(meta["weights"])
    return ""


def with_weights_used(ctx: StageContext, spec: EvalSpec, records: list[dict]) -> list[dict]:
    """Each record gets ``weights used`` (:data:`histokit.results.WEIGHTS_COLUMN`): the weights its model row was
    computed with, as used — a random initialisation that stood in for unreachable ImageNet weights, weights
    trained here on the bundled tiles — so the table row says so itself, beside the paper's label. A record whose
    ``model`` is a row label (EvalSpec labels / rows) is traced back to the recipe model that produced it."""
    from .eval_classification import row_labels

    by_label: dict = {}
    for m in spec.models:
        by_label.setdefault(str(row_labels(spec, m).get("model", m)), []).append(m)
    for rec in records:
        if rec.get(WEIGHTS_COLUMN):
            continue
        model = rec["model"] if rec["model"] in spec.models else None
        if model is None and len(by_label.get(str(rec["model"]), [])) == 1:
            model = by_label[str(rec["model"])][0]
        if model is not None:
            rec[WEIGHTS_COLUMN] = weights_used(ctx, model, rec["dataset"])
    return records


def write_tables(ctx: StageContext) -> dict[str, pd.DataFrame]:
    path = ctx.results_dir / "records.csv"
    records = read_records(path)
    notes = ctx.notes()
    # which records the tables were built from: a table whose records.csv changed since is stale
    provenance = {"records": path.name, "records_sha256": sha256_file(path)} if path.is_file() else {}
    tables = {}
    for spec in ctx.recipe.tables:
        if len(records) == 0 or spec.id not in set(records["table"]):
            continue
        table = build_table(spec, records)
        write_table(spec, table, ctx.results_dir, profile=ctx.label, paper_title=ctx.recipe.title,
                    notes=notes.get("all", []) + notes.get(spec.id, []), provenance=provenance)
        tables[spec.id] = table
    return tables


def run(ctx: StageContext, stage: str = "evaluate") -> dict[str, pd.DataFrame]:
    specs = ctx.recipe.evaluations if stage == "evaluate" else ctx.recipe.ablations
    new = []
    for spec in specs:
        if spec.kind not in EVALUATIONS:
            raise ValueError(f"recipe {ctx.paper}: unknown evaluation kind {spec.kind!r}; "
                             f"known: {sorted(EVALUATIONS)}")
        new += with_weights_used(ctx, spec, with_row_keys(ctx, EVALUATIONS[spec.kind](ctx, spec)))
    path = ctx.results_dir / "records.csv"
    merged = merge_records(read_records(path), records_frame(new))
    atomic_write_text(path, merged.to_csv(index=False))
    return write_tables(ctx)
