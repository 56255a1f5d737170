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

from .io import atomic_write_text
from .papers.recipe import TableSpec

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


def format_cell(value, digits: int = 2) -> str:
    """The one cell formatter of every rendered table (the ``.md`` files and the notebooks' HTML): text as it is
    (``"not run"``), a missing value as ``—``, a number with ``digits`` decimals (3 below 1; scientific notation
    below 1e-3, so a p-value such as 9.759e-05 never prints as 0.000)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, str):
        return value
    if value != 0 and abs(value) < 1e-3:  # p-values such as 9.759e-05 must not print as 0.000
        return f"{value:.3e}"
    return f"{value:.{digits if abs(value) >= 1 else 3}f}"


_fmt = format_cell  # the name build_table and older callers use


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
                if len(hit) and "ci_low" in hit and pd.notna(hit["ci_low"].iloc[0]):
                    entry[f"{metric} 95% CI"] = (f"[{format_cell(float(hit['ci_low'].iloc[0]))}, "
                                                  f"{format_cell(float(hit['ci_high'].iloc[0]))}]")
                continue
            paper_value = float(paper.loc[p_mask, metric].iloc[0]) if p_mask.any() and metric in paper else None
            if paper_value is not None and math.isnan(paper_value):
                paper_value = None
            if value is None and paper_value is None and p_mask.any() and row[0] not in blocked:
                value_cell = None  # the paper has no such cell either (e.g. a p-value without a comparison arm)
            else:
                value_cell = value if value is not None else blocked.get(row[0], NOT_RUN)
            entry[metric] = value_cell
            if len(hit) and "ci_low" in hit and pd.notna(hit["ci_low"].iloc[0]):
                entry[f"{metric} 95% CI"] = (f"[{format_cell(float(hit['ci_low'].iloc[0]))}, "
                                              f"{format_cell(float(hit['ci_high'].iloc[0]))}]")
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


def same_device(measured: str, paper: str) -> bool:
    """Whether a measurement's device (``"NVIDIA A100-SXM4-80GB"``, ``"cpu"``) is of the class the paper names
    (``"NVIDIA A100"``); False when the paper names none."""
    want, have = (str(t).casefold().replace("-", " ").split() for t in (paper, measured))
    return bool(want) and any(have[i:i + len(want)] == want for i in range(len(have) - len(want) + 1))


def formatted_rows(df: pd.DataFrame) -> list[list[str]]:
    """Every cell of ``df`` through :func:`format_cell`, row by row: what the ``.md`` and the HTML both show."""
    return [[format_cell(row[c]) for c in df.columns] for _, row in df.iterrows()]


def to_markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in formatted_rows(df)]
    return "\n".join(lines)


# The banner that heads a table of a profile that is not a reproduction: (headline, text), the same sentence in the
# .md (``> **headline** text``) and in a notebook's HTML.
PROFILE_BANNERS = {
    "smoke": ("Smoke profile: not a reproduction.",
              "Tiny bundled data, small images, few epochs on CPU. "
              "The paper's numbers are shown for layout only; the differences measure nothing yet."),
    "rehearsal": ("Rehearsal of the full profile: not a reproduction.",
                  "The paper's recipe at full size with the "
                  "optimisation steps and the images per class capped, on the data named in the notes (mock data "
                  "unless stated otherwise). It shows every cell can be computed; the numbers measure nothing."),
}
# Where write_table leaves a table's title, profile and footnotes on the frame (``DataFrame.attrs``), so a notebook
# shows the table as the .md does: histokit.stages.display.show_tables.
TABLE_META = "histokit.table"


def table_footnotes(spec: TableSpec, table: pd.DataFrame, notes: Iterable[str] = ()) -> list[str]:
    """The table's numbered footnotes, in order: the spec's, the run's notes, the not-reproducible rows, 'not run'."""
    foot = list(spec.all_footnotes) + [n for n in notes if n not in spec.all_footnotes]
    foot += [f"'{NOT_REPRODUCIBLE}' ({label}): {why}" for label, why in spec.not_reproducible]
    if NOT_RUN in table.astype(str).values:
        foot.append(f"'{NOT_RUN}': this profile did not measure that row; the paper's value is shown beside it, "
                    "never in its place.")
    return foot


def table_meta(spec: TableSpec, table: pd.DataFrame, *, profile: str, notes: Iterable[str] = (),
               paper_title: str = "") -> dict:
    """What a rendered table shows around its cells: title, paper title, profile and footnotes."""
    return {"id": spec.id, "title": spec.title, "paper_title": paper_title, "profile": profile,
            "footnotes": table_footnotes(spec, table, notes)}


def render_markdown(table: pd.DataFrame, meta: dict) -> str:
    """The ``.md`` document: title, paper title and profile, the profile banner, the table, numbered footnotes."""
    parts = [f"# {meta['title']}", ""]
    if meta.get("paper_title"):
        parts += [f"*{meta['paper_title']}* — profile `{meta['profile']}`", ""]
    if meta.get("profile") in PROFILE_BANNERS:
        headline, text = PROFILE_BANNERS[meta["profile"]]
        parts += [f"> **{headline}** {text}", ""]
    parts += [to_markdown(table), ""]
    parts += [f"{i}. {n}" for i, n in enumerate(meta.get("footnotes", ()), 1)]
    return "\n".join(parts) + "\n"


def write_table(spec: TableSpec, table: pd.DataFrame, out_dir: Path, *, profile: str,
                notes: Iterable[str] = (), paper_title: str = "") -> tuple[Path, Path]:
    """``<id>.csv`` (machine-readable) and ``<id>.md`` (title, profile banner, table, footnotes), atomically.

    The title, profile and footnotes are also left on ``table.attrs[TABLE_META]``, so that a notebook shows the
    frame with the same banner and footnotes (:func:`histokit.stages.display.show_tables`)."""
    out_dir = Path(out_dir)
    csv_path = atomic_write_text(out_dir / f"{spec.id}.csv", table.to_csv(index=False))
    meta = table_meta(spec, table, profile=profile, notes=notes, paper_title=paper_title)
    md_path = atomic_write_text(out_dir / f"{spec.id}.md", render_markdown(table, meta))
    table.attrs[TABLE_META] = meta
    return csv_path, md_path


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
