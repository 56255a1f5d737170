"""``histokit reproduce --verify``: compare a fresh run's published tables with the ones it replaced, cell by cell.

The reference is what lay at ``results/<paper>/<profile>/`` when the command started, read into memory before any
stage ran (:func:`snapshot_tables`): in a fresh clone, the committed tables (``git status results/`` says whether
they still are). After the run publishes, :func:`compare_tables` names every cell that differs: table, row (its key
columns), column, the committed value and the new one. Numbers are compared as numbers (``70`` = ``70.0``; NaN =
NaN), everything else as text, exactly: a reproduction on the same machine, thread count and packages gives the
same bytes.

Not compared, because they measure the machine rather than the method:

- ``timing.csv`` (device, batch sizes and latencies of the timing runs), every table;
- in any other table, a column whose name says it is a timing or a device (:data:`TIMING_COLUMN`: ``ms`` as a word
  or unit, ``seconds``, ``latency``, ``timing``, ``duration``, ``throughput``, ``device``, ``backend``), e.g.
  ``feature_extraction_ms``, ``retrieval_latency_ms (paper)`` and their ``Δ`` columns;
- in ``records.csv`` (one row per number), a row whose ``metric`` is such a name.
"""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

EXCLUDED_TABLES = ("timing.csv",)
TIMING_COLUMN = re.compile(r"(^|[^a-z])ms([^a-z]|$)|seconds|latency|timing|duration|throughput|device|backend",
                           re.IGNORECASE)
EXCLUDED_DESCRIPTION = ("timing.csv; columns (and records.csv metrics) naming ms, seconds, latency, timing, "
                        "duration, throughput, device or backend")


@dataclass(frozen=True)
class CellDifference:
    table: str
    row: str
    column: str
    committed: Optional[str]   # None: the row or column is not in the committed table
    new: Optional[str]         # None: not in the new table

    def __str__(self) -> str:
        show = lambda v: "(absent)" if v is None else repr(v)  # noqa: E731
        return f"{self.table}  row {self.row}  column {self.column!r}: committed {show(self.committed)}, " \
               f"new {show(self.new)}"


Table = tuple[list[str], list[list[str]]]  # header, rows


def excluded_column(name: str) -> bool:
    return bool(TIMING_COLUMN.search(name))


def snapshot_tables(folder: Path) -> dict[str, Table]:
    """Every ``*.csv`` table directly in ``folder`` (a publication), read as text; {} when there is none."""
    folder = Path(folder)
    tables: dict[str, Table] = {}
    if not folder.is_dir():
        return tables
    for path in sorted(folder.glob("*.csv")):
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        tables[path.name] = (rows[0] if rows else [], rows[1:])
    return tables


def read_run_json(folder: Path) -> Optional[dict]:
    """A publication's ``run.json`` (None when missing or unreadable)."""
    import json

    try:
        return json.loads((Path(folder) / "run.json").read_text())
    except (OSError, ValueError):
        return None


def verify_publication(paper: str, committed: dict[str, Table], committed_run: Optional[dict], folder: Path,
                       say=print) -> int:
    """Compare the publication now at ``folder`` with the snapshot taken before the run; print every differing
    cell; 0 when none differs, 1 otherwise (also when there was nothing to compare with)."""
    if not committed:
        say(f"histokit: --verify {paper}: no committed tables were at {folder} before the run: nothing to verify "
            "against")
        return 1
    diffs = compare_tables(committed, snapshot_tables(folder))
    if not diffs:
        n = sum(name not in EXCLUDED_TABLES for name in committed)
        say(f"[histokit] verify {paper}: every cell of {n} tables matches the committed ones "
            f"(not compared: {EXCLUDED_DESCRIPTION})")
        return 0
    say(f"histokit: verify {paper}: {len(diffs)} cells differ from the committed tables (not compared: "
        f"{EXCLUDED_DESCRIPTION}):")
    for d in diffs:
        say(f"  {d}")
    for line in provenance_lines(committed_run, read_run_json(folder)):
        say(f"  note: {line}")
    return 1


def _number(text: str) -> Optional[float]:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def same_cell(a: str, b: str) -> bool:
    if a == b:
        return True
    x, y = _number(a), _number(b)
    if x is None or y is None:
        return False
    return x == y or (math.isnan(x) and math.isnan(y))


def _key_columns(header: list[str], rows: list[list[str]]) -> list[int]:
    """The leading columns that name a row: up to the first one holding a number (at least the first column)."""
    keys = []
    for i, _ in enumerate(header):
        if any(_number(r[i]) is not None for r in rows if i < len(r) and r[i] != ""):
            break
        keys.append(i)
    return keys or [0]


