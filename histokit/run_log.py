"""What ``histokit reproduce`` prints while it works: one line as each stage starts (with an estimate of the time left,
from the stage times the last published run recorded) and one as it ends (elapsed, and the tables and figures it
wrote); nothing but errors and the final summary with ``--quiet``."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Optional

from . import paths


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def recorded_stage_seconds(paper: str, label: str) -> dict[str, float]:
    """{stage: seconds} from ``results/<paper>/<label>/run.json`` (the last published run), {} if there is none."""
    run_json = paths.results_dir(paper, label) / "run.json"
    try:
        stages = json.loads(run_json.read_text()).get("stages", [])
        return {s["stage"]: float(s["seconds"]) for s in stages if "stage" in s and "seconds" in s}
    except (OSError, ValueError, TypeError, KeyError):
        return {}


def estimate_seconds(paper: str, label: str, stages: Iterable[str]) -> Optional[float]:
    """Seconds the given stages took in the last published run, or None where one has no record."""
    recorded = recorded_stage_seconds(paper, label)
    stages = list(stages)
    if not stages:
        return 0.0
    if any(s not in recorded for s in stages):
        return None
    return sum(recorded[s] for s in stages)


def snapshot(folder: Path) -> dict[str, int]:
    """{relative path: mtime_ns} of every file under ``folder``, to tell what a stage wrote."""
    if not folder.is_dir():
        return {}
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            try:
                out[str(path.relative_to(folder))] = path.stat().st_mtime_ns
            except OSError:
                pass
    return out


def written_since(before: dict[str, int], after: dict[str, int]) -> list[str]:
    return sorted(p for p, t in after.items() if before.get(p) != t)


def describe_written(files: list[str], limit: int = 6) -> str:
    """'table1.csv, table1.md, fig2.png (+3 more)'; tables and figures first, notes and sidecars left out."""
    shown = [f for f in files if f.endswith((".csv", ".md", ".png", ".html")) and "/" not in f]
    shown += [f for f in files if f.endswith(".png") and "/" in f]
    if not shown:
        return ""
    extra = len(shown) - limit
    return ", ".join(shown[:limit]) + (f" (+{extra} more)" if extra > 0 else "")


class RunLog:
    """The lines one paper's run prints. ``later_s``: the estimated seconds of the papers still to come after this
    one (``histokit reproduce all``), so each estimate covers the whole command."""

    def __init__(self, paper: str, label: str, stages: list[str], *, quiet: bool = False,
                 later_s: Optional[float] = 0.0):
        self.paper, self.label, self.stages, self.quiet, self.later_s = paper, label, stages, quiet, later_s

    def say(self, message: str) -> None:
        if not self.quiet:
            print(f"[histokit] {self.paper} / {self.label}: {message}", flush=True)

    def stage_started(self, stage: str) -> None:
        position = self.stages.index(stage)
        left = estimate_seconds(self.paper, self.label, self.stages[position:])
        if left is not None and self.later_s is not None:
            eta = f"; about {format_duration(left + self.later_s)} left (from the last recorded run)"
        else:
            eta = ""
        self.say(f"{stage} ({position + 1}/{len(self.stages)}) ...{eta}")

    def stage_ended(self, stage: str, status: str, seconds: float, written: list[str]) -> None:
        if status != "ran":
            self.say(f"{stage} skipped (finished earlier, same inputs)")
            return
        wrote = describe_written(written)
        self.say(f"{stage} ran in {format_duration(seconds)}" + (f"; wrote {wrote}" if wrote else ""))
