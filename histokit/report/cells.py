"""How one table cell reads: the size grade of a difference from the paper (the number itself is formatted by
:func:`histokit.tables.format_cell`, as in every table).

Shared by the Markdown and the HTML report so both say the same thing about the same number.

Grades (the colour of a Δ cell): ``close`` |Δ| < 2 points, ``near`` < 5 points, ``far`` otherwise; ``none`` when
there is nothing to compare (not run, or the paper has no number). A point is one unit of a metric given in %, and
0.01 of a metric on a 0-1 scale (AUC, Kendall tau). Timings depend on the hardware more than on the method, so
they are graded by relative difference instead: < 10 %, < 50 %, otherwise.
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Optional

from ..results import NOT_RUN

GRADES = ("close", "near", "far", "none")
POINT_LIMITS = (2.0, 5.0)
RELATIVE_LIMITS = (0.10, 0.50)
_TIMING = re.compile(r"(_ms$|_s$|latency|time|seconds|throughput|img/s)", re.IGNORECASE)
GRADE_LEGEND = {
    "close": "|Δ| < 2 points (timings: < 10 %)",
    "near": "|Δ| < 5 points (timings: < 50 %)",
    "far": "|Δ| ≥ 5 points (timings: ≥ 50 %)",
    "none": "not run, or no number to compare",
}


def as_number(value) -> Optional[float]:
    """A finite float from a CSV cell, else None ("not run", "", "—", text)."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def is_timing(metric: str) -> bool:
    return bool(_TIMING.search(metric))


def unit_scale(values: Iterable) -> bool:
    """True when every number of a metric (measured and paper) lies in [-1, 1]: a 0-1 scale, not %."""
    numbers = [n for n in (as_number(v) for v in values) if n is not None]
    return bool(numbers) and all(-1.0 <= n <= 1.0 for n in numbers)


def delta_grade(metric: str, delta, paper, *, unit: bool = False) -> str:
    """``close`` / ``near`` / ``far`` / ``none`` for one Δ cell (see the module docstring)."""
    d, p = as_number(delta), as_number(paper)
    if d is None or p is None:
        return "none"
    if is_timing(metric):
        if p == 0:
            return "none"
        size, limits = abs(d) / abs(p), RELATIVE_LIMITS
    else:
        size, limits = abs(d) * (100.0 if unit else 1.0), POINT_LIMITS
    if size < limits[0]:
        return "close"
    return "near" if size < limits[1] else "far"


NOT_GRADED = "not graded: a smoke or rehearsal difference measures nothing"


def summary_grades(run) -> Optional[dict]:
    """A run's Δ counts per grade for the summary, or None where nothing may be counted: a run that did not run, or
    a smoke / rehearsal run (:attr:`.collect.PaperRun.smoke`), whose small differences are no agreement."""
    if not run.ran or run.smoke:
        return None
    return grade_counts(run.tables)


def not_graded_words(run) -> str:
    """What the summary says instead of counts: "—" (not run) or "not graded (smoke)"."""
    return f"not graded ({run.profile})" if run.ran else "—"


def is_not_run(value) -> bool:
    return isinstance(value, str) and value.strip() == NOT_RUN


def unit_scales(table) -> dict:
    """Per metric of a paper-layout table (:class:`.collect.Table`): True when it is on a 0-1 scale."""
    frame = table.frame
    return {m: unit_scale(list(frame.get(m, [])) + list(frame.get(f"{m} (paper)", []))) for m in table.metrics}


def row_grade(table, row, metric: str, unit: bool) -> str:
    if not getattr(table, "graded", True):  # smoke / rehearsal: the Δ is shown, never graded
        return "none"
    return delta_grade(metric, row.get(f"{metric} Δ"), row.get(f"{metric} (paper)"), unit=unit)


def grade_counts(tables) -> dict:
    """How many Δ cells of the written paper-layout ``tables`` fall in each grade except ``none`` (a table that is
    not graded counts none)."""
    counts = {g: 0 for g in GRADES if g != "none"}
    for table in tables:
        if not table.written or not table.metrics:
            continue
        units = unit_scales(table)
        for _, row in table.frame.iterrows():
            for metric in table.metrics:
                grade = row_grade(table, row, metric, units[metric])
                if grade != "none":
                    counts[grade] += 1
    return counts