def _row_names(header: list[str], rows: list[list[str]], keys: list[int]) -> list[str]:
    """A name for each row, unique within the table: its key cells (and ``#n`` for a repeated key)."""
    names, seen = [], {}
    for r in rows:
        base = " / ".join(r[i] if i < len(r) else "" for i in keys) or "(empty)"
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base} #{seen[base]}")
    return names


def compare_table(name: str, committed: Table, new: Table) -> list[CellDifference]:
    (old_header, old_rows), (new_header, new_rows) = committed, new
    metric_col = "metric" if name == "records.csv" else None
    keys = _key_columns(old_header, old_rows) if old_rows else _key_columns(new_header, new_rows)
    key_names = [old_header[i] for i in keys if i < len(old_header)]
    new_keys = [new_header.index(k) for k in key_names if k in new_header] or [0]
    old_named = dict(zip(_row_names(old_header, old_rows, keys), old_rows))
    new_named = dict(zip(_row_names(new_header, new_rows, new_keys), new_rows))
    out: list[CellDifference] = []

    def cell(header, row, column):
        i = header.index(column)
        return row[i] if i < len(row) else ""

    def timing_row(header, row) -> bool:
        return metric_col in header and excluded_column(cell(header, row, metric_col))

    columns = [c for c in old_header if not excluded_column(c)]
    columns += [c for c in new_header if c not in old_header and not excluded_column(c)]
    for column in columns:
        if column not in new_header:
            out.append(CellDifference(name, "(every row)", column, "(column)", None))
        elif column not in old_header:
            out.append(CellDifference(name, "(every row)", column, None, "(column)"))
    shared = [c for c in columns if c in old_header and c in new_header]
    for row_name, old_row in old_named.items():
        if timing_row(old_header, old_row):
            continue
        new_row = new_named.get(row_name)
        if new_row is None:
            out.append(CellDifference(name, row_name, "(whole row)", ",".join(old_row), None))
            continue
        for column in shared:
            a, b = cell(old_header, old_row, column), cell(new_header, new_row, column)
            if not same_cell(a, b):
                out.append(CellDifference(name, row_name, column, a, b))
    for row_name, new_row in new_named.items():
        if row_name not in old_named and not timing_row(new_header, new_row):
            out.append(CellDifference(name, row_name, "(whole row)", None, ",".join(new_row)))
    return out


def compare_tables(committed: dict[str, Table], new: dict[str, Table]) -> list[CellDifference]:
    """Every differing cell of the tables (timings excluded, see the module docstring), table by table."""
    out: list[CellDifference] = []
    for name in sorted(set(committed) | set(new)):
        if name in EXCLUDED_TABLES:
            continue
        if name not in new:
            out.append(CellDifference(name, "(whole table)", "", "(table)", None))
        elif name not in committed:
            out.append(CellDifference(name, "(whole table)", "", None, "(table)"))
        else:
            out.extend(compare_table(name, committed[name], new[name]))
    return out


def provenance_lines(committed_run: Optional[dict], new_run: Optional[dict]) -> list[str]:
    """What differs between the two publications' ``run.json`` (commit, packages, threads, platform): where a
    reader looks first when cells differ."""
    if not committed_run or not new_run:
        return []
    lines = []
    old_git, new_git = committed_run.get("git") or {}, new_run.get("git") or {}
    if (old_git.get("commit"), old_git.get("dirty")) != (new_git.get("commit"), new_git.get("dirty")):
        lines.append(f"committed tables made by commit {old_git.get('commit')}"
                     f"{' with uncommitted changes' if old_git.get('dirty') else ''}; this run: commit "
                     f"{new_git.get('commit')}{' with uncommitted changes' if new_git.get('dirty') else ''} "
                     "(code changed since the tables were committed changes them)")
    old_pk, new_pk = committed_run.get("packages") or {}, new_run.get("packages") or {}
    changed = sorted(k for k in set(old_pk) | set(new_pk) if old_pk.get(k) != new_pk.get(k))
    if changed:
        lines.append("packages: " + ", ".join(f"{k} {old_pk.get(k)} -> {new_pk.get(k)}" for k in changed))
    old_dev, new_dev = committed_run.get("device") or {}, new_run.get("device") or {}
    for key in ("torch_threads", "processor", "platform"):
        if old_dev.get(key) != new_dev.get(key):
            lines.append(f"device {key}: {old_dev.get(key)} -> {new_dev.get(key)} (CPU results are bit-identical "
                         "only for the same thread count and instruction set)")
    return lines
