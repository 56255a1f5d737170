"""Showing a stage's output in a notebook without loops or logic in the notebook itself."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Callable, Iterable, Optional

import pandas as pd

from ..results import PROFILE_BANNERS, TABLE_META, formatted_rows, render_markdown

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


def _meta(table_id: str, frame: pd.DataFrame) -> dict:
    """The title, profile and footnotes :func:`histokit.results.write_table` left on the frame (else the id only)."""
    return {"id": table_id, "title": table_id, "paper_title": "", "profile": "", "footnotes": [],
            **frame.attrs.get(TABLE_META, {})}


def table_html(frame: pd.DataFrame, meta: Optional[dict] = None) -> str:
    """The table as the ``.md`` shows it, in HTML: title, profile banner, every cell through the ``.md``'s formatter
    (:func:`histokit.results.formatted_rows`), footnotes below (in a ``<details>`` when long)."""
    meta = meta if meta is not None else _meta("", frame)
    esc = html.escape
    parts = [f"<div class=\"histokit-table\"><h4>{esc(str(meta.get('title', '')))}</h4>"]
    if meta.get("paper_title"):
        parts.append(f"<p><em>{esc(meta['paper_title'])}</em> — profile <code>{esc(meta['profile'])}</code></p>")
    if meta.get("profile") in PROFILE_BANNERS:
        headline, text = PROFILE_BANNERS[meta["profile"]]
        parts.append(f"<div style=\"{_BANNER_STYLE}\"><strong>{esc(headline)}</strong> {esc(text)}</div>")
    head = "".join(f"<th style=\"{_CELL_STYLE};text-align:left\">{esc(str(c))}</th>" for c in frame.columns)
    body = []
    for (_, row), cells in zip(frame.iterrows(), formatted_rows(frame)):
        tds = "".join(f"<td style=\"{_CELL_STYLE};text-align:{'left' if isinstance(v, str) else 'right'}\">"
                      f"{esc(cell)}</td>" for v, cell in zip(row, cells))
        body.append(f"<tr>{tds}</tr>")
    parts.append(f"<table style=\"border-collapse:collapse\"><thead><tr>{head}</tr></thead>"
                 f"<tbody>{''.join(body)}</tbody></table>")
    foot = list(meta.get("footnotes", ()))
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
        meta = _meta(table_id, frame)
        if display is None:
            print(render_markdown(frame, meta))
            continue
        from IPython.display import HTML

        display(HTML(table_html(frame, meta)))
