"""Tables in each paper's format: the reproduced number, the paper's number and the difference, side by side.

Evaluations write *records* (one per model x dataset x metric, with the protocol). A table is built from the
records and the paper's transcribed CSV (``histokit/papers/paper_tables``): paper rows in the paper's order, a
reproduced value only where this run measured one (never the paper's value), the difference, and footnotes
stating the protocol and every deviation.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Optional

import pandas as pd

from .papers.recipe import TableSpec
from .tables import format_cell, table_document, write_table_artifact

PAPER_TABLES_DIR = Path(__file__).resolve().parent / "papers" / "paper_tables"
NOT_RUN = "not run"
NOT_REPRODUCIBLE = "not reproducible"
# The weights a row was computed with, as used (histokit.stages.common.resolve_weights: "ImageNet weights from the
# local cache", "random init: ImageNet weights unreachable", "trained here on 80 bundled Kather 2016 tiles ..."). A
# record carries it; a table shows it in its own column after the key columns, never as a key: the join with the
# paper's numbers stays on the paper's labels.
WEIGHTS_COLUMN = "weights used"


def paper_table(spec: TableSpec) -> pd.DataFrame:
    if not spec.paper_csv:
        return pd.DataFrame(columns=list(spec.keys) + list(spec.metrics))
    # keep_default_na=False: a key such as "None" (Habijan et al. Table II) is a label, not a missing value.
    return pd.read_csv(PAPER_TABLES_DIR / spec.paper_csv, dtype={k: str for k in spec.keys},
                       keep_default_na=False, na_values=[""])


def build_table(spec: TableSpec, records: pd.DataFrame) -> pd.DataFrame:
    """One row per paper row (paper order) plus rows measured here that the paper lacks (e.g. split variants).

    Columns: the key columns, ``weights used`` where the records say which weights each row was computed with
    (:data:`WEIGHTS_COLUMN`, not a key: every distinct text of the row's records, joined by "; "), then per metric
    ``<m>`` (reproduced), ``<m> 95% CI`` where bootstrapped, ``<m> (paper)`` and ``<m> Δ`` (reproduced - paper).

    A record's ``row_label`` (the weights as used, e.g. the kit's own pretraining in place of official weights) is
    printed in the row's first key column; the row still takes the paper's numbers by its keys. A record measured on
    a device (``device``: timings) gets no Δ unless the table's ``paper_device`` names that device class: a time on
    other hardware is shown beside the paper's, never subtracted from it.
    """
    paper = paper_table(spec)
    keys = list(spec.keys)
    recs = records[records["table"] == spec.id] if len(records) else records
    measured_rows = recs[keys].drop_duplicates() if len(recs) else pd.DataFrame(columns=keys)
    rows = [tuple(r) for r in paper[keys].astype(str).itertuples(index=False)]
    rows += [tuple(r) for r in measured_rows.astype(str).itertuples(index=False) if tuple(r) not in rows]
    blocked = {label: NOT_REPRODUCIBLE for label, _ in spec.not_reproducible}
    out = []
    for row in rows:
        entry = dict(zip(keys, row))
        mask = pd.Series(True, index=recs.index)
        for k, v in entry.items():
            mask &= recs[k].astype(str) == v
        p_mask = pd.Series(True, index=paper.index)
        for k, v in entry.items():
            p_mask &= paper[k].astype(str) == v
        if WEIGHTS_COLUMN in recs:
            used = [w for w in dict.fromkeys(recs.loc[mask, WEIGHTS_COLUMN].dropna().astype(str)) if w.strip()]
            entry[WEIGHTS_COLUMN] = "; ".join(used)
        labels = recs.loc[mask, "row_label"].dropna().astype(str) if "row_label" in recs else pd.Series([], dtype=str)
        labels = labels[labels != ""]
        for metric in spec.metrics:
            hit = recs[mask & (recs["metric"] == metric)]
            value = float(hit["value"].iloc[0]) if len(hit) else None
            if metric in spec.extra_metrics:  # a kit-only column: no paper value, no difference to show
                entry[metric] = value
                entry.update(_interval(metric, hit))
                continue
            paper_value = float(paper.loc[p_mask, metric].iloc[0]) if p_mask.any() and metric in paper else None
            if paper_value is not None and math.isnan(paper_value):
                paper_value = None
            if value is None and paper_value is None and p_mask.any() and row[0] not in blocked:
                value_cell = None  # the paper has no such cell either (e.g. a p-value without a comparison arm)
            else:
                value_cell = value if value is not None else blocked.get(row[0], NOT_RUN)
            entry[metric] = value_cell
            entry.update(_interval(metric, hit))
            entry[f"{metric} (paper)"] = paper_value
            comparable = value is not None and paper_value is not None
            if comparable and "device" in hit and pd.notna(hit["device"].iloc[0]) and str(hit["device"].iloc[0]):
                comparable = same_device(str(hit["device"].iloc[0]), spec.paper_device)
            entry[f"{metric} Δ"] = (value - paper_value) if comparable else None
        if len(labels):
            entry[keys[0]] = labels.iloc[0]
        out.append(entry)
    columns = list(keys) + ([WEIGHTS_COLUMN] if any(e.get(WEIGHTS_COLUMN) for e in out) else [])
    for metric in spec.metrics:
        columns += [c for c in (metric, f"{metric} 95% CI", f"{metric} (paper)", f"{metric} Δ")
                    if any(c in e for e in out)]
    return pd.DataFrame(out, columns=columns)


def _interval(metric: str, hit: pd.DataFrame) -> dict:
    """``{"<metric> 95% CI": "[low, high]"}`` where the record was bootstrapped, else {}."""
    if not (len(hit) and "ci_low" in hit and pd.notna(hit["ci_low"].iloc[0])):
        return {}
    low, high = (format_cell(float(hit[c].iloc[0])) for c in ("ci_low", "ci_high"))
    return {f"{metric} 95% CI": f"[{low}, {high}]"}


def same_device(measured: str, paper: str) -> bool:
    """Whether a measurement's device (``"NVIDIA A100-SXM4-80GB"``, ``"cpu"``) is of the class the paper names
    (``"NVIDIA A100"``); False when the paper names none."""
    want, have = (str(t).casefold().replace("-", " ").split() for t in (paper, measured))
    return bool(want) and any(have[i:i + len(want)] == want for i in range(len(have) - len(want) + 1))


# Where write_table leaves the table's artifact document (:mod:`histokit.tables`) on the frame
# (``DataFrame.attrs``), so a notebook shows the table as the .md does: histokit.stages.display.show_tables.
TABLE_META = "histokit.table"


def table_footnotes(spec: TableSpec, table: pd.DataFrame, notes: Iterable[str] = ()) -> list[str]:
    """The table's numbered footnotes, in order: the spec's, the run's notes, the not-reproducible rows, 'not run'."""
    foot = list(spec.all_footnotes) + [n for n in notes if n not in spec.all_footnotes]
    foot += [f"'{NOT_REPRODUCIBLE}' ({label}): {why}" for label, why in spec.not_reproducible]
    if NOT_RUN in table.astype(str).values:
        foot.append(f"'{NOT_RUN}': this profile did not measure that row; the paper's value is shown beside it, "
                    "never in its place.")
    return foot


