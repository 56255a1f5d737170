"""Re-running one table or figure with changed parameters, from a notebook: ``run_one(ctx, "table1", k=20)``.

The re-run reads the run's artifacts (features, splits, timings, trained weights) and writes only under
``<run_dir>/overrides/<table or figure>-<overrides>/``: the run's own records, tables, figures and caches are never
touched (house rule: no run overwrites another run's results).
"""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import atomic_write_json, atomic_write_text
from ..results import build_table, records_frame, write_table
from .context import StageContext
from .plan import evaluation_parameters, evaluation_table, figure_id, figure_kind, figure_parameters

# Run-directory folders an evaluation writes besides its records (the label-fraction fine-tuning cache): an
# override run keeps its own copy, so a changed epoch count never reads, nor replaces, the run's cached result.
EVALUATION_CACHES = ("label_fraction",)


@dataclasses.dataclass
class OverrideContext(StageContext):
    """The run's context, reading its artifacts but writing records, tables, notes, figures and evaluation caches
    to ``override_dir``."""
    override_dir: Path = Path()

    @property
    def results_dir(self) -> Path:
        return self.override_dir

    def path(self, *parts: str) -> Path:
        if parts and parts[0] in EVALUATION_CACHES:
            return self.override_dir.joinpath(*parts)
        return super().path(*parts)


def with_overrides(spec, overrides: dict, recipe=None):
    """The protocol (or figure) with some of its typed fields changed, checked as the recipe's own parts are (an
    override such as ``k=0`` or an unknown ``ap_normalization`` is refused by name before anything runs)."""
    changed = dataclasses.replace(spec, **overrides)
    if recipe is not None:
        changed.check(recipe)
    return changed


def evaluation_records(ctx: StageContext, spec) -> list[dict]:
    """What stage 05 / 06 computes for one protocol (its records, then the row keys and the weights used)."""
    from ..evaluation.protocols.records import with_row_keys, with_weights_used

    return with_weights_used(ctx, spec, with_row_keys(ctx, spec.run(ctx)))


def _check_overrides(what: str, known, overrides: dict) -> None:
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ValueError(f"{what} has no parameter {', '.join(map(repr, unknown))}; its parameters are "
                         f"{', '.join(sorted(known)) or 'none'}")


def override_dir(ctx: StageContext, target: str, overrides: dict) -> Path:
    """``<run_dir>/overrides/<target>-k20/``: one folder per (table or figure, overrides)."""
    def word(value) -> str:
        return re.sub(r"[^A-Za-z0-9.]+", "_", json.dumps(value, sort_keys=True, default=str)).strip("_")[:40]

    suffix = "-".join(f"{k}{word(v)}" for k, v in sorted(overrides.items()))
    return ctx.path("overrides", f"{target}-{suffix}" if suffix else target)


def open_override(ctx: StageContext, out: Path) -> OverrideContext:
    """A context writing to ``out``, which starts with a copy of the run's notes (the tables' footnotes)."""
    out.mkdir(parents=True, exist_ok=True)
    notes = ctx.results_dir / "notes.json"
    if notes.exists():
        shutil.copyfile(notes, out / "notes.json")
    fields = {f.name: getattr(ctx, f.name) for f in dataclasses.fields(ctx) if f.name != "override_dir"}
    return OverrideContext(**fields, override_dir=out)


def override_table_spec(spec, records: pd.DataFrame, overrides: dict, recipe_params: dict):
    """The table's spec for an override run: a metric the overrides renamed (k = 5 gives ``mAP@5``, not ``mAP@10``)
    becomes a kit-only column (no paper value: the paper measured another thing), and a footnote says what changed."""
    recorded = list(dict.fromkeys(records["metric"])) if len(records) else []
    new = [m for m in recorded if m not in spec.metrics]
    metrics = tuple(m for m in spec.metrics if m in recorded or not new) + tuple(new)
    changed = ", ".join(f"{k}={v!r} (recipe: {recipe_params[k]!r})" if k in recipe_params else f"{k}={v!r}"
                        for k, v in overrides.items())
    note = (f"Override re-run (histokit.stages.interactive.run_one) with {changed}: not the run's own table, which "
            "stays as it was." if overrides else "Re-run (histokit.stages.interactive.run_one) with the recipe's "
            "parameters, beside the run's own table.")
    return dataclasses.replace(spec, metrics=metrics, extra_metrics=tuple(spec.extra_metrics) + tuple(new),
                               footnotes=tuple(spec.footnotes) + (note,))


