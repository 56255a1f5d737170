"""Kimia Path24C retrieval (Nuñez-Fernández et al. Tables 1-2): eta_p, eta_w, eta_tot, in the protocol a table
names — ``standard`` (every test patch queries the training patches; Babaie 2017, Shafiei 2021) or
``public_code`` (the ffnir notebook: test patches searched against themselves, one query per scan).

The eta functions return fractions; the records (what the tables render) are in percent, as the paper's tables:
:func:`eta_percent`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..kimia import eta_public_code, eta_standard
from .base import Protocol

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


def query_image_paths(ctx, dataset: str, test) -> list[str]:
    """The image path of every row of the test FeatureSet ``test`` (its ``indices`` into the test images)."""
    from ...stages.common import load_recipe_dataset

    images = load_recipe_dataset(ctx, dataset, test=bool(ctx.recipe.dataset(dataset).test_dataset))
    return [str(images.samples[int(i)].path) for i in test.indices]


@dataclass(frozen=True)
class KimiaEta(Protocol):
    protocol: str = "standard"             # one of PROTOCOL_NOTES
    rows: dict = field(default_factory=dict)

    kind: ClassVar[str] = "kimia_eta"
    words: ClassVar[str] = "the Kimia eta"

    def check(self, recipe) -> None:
        super().check(recipe)
        if self.protocol not in PROTOCOL_NOTES:
            raise ValueError(f"{recipe.paper}: {self.kind} evaluation of table {self.table!r}: protocol must be one "
                             f"of {sorted(PROTOCOL_NOTES)}, got {self.protocol!r}")

    def run(self, ctx) -> list[dict]:
        from ...stages.index import feature_parts

        out = []
        for model in self.models:
            for dataset in self.datasets:
                parts = feature_parts(ctx, model, dataset)
                train, test = parts["train"], parts["test"]
                if self.protocol == "standard":
                    etas = eta_standard(train.features, train.labels, test.features, test.labels, metric="l2")
                else:
                    etas = eta_public_code(test.features, test.labels, metric="l2",
                                           test_paths=query_image_paths(ctx, dataset, test))
                shown = eta_percent(etas)
                for metric in ("eta_p", "eta_w", "eta_tot"):
                    out.append({"table": self.table, "model": model, "dataset": dataset, "metric": metric,
                                "value": float(shown[metric]), "n": len(test), "note": PROTOCOL_NOTES[self.protocol],
                                **self.row_labels(model)})
        return out
