"""Stage 07: the figures a recipe lists (retrieval galleries, embeddings, attention maps)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..retrieval.metrics import evaluate_retrieval
from .common import load_recipe_dataset
from .context import StageContext
from .figures_attention import fig_attention_heads, fig_cls_attention
from .figures_retrieval import fig_gradcam, fig_projection
from .index import gallery_and_queries, load_feature_set


def fig_retrieval_gallery(ctx: StageContext, fig_id: str, params: dict) -> Path:
    """A query and its top-k from the gallery, hits and misses marked (Habijan et al. Fig. 2)."""
    from ..viz.gallery import retrieval_gallery

    gallery, queries = gallery_and_queries(ctx, params["model"], params["dataset"])
    k = params.get("k", 5)
    result = evaluate_retrieval(gallery.features, gallery.labels, queries.features, queries.labels, k=k,
                                device=ctx.device)
    dataset = load_recipe_dataset(ctx, params["dataset"])
    paths = dataset.paths
    path = ctx.results_dir / f"{fig_id}.png"
    retrieval_gallery([paths[i] for i in queries.indices], queries.labels, [paths[i] for i in gallery.indices],
                      gallery.labels, result.ids, dataset.classes, path, k=k, n_queries=params.get("n_queries", 4))
    return path


def fig_umap_panels(ctx: StageContext, fig_id: str, params: dict) -> Path:
    """One UMAP panel per model (15 neighbours, min_dist 0.1), points coloured by class (Ye et al. Fig. 1)."""
    from ..viz.embeddings import embedding_panels

    dataset = load_recipe_dataset(ctx, params["dataset"])
    panels = {}
    for model in params["models"]:
        fs = load_feature_set(ctx, model, params["dataset"])
        panels[model] = (fs.features, fs.labels)
    path = ctx.results_dir / f"{fig_id}.png"
    embedding_panels(panels, dataset.classes, path, title=params.get("title", "UMAP of frozen features"),
                     n_neighbors=params.get("n_neighbors", 15), min_dist=params.get("min_dist", 0.1), seed=ctx.seed,
                     progress=ctx.progress)
    return path


FIGURES: dict[str, Callable[[StageContext, str, dict], Path]] = {
    "retrieval_gallery": fig_retrieval_gallery,
    "umap_panels": fig_umap_panels,
    "attention_heads": fig_attention_heads,
    "cls_attention": fig_cls_attention,
    "gradcam": fig_gradcam,
    "projection": fig_projection,
}


def run(ctx: StageContext) -> list[Path]:
    out = []
    for fig_id, kind, params in ctx.recipe.figures:
        if kind not in FIGURES:
            raise ValueError(f"recipe {ctx.paper}: unknown figure kind {kind!r}; known: {sorted(FIGURES)}")
        out.append(FIGURES[kind](ctx, fig_id, params))
    return out
