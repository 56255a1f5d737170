"""Stage 01: load each recipe dataset through its manifest, make (or reuse) the splits, show what is there."""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from ..io import atomic_write_text
from .common import load_recipe_dataset, slug, split_indices
from .context import StageContext


@dataclass
class DataSummary:
    class_counts: pd.DataFrame
    split_sizes: pd.DataFrame
    figures: list = field(default_factory=list)


def class_count_table(ctx: StageContext) -> pd.DataFrame:
    rows = []
    for spec in ctx.recipe.datasets:
        dataset = load_recipe_dataset(ctx, spec.key)
        counts = pd.Series(dataset.labels).value_counts().sort_index()
        for label, n in counts.items():
            rows.append({"dataset": spec.key, "source": spec.dataset, "class": dataset.classes[label], "tiles": int(n)})
    return pd.DataFrame(rows)


def split_size_table(ctx: StageContext) -> pd.DataFrame:
    rows = []
    for spec in ctx.recipe.datasets:
        for scheme in ("random", "group"):
            split = split_indices(ctx, spec.key, scheme)
            if split is None:
                rows.append({"dataset": spec.key, "scheme": scheme, "note": "no group ids in this dataset"})
                continue
            rows.append({"dataset": spec.key, "scheme": scheme, **{k: len(v) for k, v in split.items()}})
    return pd.DataFrame(rows).convert_dtypes()


def run(ctx: StageContext) -> DataSummary:
    from ..viz.grid import class_counts_bar, sample_grid

    counts = class_count_table(ctx)
    sizes = split_size_table(ctx)
    out = ctx.path("data")
    atomic_write_text(out / "class_counts.csv", counts.to_csv(index=False))
    atomic_write_text(out / "split_sizes.csv", sizes.to_csv(index=False))
    figures = []
    for spec in ctx.recipe.datasets:
        dataset = load_recipe_dataset(ctx, spec.key)
        grid = ctx.results_dir / "figures" / f"data_{slug(spec.key)}_samples.png"
        sample_grid(dataset, dataset.classes, per_class=4, path=grid, seed=ctx.seed)
        bars = ctx.results_dir / "figures" / f"data_{slug(spec.key)}_class_counts.png"
        sub = counts[counts.dataset == spec.key]
        class_counts_bar(dict(zip(sub["class"], sub["tiles"])), path=bars)
        figures += [grid, bars]
    return DataSummary(counts, sizes, figures)