def write_table(spec: TableSpec, table: pd.DataFrame, out_dir: Path, *, profile: str,
                notes: Iterable[str] = (), paper_title: str = "", provenance: Optional[dict] = None) -> dict:
    """``<id>.json`` (the artifact: spec, rows, footnotes, provenance), and ``<id>.csv`` and ``<id>.md`` rendered
    from it (:mod:`histokit.tables`), atomically; their paths by suffix (``"json"``, ``"csv"``, ``"md"``).

    The document is also left on ``table.attrs[TABLE_META]``, so that a notebook shows the frame with the same
    banner and footnotes (:func:`histokit.stages.display.show_tables`)."""
    doc = table_document(table, id=spec.id, title=spec.title, profile=profile, paper_title=paper_title,
                         footnotes=table_footnotes(spec, table, notes), spec=spec, provenance=provenance)
    paths = write_table_artifact(doc, out_dir)
    table.attrs[TABLE_META] = doc
    return paths


def records_frame(records: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(records) if records else pd.DataFrame(columns=["table", "metric", "value"])


def read_records(path: Path) -> pd.DataFrame:
    if not Path(path).exists():
        return records_frame([])
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    return frame.astype({c: float for c in ("value", "ci_low", "ci_high") if c in frame})


def merge_records(old: pd.DataFrame, new: pd.DataFrame, keys: Optional[list] = None) -> pd.DataFrame:
    """New records replace old ones with the same table, keys and metric (a re-run stage updates its rows)."""
    if not len(old):
        return new
    both = pd.concat([old, new], ignore_index=True)
    # row_label / device describe a measurement (which weights, which hardware), not which cell it fills
    ident = [c for c in (keys or both.columns)
             if c not in ("value", "ci_low", "ci_high", "n", "note", "row_label", "device")]
    ident = [c for c in ident if c != WEIGHTS_COLUMN]  # which weights: how a cell was measured, not which cell
    return both.drop_duplicates(subset=ident, keep="last").reset_index(drop=True)
