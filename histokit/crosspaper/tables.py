"""A cross-paper table on disk: the table artifact of :mod:`histokit.tables` (``<stem>.json``, with the ``.csv``
and ``.md`` rendered from it), with the cross-paper smoke banner and footnote."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from ..tables import table_document, write_table_artifact

SMOKE_BANNER = ("Smoke profile: not a reproduction.", "The bundled 100 tiles, small images, one or two epochs on "
                "CPU: these numbers check that the pipeline runs end to end and measure no method.")
# The report shows a section table's title and footnotes, not the banner: the first footnote repeats it.
SMOKE_FOOTNOTE = ("Smoke profile: not a reproduction — the bundled tiles, few epochs on CPU; the numbers test the "
                  "pipeline, not the methods.")


def write_table_files(out: Path, stem: str, title: str, frame: pd.DataFrame, *, profile: str,
                      notes: Iterable[str] = (), provenance: dict = None) -> dict:
    """``<stem>.json``, ``.csv`` and ``.md`` in ``out``; their paths by suffix."""
    smoke = profile == "smoke"
    doc = table_document(frame, id=stem, title=title, profile=profile, provenance=provenance,
                         footnotes=([SMOKE_FOOTNOTE] if smoke else []) + list(notes),
                         banner=SMOKE_BANNER if smoke else ())
    return write_table_artifact(doc, out)
