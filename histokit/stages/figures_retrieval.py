"""Figures that explain a retrieval: Grad-CAM++ over LGFFEM's neck nodes for a query and what it retrieved
(Nuñez-Fernández et al. Figs. 3-6), and the 2-D projection of the test embeddings by scan (Fig. 7)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.transforms import eval_transform
from ..retrieval.index import build_index, search
from .common import load_model, load_recipe_dataset
from .context import StageContext
from .index import feature_parts


def fig_gradcam(ctx: StageContext, fig_id: str, params: dict) -> Path:
    """Grad-CAM++ of every outer node (P1_2..P4_2) of each neck layer and their combination, for the first test
    patch and its top ``k`` training patches (exact L2 search, the paper's index)."""
    from ..viz.gradcam import gradcam_figure

    model = load_model(ctx, params["model"], params["dataset"], scope=fig_id)
    parts = feature_parts(ctx, params["model"], params["dataset"])
    train, test = parts["train"], parts["test"]
    query = int(params.get("query", 0))
    index = build_index(train.features, kind="flat", metric="l2", device=ctx.device)
    _, ids = search(index, test.features[query:query + 1], k=int(params.get("k", 2)))
    dataset = load_recipe_dataset(ctx, params["dataset"])
    transform = eval_transform(ctx.recipe.image_size, model.mean, model.std)

    def tensor(row):
        return transform(dataset.image_loader(dataset.samples[row]))

    retrieved_rows = [int(train.indices[i]) for i in ids[0]]
    names = dataset.classes
    titles = [f"#{r + 1}: {names[dataset.labels[row]]}" for r, row in enumerate(retrieved_rows)]
    path = ctx.results_dir / f"{fig_id}.png"
    query_row = int(test.indices[query])
    gradcam_figure(model.encoder, tensor(query_row), [tensor(r) for r in retrieved_rows], path,
                   retrieved_titles=titles, query_title=f"query: {names[dataset.labels[query_row]]}",
                   mean=model.mean, std=model.std, progress=ctx.progress)
    return path


def fig_projection(ctx: StageContext, fig_id: str, params: dict) -> Path:
    """UMAP of the embeddings of ``split`` (test by default), coloured by scan / class."""
    from ..viz.embeddings import projection_plot

    parts = feature_parts(ctx, params["model"], params["dataset"])
    split = params.get("split", "test")
    fs = parts[split] if split != "all" else None
    if fs is None:
        feats = np.concatenate([parts[s].features for s in ("train", "val", "test")])
        labels = np.concatenate([parts[s].labels for s in ("train", "val", "test")])
    else:
        feats, labels = fs.features, fs.labels
    classes = load_recipe_dataset(ctx, params["dataset"]).classes
    path = ctx.results_dir / f"{fig_id}.png"
    projection_plot(feats, [classes[i] for i in labels], path, title=params.get("title", "Embedding projection"),
                    legend_title=params.get("legend_title", "class"), seed=ctx.seed)
    return path