def _show(table_id: str, table: pd.DataFrame = None, figure: Path = None) -> None:
    from .display import show_figures, show_tables

    if table is not None:
        show_tables({table_id: table})
    if figure is not None:
        show_figures([figure])


def run_one(ctx: StageContext, target: str, **overrides):
    """Re-run one table (every evaluation of stage 05 / 06 that writes it) or one figure with ``overrides`` of its
    parameters, e.g. ``run_one(ctx, "table1", k=20)``; shows it and returns the table (a figure: its path).

    Everything is written under :func:`override_dir`, never over the run's own records, tables or figures."""
    recipe = ctx.recipe
    specs = [s for s in recipe.evaluations + recipe.ablations if evaluation_table(s) == target]
    figures = [f for f in recipe.figures if figure_id(f) == target]
    if not specs and not figures:
        tables = list(dict.fromkeys(evaluation_table(s) for s in recipe.evaluations + recipe.ablations))
        raise KeyError(f"recipe {ctx.paper}/{ctx.profile} has no table or figure {target!r}; tables: "
                       f"{', '.join(tables) or 'none'}; figures: {', '.join(figure_id(f) for f in recipe.figures) or 'none'}")
    out = override_dir(ctx, target, overrides)
    if figures:
        figure = figures[0]
        _check_overrides(f"figure {target!r} ({figure_kind(figure)})", figure_parameters(figure), overrides)
        path = with_overrides(figure, overrides, recipe).run(open_override(ctx, out))
        _show(target, figure=path)
        return path
    known = {name: value for s in specs for name, value in evaluation_parameters(s).items()}
    _check_overrides(f"table {target!r}", known, overrides)
    octx = open_override(ctx, out)
    records = records_frame([r for s in specs for r in evaluation_records(octx, with_overrides(s, overrides, recipe))])
    atomic_write_text(out / "records.csv", records.to_csv(index=False))
    atomic_write_json(out / "overrides.json", {"target": target, "overrides": overrides})
    spec = override_table_spec(recipe.table(target), records, overrides, known)
    table = build_table(spec, records)
    notes = octx.notes()
    write_table(spec, table, out, profile=ctx.label, paper_title=recipe.title,
                notes=notes.get("all", []) + notes.get(target, []))
    _show(target, table=table)
    return table


def feature_shapes(ctx: StageContext) -> pd.DataFrame:
    """What stage 04 left: each feature file (model folder, dataset file) with its images, dimensions and size."""
    rows = []
    for path in sorted(ctx.path("features").glob("*/*.npz")):
        with np.load(path, allow_pickle=False) as npz:
            shape = npz["features"].shape if "features" in npz.files else ()
        rows.append({"model": path.parent.name, "file": path.name, "images": shape[0] if shape else None,
                     "dimensions": shape[1] if len(shape) > 1 else None, "MB": round(path.stat().st_size / 1e6, 2)})
    return pd.DataFrame(rows)


def overridable(ctx: StageContext, stage: str) -> pd.DataFrame:
    """The tables (05_evaluate, 06_ablations) or figures (07_visualize) of a stage that :func:`run_one` re-runs, with
    the parameters it may change and their values in the recipe."""
    from .plan import evaluation_kind

    def params(values: dict) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in values.items() if not isinstance(v, (dict, list, tuple)) or
                         len(repr(v)) <= 40) or "none"

    recipe = ctx.recipe
    if stage == "07_visualize":
        return pd.DataFrame([{"figure": figure_id(f), "kind": figure_kind(f), "parameters": params(figure_parameters(f))}
                             for f in recipe.figures])
    if stage not in ("05_evaluate", "06_ablations"):
        raise ValueError(f"stage {stage!r} has no tables or figures to re-run; stages: 05_evaluate, 06_ablations, "
                         "07_visualize")
    specs = recipe.evaluations if stage == "05_evaluate" else recipe.ablations
    rows = [{"table": evaluation_table(s), "title": recipe.table(evaluation_table(s)).title,
             "protocol": evaluation_kind(s), "parameters": params(evaluation_parameters(s))} for s in specs]
    return pd.DataFrame(rows).drop_duplicates(ignore_index=True) if rows else pd.DataFrame(rows)
