"""Figures that explain a retrieval: a query and its top-k (Habijan et al. Fig. 2), Grad-CAM++ over LGFFEM's neck
nodes for a query and what it retrieved (Nuñez-Fernández et al. Figs. 3-6)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .base import Figure


@dataclass(frozen=True)
class RetrievalGallery(Figure):
    """A query and its top-k from the gallery, hits and misses marked."""
    model: str
    dataset: str
    k: int = 5
    n_queries: int = 4

    kind: ClassVar[str] = "retrieval_gallery"

    def run(self, ctx) -> Path:
        from ...retrieval.metrics import evaluate_retrieval
        from ...stages.common import load_recipe_dataset
        from ...stages.index import gallery_and_queries
        from ..gallery import retrieval_gallery

        gallery, queries = gallery_and_queries(ctx, self.model, self.dataset)
        result = evaluate_retrieval(gallery.features, gallery.labels, queries.features, queries.labels, k=self.k,
                                    device=ctx.device)
        dataset = load_recipe_dataset(ctx, self.dataset)
        paths = dataset.paths
        path = self.path(ctx)
        retrieval_gallery([paths[i] for i in queries.indices], queries.labels, [paths[i] for i in gallery.indices],
                          gallery.labels, result.ids, dataset.classes, path, k=self.k, n_queries=self.n_queries)
        return path


@dataclass(frozen=True)
class GradCam(Figure):
    """Grad-CAM++ of every outer node (P1_2..P4_2) of each neck layer and their combination, for test patch
    ``query`` and its top ``k`` training patches (exact L2 search, the paper's index)."""
    model: str
    dataset: str
    k: int = 2
    query: int = 0

    kind: ClassVar[str] = "gradcam"

    def run(self, ctx) -> Path:
        from ...data.transforms import eval_transform
        from ...retrieval.index import build_index, search
        from ...stages.common import load_model, load_recipe_dataset
        from ...stages.index import feature_parts
        from ..gradcam import gradcam_figure

        model = load_model(ctx, self.model, self.dataset, scope=self.id)
        parts = feature_parts(ctx, self.model, self.dataset)
        train, test = parts["train"], parts["test"]
        index = build_index(train.features, kind="flat", metric="l2", device=ctx.device)
        _, ids = search(index, test.features[self.query:self.query + 1], k=int(self.k))
        dataset = load_recipe_dataset(ctx, self.dataset)
        transform = eval_transform(ctx.recipe.image_size, model.mean, model.std)

        def tensor(row):
            return transform(dataset.image_loader(dataset.samples[row]))

        retrieved_rows = [int(train.indices[i]) for i in ids[0]]
        names = dataset.classes
        titles = [f"#{r + 1}: {names[dataset.labels[row]]}" for r, row in enumerate(retrieved_rows)]
        path = self.path(ctx)
        query_row = int(test.indices[self.query])
        gradcam_figure(model.encoder, tensor(query_row), [tensor(r) for r in retrieved_rows], path,
                       retrieved_titles=titles, query_title=f"query: {names[dataset.labels[query_row]]}",
                       mean=model.mean, std=model.std, progress=ctx.progress)
        return path
