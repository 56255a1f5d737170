"""Stages 05 (evaluate) and 06 (ablations): run each protocol the recipe lists, write records, rebuild the tables.

Each protocol is a typed part of :mod:`histokit.evaluation.protocols` with ``run(ctx) -> records``; this stage only
loops over them and adds what every record gets (row keys, the weights used).
"""
from __future__ import annotations

import pandas as pd

from ..evaluation.protocols.records import with_row_keys, with_weights_used
from ..io import atomic_write_text, sha256_file
from ..results import build_table, merge_records, read_records, records_frame, write_table
from .context import StageContext


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
    protocols = ctx.recipe.evaluations if stage == "evaluate" else ctx.recipe.ablations
    new = []
    for protocol in protocols:
        new += with_weights_used(ctx, protocol, with_row_keys(ctx, protocol.run(ctx)))
    path = ctx.results_dir / "records.csv"
    merged = merge_records(read_records(path), records_frame(new))
    atomic_write_text(path, merged.to_csv(index=False))
    return write_tables(ctx)
