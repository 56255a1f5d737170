"""``histokit report``: one reproduction report across the papers.

``results/REPORT.md`` and a self-contained ``results/report.html``: per paper and profile, every table with the
measured number, the paper's number and the difference (graded by size), the 95 % bootstrap intervals, every
protocol choice and deviation as a footnote, the figures, provenance and the executed notebooks; then the common
benchmark, the leakage audit and the speed (performance) reports where their folders exist. Smoke numbers are
marked as not a reproduction; a table or paper that has not been run says so and is never filled with the paper's
values.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .. import paths
from ..io import atomic_write_text
from ..runner import PROFILES
from .collect import ReportData, collect
from .html import render_html
from .embed import figure_cache
from .markdown import render_markdown

MARKDOWN_NAME = "REPORT.md"
HTML_NAME = "report.html"

__all__ = ["build_report", "collect", "render_html", "render_markdown", "write_report", "ReportData"]


def build_report(results_dir: Path = paths.RESULTS_DIR, profile: Optional[str] = None) -> tuple[str, str]:
    """(Markdown, HTML) text of the report on ``results_dir``, written nowhere."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results directory not found: {results_dir} (set --results-dir or "
                                "HISTOKIT_RESULTS_DIR)")
    data = collect(results_dir, profile)
    found = any(r.ran for r in data.papers) or any(s.present for s in data.benchmark + data.leakage)
    if profile is not None and profile not in PROFILES and not found:
        raise ValueError(f"profile {profile!r} is not a kit profile ({', '.join(PROFILES)}) and no folder under "
                         f"{results_dir} uses it")
    return render_markdown(data), render_html(data)


def write_report(results_dir: Path = paths.RESULTS_DIR, profile: Optional[str] = None,
                 figure_cache_dir: Optional[Path] = None) -> tuple[Path, Path]:
    """Write ``<results_dir>/REPORT.md`` and ``<results_dir>/report.html`` atomically; return their paths.
    ``figure_cache_dir`` keeps the downscaled figures between reports (the CLI: ``runs/cache/report_figures``)."""
    with figure_cache(figure_cache_dir):
        markdown, html = build_report(results_dir, profile)
    results_dir = Path(results_dir)
    # atomic_write_text publishes with the usual umask mode: a report is for reading
    return atomic_write_text(results_dir / MARKDOWN_NAME, markdown), atomic_write_text(results_dir / HTML_NAME, html)
