"""Attention maps over tiles.

* :func:`attention_heads_figure` — Chen & Krishnan (2022): in a DINO ViT-S/16 "the different attention heads learn
  distinct morphological phenotypes". Shows the last block's [CLS]->patch attention of every head, upsampled to
  the tile as in DINO's ``visualize_attention.py`` (nearest-neighbour, one patch = one block), plus the head mean.
* :func:`cls_attention_figure` — Ye et al. (Sci. Rep. 2024) Fig. 2: CypherViT's final-stage multi-[cls]-token
  attention, "interpolated" to the image and overlaid on it; rows = tissue classes, one column per [cls] token.

The maps are computed by the model code (``forward_tokens`` / the attention hooks); this module only draws them.
Each map is min-max scaled on its own (what is compared is *where* a head looks, not its absolute mass).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from histokit.viz.grid import hide_ticks, load_tile, new_figure, save_figure

MAX_COLUMNS = 8  # tile + 6 ViT-S heads + mean fit one row; ViT-B's 14 panels wrap into 2 rows of 7
COLORBAR_LABEL = "relative attention\n(min-max per map)"


def _as_maps(attn: Any, name: str) -> np.ndarray:
    maps = np.asarray(attn, dtype=np.float32)
    if maps.ndim != 3 or 0 in maps.shape:
        raise ValueError(f"{name} must be a (maps, h, w) array, got shape {maps.shape}")
    if not np.isfinite(maps).all():
        raise ValueError(f"{name} contains NaN/inf")
    return maps


def upsample_maps(maps: np.ndarray, size: tuple[int, int], mode: str = "nearest") -> np.ndarray:
    """(M, h, w) patch-grid maps -> (M, H, W) at image resolution (torch ``interpolate``), each scaled to [0, 1]."""
    import torch
    import torch.nn.functional as F

    if mode not in ("nearest", "bilinear", "bicubic"):
        raise ValueError(f"upsample mode must be 'nearest', 'bilinear' or 'bicubic', got {mode!r}")
    t = torch.from_numpy(np.ascontiguousarray(maps))[None]
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    up = F.interpolate(t, size=size, mode=mode, **kwargs)[0].numpy()
    lo = up.min(axis=(1, 2), keepdims=True)
    span = up.max(axis=(1, 2), keepdims=True) - lo
    # A constant map (span 0) stays 0 rather than dividing by zero.
    return np.divide(up - lo, span, out=np.zeros_like(up), where=span > 0)


def _overlay(ax, image: np.ndarray, heat: np.ndarray, cmap: str, alpha: float) -> None:
    ax.imshow(image)
    ax.imshow(heat, cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0, interpolation="nearest")
    hide_ticks(ax)


def _colorbar(fig: Figure, axes, cmap: str, n_rows: int) -> None:
    """One colour bar for all overlays, about two rows tall whatever the figure height."""
    fig.colorbar(ScalarMappable(norm=Normalize(0, 1), cmap=colormaps[cmap]), ax=axes,
                 shrink=min(0.8, 2.0 / n_rows), label=COLORBAR_LABEL, ticks=[0, 0.5, 1])


def attention_heads_figure(image: Any, attn: Any, path: str | os.PathLike | None,
                           title: str = "Self-attention of each head ([CLS] to patches, last block)", *,
                           upsample: str = "nearest", cmap: str = "jet", alpha: float = 0.5) -> Figure:
    """The tile, then one overlay per attention head, then the mean over heads (Chen & Krishnan; DINO).

    ``image`` is (H, W, 3) uint8 (or a path); ``attn`` is (heads, h, w) on the patch grid, e.g. the last block's
    [CLS] row reshaped to 14 x 14 for ViT-S/16 at 224 px.
    """
    image = load_tile(image)
    maps = _as_maps(attn, "attn")
    size = image.shape[:2]
    heads = upsample_maps(maps, size, upsample)
    mean = upsample_maps(maps.mean(axis=0, keepdims=True), size, upsample)[0]
    n_panels = maps.shape[0] + 2
    n_rows = int(np.ceil(n_panels / MAX_COLUMNS))
    n_cols = int(np.ceil(n_panels / n_rows))  # balanced rows, no near-empty last row
    fig = new_figure(2.2 * n_cols + 1.2, 2.4 * n_rows + 0.7)
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    axes[0].imshow(image)
    hide_ticks(axes[0])
    axes[0].set_title("Tile", fontsize=10, fontweight="bold")
    for i, heat in enumerate(heads):
        _overlay(axes[i + 1], image, heat, cmap, alpha)
        axes[i + 1].set_title(f"Head {i + 1}", fontsize=10)
    _overlay(axes[n_panels - 1], image, mean, cmap, alpha)
    axes[n_panels - 1].set_title("Mean of heads", fontsize=10, fontweight="bold")
    for ax in axes[n_panels:]:
        ax.set_axis_off()
    _colorbar(fig, axes, cmap, n_rows)
    fig.suptitle(title, fontsize=12)
    return save_figure(fig, path)


def cls_attention_figure(images: Sequence[Any], attn: Sequence[Any], classes: Sequence[str],
                         path: str | os.PathLike | None,
                         title: str = "Attention of each [cls] token, final stage (CypherViT)", *,
                         upsample: str = "bilinear", cmap: str = "jet", alpha: float = 0.5) -> Figure:
    """Rows = classes; columns = the tile, then its attention overlay for each [cls] token (Ye et al. Fig. 2).

    ``images[i]`` is the (H, W, 3) uint8 tile shown for ``classes[i]``; ``attn[i]`` its (n_cls, h, w) maps.
    Ye et al. interpolate the maps to the image, hence bilinear by default.
    """
    classes = list(classes)
    if not (len(images) == len(attn) == len(classes)) or not classes:
        raise ValueError(f"images ({len(images)}), attn ({len(attn)}) and classes ({len(classes)}) must be "
                         "non-empty and of the same length (one tile per class)")
    tiles = [load_tile(im) for im in images]
    maps = [_as_maps(a, f"attn[{i}] ({classes[i]})") for i, a in enumerate(attn)]
    n_tokens = maps[0].shape[0]
    for i, m in enumerate(maps):
        if m.shape[0] != n_tokens:
            raise ValueError(f"attn[{i}] ({classes[i]}) has {m.shape[0]} [cls] maps but attn[0] has {n_tokens}; "
                             "every class needs the same [cls] tokens")
    fig = new_figure(2.0 * (n_tokens + 1) + 2.4, 2.0 * len(classes) + 0.8)
    axes = fig.subplots(len(classes), n_tokens + 1, squeeze=False)
    for row, (name, tile, m) in enumerate(zip(classes, tiles, maps)):
        heat = upsample_maps(m, tile.shape[:2], upsample)
        axes[row, 0].imshow(tile)
        hide_ticks(axes[row, 0])
        axes[row, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=10)
        for j in range(n_tokens):
            _overlay(axes[row, j + 1], tile, heat[j], cmap, alpha)
    axes[0, 0].set_title("Tile", fontsize=10, fontweight="bold")
    for j in range(n_tokens):
        axes[0, j + 1].set_title(f"[cls] {j + 1}", fontsize=10)
    _colorbar(fig, axes, cmap, len(classes))
    fig.suptitle(title, fontsize=12)
    return save_figure(fig, path)
