"""A cross-paper table on disk: ``<stem>.csv`` for machines, ``<stem>.md`` (title, profile, smoke banner, table,
numbered footnotes) in the layout :func:`histokit.report.collect.read_markdown_meta` reads."""
from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Iterable

import pandas as pd

from ..io import atomic_write_text

SMOKE_BANNER = ("> **Smoke profile: not a reproduction.** The bundled 100 tiles, small images, one or two epochs on "
                "CPU: these numbers check that the pipeline runs end to end and measure no method.")
# The report shows a section table's title and footnotes, not the banner: the first footnote repeats it.
SMOKE_FOOTNOTE = ("Smoke profile: not a reproduction — the bundled tiles, few epochs on CPU; the numbers test the "
                  "pipeline, not the methods.")


def _cell(value) -> str:
    if isinstance(value, (bool, str)):
        return str(value).replace("|", "\\|")
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if value is None or not isinstance(value, numbers.Real) or not math.isfinite(value):
        return "—"
    return f"{float(value):.{2 if abs(float(value)) >= 1 else 3}f}"


def markdown_table(frame: pd.DataFrame) -> str:
    """Counts as integers, numbers with two decimals (three below 1), missing values as an em dash."""
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "|".join("---" for _ in frame.columns) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


def readable(path: Path) -> Path:
    """The usual umask mode: atomic writes create 0600 temporary files, and a published table is for reading."""
    mask = os.umask(0)
    os.umask(mask)
    Path(path).chmod(0o666 & ~mask)
    return Path(path)


def write_table_files(out: Path, stem: str, title: str, frame: pd.DataFrame, *, profile: str,
                      notes: Iterable[str] = ()) -> tuple[Path, Path]:
    out = Path(out)
    csv_path = readable(atomic_write_text(out / f"{stem}.csv", frame.to_csv(index=False)))
    notes = ([SMOKE_FOOTNOTE] if profile == "smoke" else []) + list(notes)
    parts = [f"# {title}", "", f"Profile `{profile}`.", ""]
    if profile == "smoke":
        parts += [SMOKE_BANNER, ""]
    parts += [markdown_table(frame) if len(frame) else "*No rows.*", ""]
    parts += [f"{i}. {' '.join(str(n).split())}" for i, n in enumerate(notes, 1)]
    md_path = readable(atomic_write_text(out / f"{stem}.md", "\n".join(parts) + "\n"))
    return csv_path, md_path
