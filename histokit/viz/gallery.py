"""Query + top-k retrieval gallery: Habijan et al. (EUSIPCO 2025) Fig. 2, LGFFEM (Sensors 2025) Fig. 3.

Each row is one query tile (framed blue) followed by its top-k retrieved tiles in rank order. A retrieved tile
is a hit when its class equals the query's class (the relevance rule of the retrieval metrics): hits are framed
green, misses red. The class name is written under every tile, so the figure reads without a colour legend.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from histokit.viz.grid import check_class_labels, hide_ticks, load_tile, new_figure, save_figure

QUERY_COLOR = "#1f5fbf"
HIT_COLOR = "#1a9850"
MISS_COLOR = "#d73027"
FRAME_WIDTH = 4.0


def _frame(ax, color: str) -> None:
    """Draw a coloured frame around an image axis (its four spines)."""
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_edgecolor(color)
        spine.set_linewidth(FRAME_WIDTH)


def retrieval_gallery(query_paths: Sequence[Any], query_labels: Sequence[int], gallery_paths: Sequence[Any],
                      gallery_labels: Sequence[int], ids: Any, classes: Sequence[str],
                      path: str | os.PathLike | None, k: int = 5, n_queries: int = 4, *,
                      query_indices: Sequence[int] | None = None, scores: Any = None,
                      score_label: str = "sim", title: str = "Query tiles and their top retrieved tiles") -> Figure:
    """Rows = queries, columns = query then its top-``k`` retrieved gallery tiles (hits green, misses red).

    ``ids`` is the (Q, >=k) index-search result into the gallery (FAISS returns -1 for "no result"; such a cell
    is left empty). ``query_paths`` / ``gallery_paths`` hold file paths or (H, W, 3) arrays. The first
    ``n_queries`` queries are shown unless ``query_indices`` picks them. ``scores`` (Q, >=k), if given,
    prints each tile's score next to its rank, prefixed by ``score_label`` ("sim" for inner product, "dist" for L2).
    """
    ids = np.asarray(ids)
    query_labels = np.asarray(query_labels)
    gallery_labels = np.asarray(gallery_labels)
    classes = list(classes)
    if ids.ndim != 2:
        raise ValueError(f"ids must be a (queries, k) array, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be integer gallery indices, got dtype {ids.dtype}")
    if k < 1 or k > ids.shape[1]:
        raise ValueError(f"k={k} must be between 1 and the {ids.shape[1]} columns of ids")
    if len(query_paths) != len(query_labels) or len(query_labels) != ids.shape[0]:
        raise ValueError(f"query_paths ({len(query_paths)}), query_labels ({len(query_labels)}) and the rows of "
                         f"ids ({ids.shape[0]}) must have the same length")
    if len(gallery_paths) != len(gallery_labels):
        raise ValueError(f"gallery_paths ({len(gallery_paths)}) and gallery_labels ({len(gallery_labels)}) "
                         "must have the same length")
    if ids.max(initial=-1) >= len(gallery_labels) or ids.min(initial=0) < -1:
        raise ValueError(f"ids must index the gallery (0..{len(gallery_labels) - 1}, or -1 for no result)")
    query_labels = check_class_labels("query_labels", query_labels, classes)
    gallery_labels = check_class_labels("gallery_labels", gallery_labels, classes)
    if scores is not None:
        scores = np.asarray(scores)
        if scores.shape[0] != ids.shape[0] or scores.shape[1] < k:
            raise ValueError(f"scores has shape {scores.shape}, expected ({ids.shape[0]}, >={k}) like ids")
    if query_indices is None:
        if n_queries < 1:
            raise ValueError(f"n_queries must be >= 1, got {n_queries}")
        query_indices = range(min(n_queries, ids.shape[0]))
    query_indices = [int(q) for q in query_indices]
    if any(q < 0 or q >= ids.shape[0] for q in query_indices) or not query_indices:
        raise ValueError(f"query_indices must be a non-empty selection of 0..{ids.shape[0] - 1}")

    n_rows = len(query_indices)
    # A narrow empty column separates the query from its results, as in Habijan et al. Fig. 2.
    fig = new_figure(1.9 * (k + 1) + 0.4, 2.4 * n_rows + 0.8)
    grid = fig.add_gridspec(n_rows, k + 2, width_ratios=[1, 0.12] + [1] * k)
    for row, q in enumerate(query_indices):
        q_label = int(query_labels[q])
        ax = fig.add_subplot(grid[row, 0], label=f"query{row}")
        query_tile = load_tile(query_paths[q])
        ax.imshow(query_tile)
        hide_ticks(ax)
        _frame(ax, QUERY_COLOR)
        ax.set_title("Query", fontsize=10, fontweight="bold", color=QUERY_COLOR)
        ax.set_xlabel(classes[q_label], fontsize=9)
        for rank in range(k):
            ax = fig.add_subplot(grid[row, rank + 2], label=f"query{row}_rank{rank + 1}")
            hide_ticks(ax)
            g = int(ids[q, rank])
            if g < 0:
                # Keep the cell the size of a tile so the row stays aligned, and say why it is empty.
                ax.imshow(np.full_like(query_tile, 255))
                ax.text(0.5, 0.5, "no result", transform=ax.transAxes, ha="center", va="center", color="grey")
                for spine in ax.spines.values():
                    spine.set_edgecolor("lightgrey")
                ax.set_title(f"#{rank + 1}", fontsize=9)
                continue
            g_label = int(gallery_labels[g])
            ax.imshow(load_tile(gallery_paths[g]))
            _frame(ax, HIT_COLOR if g_label == q_label else MISS_COLOR)
            rank_text = f"#{rank + 1}" + (f"  {score_label} {float(scores[q, rank]):.2f}" if scores is not None else "")
            ax.set_title(rank_text, fontsize=9)
            ax.set_xlabel(classes[g_label], fontsize=9, color=HIT_COLOR if g_label == q_label else MISS_COLOR)
    fig.suptitle(f"{title}\n(frame: green = same class as the query, red = different class)", fontsize=12)
    return save_figure(fig, path)
