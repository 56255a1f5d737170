"""Showing a stage's output in a notebook without loops or logic in the notebook itself."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable


def show_figures(paths: Iterable[Path]) -> None:
    from IPython.display import Image, display

    for path in paths:
        if path is not None and Path(path).exists():
            display(Image(filename=str(path)))


def show_tables(tables: dict) -> None:
    from IPython.display import Markdown, display

    for table_id, frame in tables.items():
        display(Markdown(f"**{table_id}**"))
        display(frame)
