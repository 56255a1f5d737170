"""Record fields every protocol shares: a record's confidence interval, the weights a row was computed with (as
used, and as the paper names them), the key columns a table needs."""
from __future__ import annotations

import json

from ..stats import bootstrap_ci


def percent(fraction):
    """A fraction (a float or an array of per-item values) as the percent a table shows: ``100.0 * fraction``."""
    return 100.0 * fraction


def record(spec, model, dataset, column, value, *, per_item=None, note="", seed=0, **extra) -> dict:
    """One record of ``spec``'s table; with ``per_item`` values (>= 2) their 95 % bootstrap interval and count."""
    rec = {"table": spec.table, "model": model, "dataset": dataset, "metric": column, "value": float(value),
           "note": note, **extra}
    if per_item is not None and len(per_item) >= 2:
        rec["ci_low"], rec["ci_high"] = bootstrap_ci(per_item, seed=seed)
        rec["n"] = len(per_item)
    return rec


def weight_lineage(ctx, spec: str, dataset: str) -> list[str]:
    """The weight sources that win, from a model row's weights back to the first initialisation, each as
    ``kind:name`` (``["train:esvit_finetune_CRC", "train:esvit_pretrain", "random"]``): a checkpoint counts when
    given, a training run when its encoder exists (as :func:`~histokit.stages.common.resolve_weights` picks)."""
    from ...papers.recipe import weight_sources
    from ...stages.common import trained_weights_path

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


def weights_as_run(ctx, spec, model: str, dataset: str) -> dict:
    """Record fields naming the weights as used. ``spec.as_run`` maps a weight source (``"train:esvit_pretrain"``)
    to ``{"row_label": ..., "note": ...}``: when that source is in the row's :func:`weight_lineage` (the kit's own
    pretraining stood in for official weights), the table prints ``row_label`` for the row (its paper key still
    finds the paper's numbers) and ``note`` as a footnote."""
    rules = spec.as_run or {}
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


def with_row_keys(ctx, records: list[dict]) -> list[dict]:
    """A table keyed by ``method`` (Ye et al.) takes the model's row label when the recipe gives no other."""
    for rec in records:
        for key in ctx.recipe.table(rec["table"]).keys:
            if key not in rec and key == "method":
                rec[key] = rec["model"]
            if key not in rec:
                raise ValueError(f"recipe {ctx.paper}: table {rec['table']!r} is keyed by {key!r} but the "
                                 f"evaluation of {rec['model']!r} gives no such label (protocol labels / rows)")
    return records


def weights_used(ctx, model: str, dataset: str) -> str:
    """The weights (model, dataset)'s numbers were computed with, in words (resolve_weights' ``source``): the feature
    sidecar's ``weights``, written when the features were extracted; else a label-fraction result's (the weights
    its fine-tuning started from); "" when neither exists."""
    from ...sidecars import check_sidecar
    from ...stages.common import slug
    from ...stages.index import RERUN, feature_path

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


def with_weights_used(ctx, spec, records: list[dict]) -> list[dict]:
    """Each record gets ``weights used`` (:data:`histokit.results.WEIGHTS_COLUMN`): the weights its model row was
    computed with, as used — a random initialisation that stood in for unreachable ImageNet weights, weights
    trained here on the bundled tiles — so the table row says so itself, beside the paper's label. A record whose
    ``model`` is a row label (protocol labels / rows) is traced back to the recipe model that produced it."""
    from ...results import WEIGHTS_COLUMN

    by_label: dict = {}
    for m in spec.models:
        by_label.setdefault(str(spec.row_labels(m).get("model", m)), []).append(m)
    for rec in records:
        if rec.get(WEIGHTS_COLUMN):
            continue
        model = rec["model"] if rec["model"] in spec.models else None
        if model is None and len(by_label.get(str(rec["model"]), [])) == 1:
            model = by_label[str(rec["model"])][0]
        if model is not None:
            rec[WEIGHTS_COLUMN] = weights_used(ctx, model, rec["dataset"])
    return records
