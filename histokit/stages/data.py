"""Stage 01: read each recipe dataset through its manifest, split it, normalize its stains where the recipe asks,
and write its data index (``data/<key>/index.csv`` + ``index.json``, :mod:`histokit.stages.data_index`) — the only
stage that reads manifests; every later stage reads the index. Then show what is there.

A dataset only a pretraining run reads that a given checkpoint replaces (EsViT's ImageNet-1k fallback under
``--checkpoint esvit_swin_tiny``) is not read (``Recipe.datasets_needed``)."""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from ..io import atomic_write_text
from .common import load_recipe_dataset, slug, split_indices
from .context import StageContext
from .data_index import write_index


@dataclass
class DataSummary:
    class_counts: pd.DataFrame
    split_sizes: pd.DataFrame
    figures: list = field(default_factory=list)


def target_bins(dataset, n_bins: int = 4):
    """A regression dataset (BreastPathQ cellularity) seen as ``n_bins`` equal-width target ranges, so its counts and
    sample grid read like a classification dataset's; a classification dataset is returned as it is."""
    from dataclasses import replace

    import numpy as np

    from ..data.datasets import PatchDataset

    if not dataset.is_regression:
        return dataset
    y = np.asarray(dataset.labels, dtype=float)
    edges = np.linspace(y.min(), y.max(), n_bins + 1)
    bins = np.clip(np.searchsorted(edges, y, side="right") - 1, 0, n_bins - 1)
    names = [f"target {edges[i]:.2f}-{edges[i + 1]:.2f}" for i in range(n_bins)]
    samples = [replace(s, label=int(b)) for s, b in zip(dataset.samples, bins)]
    return PatchDataset(samples, names, dataset.transform, name=dataset.name, image_loader=dataset.image_loader)


def class_count_table(ctx: StageContext) -> pd.DataFrame:
    rows = []
    for spec in ctx.recipe.datasets_needed(ctx.checkpoints):
        dataset = target_bins(load_recipe_dataset(ctx, spec.key))
        counts = pd.Series(dataset.labels).value_counts().sort_index()
        for label, n in counts.items():
            rows.append({"dataset": spec.key, "source": spec.dataset, "class": dataset.classes[label], "tiles": int(n)})
    return pd.DataFrame(rows)


def split_size_table(ctx: StageContext) -> pd.DataFrame:
    rows = []
    for spec in ctx.recipe.datasets_needed(ctx.checkpoints):
        for scheme in dict.fromkeys(("random", "group", spec.split)):  # + the recipe's own (official, none)
            split = split_indices(ctx, spec.key, scheme)
            if split is None:
                rows.append({"dataset": spec.key, "scheme": scheme, "note": "no group ids in this dataset"})
                continue
            rows.append({"dataset": spec.key, "scheme": scheme, **{k: len(v) for k, v in split.items()}})
    return pd.DataFrame(rows).convert_dtypes()


def write_indexes(ctx: StageContext) -> dict[str, dict]:
    """The data index of every dataset the run reads: {key: its sidecar}."""
    return {spec.key: write_index(ctx, spec.key) for spec in ctx.recipe.datasets_needed(ctx.checkpoints)}


def run(ctx: StageContext) -> DataSummary:
    from ..viz.grid import class_counts_bar, sample_grid

    write_indexes(ctx)
    counts = class_count_table(ctx)
    sizes = split_size_table(ctx)
    out = ctx.path("data")
    atomic_write_text(out / "class_counts.csv", counts.to_csv(index=False))
    atomic_write_text(out / "split_sizes.csv", sizes.to_csv(index=False))
    figures = []
    for spec in ctx.recipe.datasets_needed(ctx.checkpoints):
        dataset = target_bins(load_recipe_dataset(ctx, spec.key))
        grid = ctx.results_dir / "figures" / f"data_{slug(spec.key)}_samples.png"
        sample_grid(dataset, dataset.classes, per_class=4, path=grid, seed=ctx.seed)
        bars = ctx.results_dir / "figures" / f"data_{slug(spec.key)}_class_counts.png"
        sub = counts[counts.dataset == spec.key]
        class_counts_bar(dict(zip(sub["class"], sub["tiles"])), path=bars)
        figures += [grid, bars]
    return DataSummary(counts, sizes, figures)
