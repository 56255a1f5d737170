"""Retrieval on frozen features (Habijan et al. Tables 1-2): queries search a gallery, mAP@k / P@k / nDCG@k with a
bootstrap interval, and the extraction / search timings where the paper reports them."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ...retrieval.metrics import AP_NORMALIZATIONS, evaluate_retrieval
from ..stats import bootstrap_ci
from .base import Protocol
from .records import weights_as_run

RETRIEVAL_COLUMNS = {"mAP@{k}": "AP@{k}", "Precision@{k}": "P@{k}", "nDCG@{k}": "nDCG@{k}"}
# Timing columns of a retrieval table -> the timing field holding the batch it was measured at (None: batch 1).
TIMING_COLUMNS = {"feature_extraction_ms": "feature_extraction_batch_size", "retrieval_latency_ms": None,
                  "feature_extraction_amortized_ms": "extraction_batch_size"}
SPLIT_PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Retrieval(Protocol):
    k: int = 10
    gallery: str = "train"                 # the split part searched
    queries: str = "test"                  # the split part that queries it
    ap_normalization: str = "min_k_R"      # histokit.retrieval.metrics.AP_NORMALIZATIONS
    timing: bool = False                   # also report stage 04's extraction and search timings

    kind: ClassVar[str] = "retrieval"
    words: ClassVar[str] = "retrieval (mAP@k / P@k / nDCG@k, timings where the paper reports them)"

    def check(self, recipe) -> None:
        super().check(recipe)
        where = f"{recipe.paper}: {self.kind} evaluation of table {self.table!r}"
        if self.ap_normalization not in AP_NORMALIZATIONS:
            raise ValueError(f"{where}: ap_normalization must be one of {AP_NORMALIZATIONS}, "
                             f"got {self.ap_normalization!r}")
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"{where}: k must be a positive integer, got {self.k!r}")
        for name in ("gallery", "queries"):
            if getattr(self, name) not in SPLIT_PARTS:
                raise ValueError(f"{where}: {name} must be one of {SPLIT_PARTS}, got {getattr(self, name)!r}")

    def run(self, ctx) -> list[dict]:
        return [r for m in self.models for d in self.datasets for r in self.records(ctx, m, d)]

    def records(self, ctx, model: str, dataset: str, scheme=None, extra=None) -> list[dict]:
        from ...stages.common import slug
        from ...retrieval.scale import approximate_note
        from ...stages.index import exact_index_max, gallery_and_queries

        k = self.k
        parts = gallery_and_queries(ctx, model, dataset, self.gallery, self.queries, scheme)
        base = {"table": self.table, "model": model, "dataset": dataset, **self.labels, **(extra or {}),
                **weights_as_run(ctx, self, model, dataset)}
        if parts is None:
            return [dict(base, metric=col.format(k=k), value=np.nan, note="no group ids in this dataset")
                    for col in RETRIEVAL_COLUMNS]
        gallery, queries = parts
        result = evaluate_retrieval(gallery.features, gallery.labels, queries.features, queries.labels, k=k,
                                    ap_normalization=self.ap_normalization, device=ctx.device,
                                    exact_max=exact_index_max(ctx))
        if result.approximate:  # above the exact-search limit: the table says what the IVF index's recall cost
            ctx.add_note(self.table, f"{model} on {dataset}: " + approximate_note(result.approximate) + ".")
        records = []
        for column, per_query_key in RETRIEVAL_COLUMNS.items():
            values = result.per_query[per_query_key.format(k=k)] * 100.0
            low, high = bootstrap_ci(values, seed=ctx.seed)
            records.append(dict(base, metric=column.format(k=k), value=float(values.mean()), ci_low=low,
                                ci_high=high, n=len(values), note=f"AP normalisation {result.ap_normalization}"))
        if self.timing:
            timing = json.loads(ctx.path("timing", slug(model), slug(dataset) + ".json").read_text())
            if "feature_extraction_batch_size" not in timing:  # written before batch-1 extraction was timed: its
                timing["feature_extraction_amortized_ms"] = timing.pop("feature_extraction_ms", None)  # amortized
            for metric, batch in TIMING_COLUMNS.items():
                if timing.get(metric) is None:
                    continue
                # device: the extraction device's model, which decides whether a Δ against the paper is printed
                records.append(dict(base, metric=metric, value=float(timing[metric]),
                                    device=timing.get("device_name") or str(timing["device"]),
                                    note=f"device {timing['device']}, {timing['precision']}, "
                                         f"batch {timing.get(batch, 1) if batch else 1}"))
        return records


@dataclass(frozen=True)
class RetrievalSplitVariants(Retrieval):
    """The paper's random 80/10/10 split beside a group-aware (patient / slide) split of the same data."""
    kind: ClassVar[str] = "retrieval_split_variants"
    words: ClassVar[str] = "retrieval under the random and the group-aware split"

    def run(self, ctx) -> list[dict]:
        records = []
        for m in self.models:
            for d in self.datasets:
                records += self.records(ctx, m, d, "random", {"split": "random 80/10/10 (paper)"})
                group = self.records(ctx, m, d, "group", {"split": "group-aware 80/10/10"})
                if any(np.isnan(r["value"]) for r in group):
                    ctx.add_note(self.table, f"{d}: the data has no patient/slide ids, so no group-aware split "
                                             "exists; that row stays empty.")
                records += group
        return records
