"""Showing a stage's output in a notebook without loops or logic in the notebook itself."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Callable, Iterable, Optional

import pandas as pd

from ..results import TABLE_META
from ..tables import html_table, render_markdown, table_document

# Footnotes beyond this many (or this many characters in all) are collapsed under a <details>.
FOOTNOTES_OPEN_MAX = 3
FOOTNOTES_OPEN_CHARS = 400

_BANNER_STYLE = "border-left:4px solid #d9822b;background:#fff4e5;color:#222;padding:6px 10px;margin:6px 0"
_CELL_STYLE = "padding:2px 8px;border-bottom:1px solid #ddd"


def show_figures(paths: Iterable[Path]) -> None:
    from IPython.display import Image, display

    for path in paths:
        if path is not None and Path(path).exists():
            display(Image(filename=str(path)))


def _document(table_id: str, frame: pd.DataFrame) -> dict:
    """The table artifact :func:`histokit.results.write_table` left on the frame (else one of the frame itself)."""
    return frame.attrs.get(TABLE_META) or table_document(frame, id=table_id, title=table_id, profile="")


def table_html(doc: dict) -> str:
    """The table as its ``.md`` shows it, in HTML: title, profile banner, the artifact's cells through the one
    formatter (:func:`histokit.tables.html_table`), footnotes below (in a ``<details>`` when long)."""
    esc = html.escape
    parts = [f"<div class=\"histokit-table\"><h4>{esc(str(doc.get('title', '')))}</h4>"]
    if doc.get("paper_title"):
        parts.append(f"<p><em>{esc(doc['paper_title'])}</em> — profile <code>{esc(doc['profile'])}</code></p>")
    if doc.get("banner"):
        headline, text = doc["banner"]
        parts.append(f"<div style=\"{_BANNER_STYLE}\"><strong>{esc(headline)}</strong> {esc(text)}</div>")
    parts.append(html_table(doc["columns"], doc["rows"], attrs=' style="border-collapse:collapse"',
                            th_attrs=f' style="{_CELL_STYLE};text-align:left"',
                            td_attrs=lambda v: f' style="{_CELL_STYLE};text-align:{"left" if isinstance(v, str) else "right"}"'))
    foot = list(doc.get("footnotes", ()))
    if foot:
        items = "<ol>" + "".join(f"<li>{esc(n)}</li>" for n in foot) + "</ol>"
        if len(foot) > FOOTNOTES_OPEN_MAX or sum(map(len, foot)) > FOOTNOTES_OPEN_CHARS:
            items = f"<details><summary>Footnotes ({len(foot)}): protocol, deviations, notes</summary>{items}</details>"
        parts.append(items)
    parts.append("</div>")
    return "\n".join(parts)


def _ipython_display() -> Optional[Callable]:
    """IPython's ``display`` when running under an IPython shell (a notebook kernel), else None."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return None
    return display if get_ipython() is not None else None


def show_tables(tables: dict) -> None:
    """Each table as its ``.md`` shows it: HTML in a notebook, the markdown printed elsewhere."""
    display = _ipython_display()
    for table_id, frame in tables.items():
        doc = _document(table_id, frame)
        if display is None:
            print(render_markdown(doc))
            continue
        from IPython.display import HTML

        display(HTML(table_html(doc)))
