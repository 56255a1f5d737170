"""Kimia Path24C retrieval (Nuñez-Fernández et al. Tables 1-2): eta_p, eta_w, eta_tot, in the protocol a table
names — ``standard`` (every test patch queries the training patches; Babaie 2017, Shafiei 2021) or
``public_code`` (the ffnir notebook: test patches searched against themselves, one query per scan).

The eta functions return fractions; the records (what the tables render) are in percent, as the paper's tables:
:func:`eta_percent`."""
from __future__ import annotations

from ..evaluation.kimia import eta_public_code, eta_standard
from ..papers.recipe import EvalSpec
from .context import StageContext
from .eval_classification import row_labels
from .index import feature_parts

PROTOCOL_NOTES = {
    "standard": "Kimia standard protocol: test patches query the training patches, exact FAISS L2 top-1",
    "public_code": "ffnir public-code protocol: test patches indexed and searched against themselves, natural "
                   "file order within each scan, first patch of each scan as its query, search depth growing with "
                   "the scan index, hits counted by file name, FAISS L2",
}


def eta_percent(etas: dict) -> dict[str, float]:
    """The fractions of :mod:`histokit.evaluation.kimia` in percent: η_p from the counts (``100 * n_correct /
    n_queries``), η_w as ``100 * η_w``, η_tot = η_p · η_w / 100 — the same floats the functions returned when they
    computed percent themselves, so no table value moves."""
    eta_p = 100.0 * etas["n_correct"] / etas["n_queries"]
    eta_w = 100.0 * etas["eta_w"]
    return {"eta_p": eta_p, "eta_w": eta_w, "eta_tot": eta_p * eta_w / 100.0}


def query_image_paths(ctx: StageContext, dataset: str, test) -> list[str]:
    """The image path of every row of the test FeatureSet ``test`` (its ``indices`` into the test images)."""
    from .common import load_recipe_dataset

    images = load_recipe_dataset(ctx, dataset, test=bool(ctx.recipe.dataset(dataset).test_dataset))
    return [str(images.samples[int(i)].path) for i in test.indices]


def eval_kimia_eta(ctx: StageContext, spec: EvalSpec) -> list[dict]:
    protocol = spec.params.get("protocol", "standard")
    if protocol not in PROTOCOL_NOTES:
        raise ValueError(f"recipe {ctx.paper}: kimia_eta protocol must be one of {sorted(PROTOCOL_NOTES)}, "
                         f"got {protocol!r}")
    out = []
    for model in spec.models:
        for dataset in spec.datasets:
            parts = feature_parts(ctx, model, dataset)
            train, test = parts["train"], parts["test"]
            if protocol == "standard":
                etas = eta_standard(train.features, train.labels, test.features, test.labels, metric="l2")
            else:
                etas = eta_public_code(test.features, test.labels, test_paths=query_image_paths(ctx, dataset, test),
                                       metric="l2")
            shown = eta_percent(etas)
            for metric in ("eta_p", "eta_w", "eta_tot"):
                out.append({"table": spec.table, "model": model, "dataset": dataset, "metric": metric,
                            "value": float(shown[metric]), "n": len(test), "note": PROTOCOL_NOTES[protocol],
                            **row_labels(spec, model)})
    return out
