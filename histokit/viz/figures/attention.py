"""Attention figures: DINO's per-head [CLS] maps (Chen & Krishnan) and CypherViT's per-[cls]-token maps (Ye et al.
Fig. 2). The tile is shown as the model sees it (resized to the recipe's image size, stain-normalized if the
dataset is), and the maps are the model's own, upsampled for the overlay. Neither reads stage 04's features."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from .base import Figure


def tiles_per_class(ctx, dataset_key: str, omit=()) -> list:
    """The first tile of each class (dataset order), as (class name, PIL image) pairs."""
    from ...stages.common import load_recipe_dataset

    dataset = load_recipe_dataset(ctx, dataset_key)
    picked = {}
    for i, label in enumerate(dataset.labels):
        name = dataset.classes[int(label)]
        if name not in picked and name not in omit:
            picked[name] = dataset.image_loader(dataset.samples[i])
    return list(picked.items())


def model_input(ctx, model, image):
    """(the model's input batch of one, the tile as shown: RGB resized to the recipe's image size)."""
    from ...data.transforms import eval_transform

    size = ctx.recipe.image_size
    x = eval_transform(size, model.mean, model.std)(image).unsqueeze(0)
    shown = np.asarray(image.convert("RGB").resize((size, size)))
    return x, shown


@dataclass(frozen=True)
class AttentionHeads(Figure):
    """Per-head attention of the last block's [CLS] token for one tile per listed class (``classes``: those of
    them the dataset has; none listed or none present: the first class's tile). The first is ``<id>.png``, the
    others ``figures/<id>_<class>.png``."""
    model: str
    dataset: str
    classes: tuple = ()

    kind: ClassVar[str] = "attention_heads"
    needs_features: ClassVar[bool] = False

    def run(self, ctx) -> Path:
        import torch

        from ...stages.common import load_model
        from ..attention import attention_heads_figure

        model = load_model(ctx, self.model, self.dataset, scope=self.id)
        tiles = dict(tiles_per_class(ctx, self.dataset))
        wanted = [c for c in (self.classes or list(tiles)) if c in tiles] or list(tiles)[:1]
        paths = []
        for i, name in enumerate(wanted):
            x, shown = model_input(ctx, model, tiles[name])
            with torch.no_grad():
                attn = model.encoder.last_attention(x)[0].numpy()
            path = self.path(ctx) if i == 0 else ctx.results_dir / f"figures/{self.id}_{name.lower()}.png"
            attention_heads_figure(shown, attn, path, title=f"{self.model}: [CLS] attention per head, "
                                                            f"last block — {name} tile ({model.source})")
            paths.append(path)
        return paths[0]


@dataclass(frozen=True)
class ClsAttention(Figure):
    """Final-stage attention of every CypherViT [cls] token, one tile per class but those in ``omit``."""
    model: str
    dataset: str
    omit: tuple = ()

    kind: ClassVar[str] = "cls_attention"
    needs_features: ClassVar[bool] = False

    def run(self, ctx) -> Path:
        import torch

        from ...stages.common import load_model
        from ..attention import cls_attention_figure

        model = load_model(ctx, self.model, self.dataset, scope=self.id)
        tiles = tiles_per_class(ctx, self.dataset, omit=tuple(self.omit))
        images, maps = [], []
        for _, image in tiles:
            x, shown = model_input(ctx, model, image)
            with torch.no_grad():
                maps.append(model.encoder.attention_maps(x)[-1][0].numpy())
            images.append(shown)
        path = self.path(ctx)
        cls_attention_figure(images, maps, [name for name, _ in tiles], path,
                             title=f"{self.model}: attention of each final-stage [cls] token ({model.source})")
        return path
