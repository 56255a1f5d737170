"""The one table artifact and its one renderer.

Every table the kit publishes (a paper's table, the common benchmark, the leakage audit) is written once as
``<id>.json`` — title, profile, paper title, the :class:`~histokit.papers.recipe.TableSpec` as data, columns, rows,
footnotes and provenance — and its ``<id>.md`` and ``<id>.csv`` are rendered from that document. The report and
the notebooks read the JSON (or the document itself), never the markdown. Every cell of every rendering goes
through :func:`format_cell`.
"""
from __future__ import annotations

import dataclasses
import html
import json
import math
import numbers
from pathlib import Path
from typing import Callable, Iterable, Optional

import pandas as pd

from .io import atomic_write_json, atomic_write_text

SCHEMA = "histokit.table/1"
_REQUIRED = {"id": str, "title": str, "profile": str, "columns": list, "rows": list, "footnotes": list}

# The banner that heads a table of a profile that is not a reproduction: (headline, text), the same sentence in the
# .md (``> **headline** text``), in a notebook's HTML and in the report.
PROFILE_BANNERS = {
    "smoke": ("Smoke profile: not a reproduction.",
              "Tiny bundled data, small images, few epochs on CPU. "
              "The paper's numbers are shown for layout only; the differences measure nothing yet."),
    "rehearsal": ("Rehearsal of the full profile: not a reproduction.",
                  "The paper's recipe at full size with the "
                  "optimisation steps and the images per class capped, on the data named in the notes (mock data "
                  "unless stated otherwise). It shows every cell can be computed; the numbers measure nothing."),
}


class TableArtifactError(ValueError):
    """A ``<table>.json`` that is missing, malformed or of another schema; the message names the file."""


def format_cell(value, digits: int = 2) -> str:
    """The one cell formatter: text as it is (``"not run"``, a CI ``"[1.00, 2.00]"``), a missing or non-finite
    value as ``—``, an integer (a count) as an integer, any other number with ``digits`` decimals from 1 up and 3
    below; scientific notation below 1e-3, so a p-value such as 9.759e-05 never prints as 0.000."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if not isinstance(value, numbers.Real) or not math.isfinite(value):
        return "—"  # None, NaN, pd.NA, inf
    value = float(value)
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.3e}"
    return f"{value:.{digits if abs(value) >= 1 else 3}f}"


def _plain(value):
    """A cell as JSON holds it: numpy scalars as Python numbers, every kind of missing value as null."""
    if isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(value) else None
    if value is None or pd.isna(value):
        return None
    return str(value)


def table_document(frame: pd.DataFrame, *, id: str, title: str, profile: str, paper_title: str = "",
                   footnotes: Iterable[str] = (), spec=None, provenance: Optional[dict] = None,
                   banner: Optional[tuple] = None) -> dict:
    """The artifact of one table. ``banner`` (headline, text) defaults to the profile's :data:`PROFILE_BANNERS`."""
    banner = banner if banner is not None else PROFILE_BANNERS.get(profile)
    return {"schema": SCHEMA, "id": id, "title": title, "paper_title": paper_title, "profile": profile,
            "banner": list(banner) if banner else None,
            "spec": dataclasses.asdict(spec) if spec is not None else None,
            "columns": [str(c) for c in frame.columns],
            "rows": [[_plain(v) for v in row] for row in frame.itertuples(index=False)],
            "footnotes": [" ".join(str(n).split()) for n in footnotes],  # one line each in the numbered list
            "provenance": dict(provenance or {})}


def write_table_artifact(doc: dict, out_dir: Path) -> dict:
    """``<id>.json``, then ``<id>.csv`` and ``<id>.md`` rendered from it, each atomically; their paths."""
    out_dir = Path(out_dir)
    stem = doc["id"]
    return {"json": atomic_write_json(out_dir / f"{stem}.json", doc),
            "csv": atomic_write_text(out_dir / f"{stem}.csv", render_csv(doc)),
            "md": atomic_write_text(out_dir / f"{stem}.md", render_markdown(doc))}


def read_table_artifact(path: Path) -> dict:
    """The document of a ``<table>.json``; :class:`TableArtifactError` naming the file when it is not one."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise TableArtifactError(f"table artifact not found: {path}") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TableArtifactError(f"{path} is not a histokit table artifact (invalid JSON: {err})") from err
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise TableArtifactError(f"{path}: table schema {found!r}, this histokit reads {SCHEMA!r}; regenerate the "
                                 "table with this version (histokit reproduce <paper> --profile <profile>)")
    for key, kind in _REQUIRED.items():
        if not isinstance(doc.get(key), kind):
            raise TableArtifactError(f"{path}: field {key!r} missing or not a {kind.__name__}")
    width = len(doc["columns"])
    bad = [i for i, row in enumerate(doc["rows"]) if not isinstance(row, list) or len(row) != width]
    if bad:
        raise TableArtifactError(f"{path}: row {bad[0]} does not have the {width} cells of 'columns'")
    return doc


def document_frame(doc: dict) -> pd.DataFrame:
    """The rows as a frame of the JSON's own values (object columns: an integer stays an integer)."""
    return pd.DataFrame(doc["rows"], columns=doc["columns"], dtype=object)


def render_csv(doc: dict) -> str:
    return document_frame(doc).to_csv(index=False)


def md_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: list, rows: Iterable[Iterable]) -> str:
    """A pipe table, every cell through :func:`format_cell`."""
    lines = ["| " + " | ".join(md_cell(c) for c in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(md_cell(format_cell(v)) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(doc: dict) -> str:
    """The ``.md``: title, paper title and profile, the profile banner, the table, numbered footnotes."""
    parts = [f"# {doc['title']}", ""]
    if doc.get("paper_title"):
        parts += [f"*{doc['paper_title']}* — profile `{doc['profile']}`", ""]
    elif doc.get("profile"):
        parts += [f"Profile `{doc['profile']}`.", ""]
    if doc.get("banner"):
        headline, text = doc["banner"]
        parts += [f"> **{headline}** {text}", ""]
    parts += [markdown_table(doc["columns"], doc["rows"]) if doc["rows"] else "*No rows.*", ""]
    parts += [f"{i}. {n}" for i, n in enumerate(doc.get("footnotes", ()), 1)]
    return "\n".join(parts) + "\n"


def html_table(columns: list, rows: Iterable[Iterable], *, attrs: str = "",
               td_attrs: Optional[Callable[[object], str]] = None, th_attrs: str = "") -> str:
    """A ``<table>`` of escaped, formatted cells; ``td_attrs(value)`` gives a cell's attributes (style, class)."""
    esc = html.escape
    head = "".join(f"<th{th_attrs}>{esc(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td{td_attrs(v) if td_attrs else ''}>{esc(format_cell(v))}</td>" for v in row)
                   + "</tr>" for row in rows)
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
