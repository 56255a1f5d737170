"""Attention figures: DINO's per-head [CLS] maps (Chen & Krishnan) and CypherViT's per-[cls]-token maps (Ye et al.
Fig. 2). The tile is shown as the model sees it (resized to the recipe's image size, stain-normalized if the
dataset is), and the maps are the model's own, upsampled for the overlay."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.transforms import eval_transform
from .common import load_model, load_recipe_dataset
from .context import StageContext


def _tiles_per_class(ctx: StageContext, dataset_key: str, omit=()):
    """The first tile of each class (dataset order), as (class name, PIL image) pairs."""
    dataset = load_recipe_dataset(ctx, dataset_key)
    picked = {}
    for i, label in enumerate(dataset.labels):
        name = dataset.classes[int(label)]
        if name not in picked and name not in omit:
            picked[name] = dataset.image_loader(dataset.samples[i])
    return list(picked.items())


def _model_input(ctx: StageContext, model, image):
    size = ctx.recipe.image_size
    x = eval_transform(size, model.mean, model.std)(image).unsqueeze(0)
    shown = np.asarray(image.convert("RGB").resize((size, size)))
    return x, shown


def fig_attention_heads(ctx: StageContext, fig_id: str, params: dict) -> Path:
    """Per-head attention of the last block's [CLS] token for one tile per listed class (Chen & Krishnan)."""
    from ..viz.attention import attention_heads_figure

    model = load_model(ctx, params["model"], params["dataset"], scope=fig_id)
    tiles = dict(_tiles_per_class(ctx, params["dataset"]))
    wanted = [c for c in params.get("classes", list(tiles)) if c in tiles] or list(tiles)[:1]
    paths = []
    for i, name in enumerate(wanted):
        x, shown = _model_input(ctx, model, tiles[name])
        with torch.no_grad():
            attn = model.encoder.last_attention(x)[0].numpy()
        path = ctx.results_dir / (f"{fig_id}.png" if i == 0 else f"figures/{fig_id}_{name.lower()}.png")
        attention_heads_figure(shown, attn, path, title=f"{params['model']}: [CLS] attention per head, "
                                                          f"last block — {name} tile ({model.source})")
        paths.append(path)
    return paths[0]


def fig_cls_attention(ctx: StageContext, fig_id: str, params: dict) -> Path:
    """Final-stage attention of every CypherViT [cls] token, one tile per class (Ye et al. Fig. 2)."""
    from ..viz.attention import cls_attention_figure

    model = load_model(ctx, params["model"], params["dataset"], scope=fig_id)
    tiles = _tiles_per_class(ctx, params["dataset"], omit=tuple(params.get("omit", ())))
    images, maps = [], []
    for _, image in tiles:
        x, shown = _model_input(ctx, model, image)
        with torch.no_grad():
            maps.append(model.encoder.attention_maps(x)[-1][0].numpy())
        images.append(shown)
    path = ctx.results_dir / f"{fig_id}.png"
    cls_attention_figure(images, maps, [name for name, _ in tiles], path,
                         title=f"{params['model']}: attention of each final-stage [cls] token ({model.source})")
    return path
