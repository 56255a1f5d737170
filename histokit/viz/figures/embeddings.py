"""Embedding figures: one UMAP panel per model (Ye et al. Fig. 1) and the projection of one model's embeddings
coloured by class / scan (Nuñez-Fernández et al. Fig. 7)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from .base import Figure

SPLITS = ("train", "val", "test", "all")


@dataclass(frozen=True)
class UmapPanels(Figure):
    """One UMAP panel per model (15 neighbours, min_dist 0.1), points coloured by class."""
    models: tuple
    dataset: str
    title: str = "UMAP of frozen features"
    n_neighbors: int = 15
    min_dist: float = 0.1

    kind: ClassVar[str] = "umap_panels"

    def model_rows(self) -> tuple:
        return tuple(self.models)

    def run(self, ctx) -> Path:
        from ...stages.common import load_recipe_dataset
        from ...stages.index import load_feature_set
        from ..embeddings import embedding_panels

        dataset = load_recipe_dataset(ctx, self.dataset)
        panels = {}
        for model in self.models:
            fs = load_feature_set(ctx, model, self.dataset)
            panels[model] = (fs.features, fs.labels)
        path = self.path(ctx)
        embedding_panels(panels, dataset.classes, path, title=self.title, n_neighbors=self.n_neighbors,
                         min_dist=self.min_dist, seed=ctx.seed, progress=ctx.progress)
        return path


@dataclass(frozen=True)
class Projection(Figure):
    """UMAP of the embeddings of ``split`` (test by default, ``all``: every split), coloured by class."""
    model: str
    dataset: str
    split: str = "test"
    title: str = "Embedding projection"
    legend_title: str = "class"

    kind: ClassVar[str] = "projection"

    def check(self, recipe) -> None:
        super().check(recipe)
        if self.split not in SPLITS:
            raise ValueError(f"{recipe.paper}: figure {self.id!r}: split must be one of {SPLITS}, got {self.split!r}")

    def run(self, ctx) -> Path:
        from ...stages.common import load_recipe_dataset
        from ...stages.index import feature_parts
        from ..embeddings import projection_plot

        parts = feature_parts(ctx, self.model, self.dataset)
        if self.split == "all":
            feats = np.concatenate([parts[s].features for s in ("train", "val", "test")])
            labels = np.concatenate([parts[s].labels for s in ("train", "val", "test")])
        else:
            feats, labels = parts[self.split].features, parts[self.split].labels
        classes = load_recipe_dataset(ctx, self.dataset).classes
        path = self.path(ctx)
        projection_plot(feats, [classes[i] for i in labels], path, title=self.title, legend_title=self.legend_title,
                        seed=ctx.seed)
        return path
