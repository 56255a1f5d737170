"""Near-duplicate pairs of the leakage audit, shown as images: each test tile beside the training tile it nearly
copies, with their cosine similarity, so a reader can judge by eye whether a high score is a real duplicate.

``pairs`` is the output of :func:`histokit.evaluation.leakage.near_duplicates` (``test_idx``, ``train_idx``,
``cosine``); the ``n`` most similar pairs are drawn, four pairs to a row.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any, Optional

from matplotlib.figure import Figure

from histokit.viz.grid import hide_ticks, load_tile, new_figure, save_figure

PAIRS_PER_ROW = 4
_COLUMNS = ("test_idx", "train_idx", "cosine")


def _check_pairs(pairs: Any, n_test: int, n_train: int):
    missing = [c for c in _COLUMNS if c not in getattr(pairs, "columns", ())]
    if missing:
        raise ValueError(f"pairs must be a DataFrame with columns {_COLUMNS} (near_duplicates' output); "
                         f"it lacks {missing}")
    if len(pairs):
        if pairs["test_idx"].min() < 0 or pairs["test_idx"].max() >= n_test:
            raise ValueError(f"pairs.test_idx must index test_paths (0..{n_test - 1}), got "
                             f"{int(pairs['test_idx'].min())}..{int(pairs['test_idx'].max())}")
        if pairs["train_idx"].min() < 0 or pairs["train_idx"].max() >= n_train:
            raise ValueError(f"pairs.train_idx must index train_paths (0..{n_train - 1}), got "
                             f"{int(pairs['train_idx'].min())}..{int(pairs['train_idx'].max())}")


def duplicate_pairs_figure(pairs: Any, test_paths: Sequence[Any], train_paths: Sequence[Any],
                           path: str | os.PathLike | None, n: int = 8, *, threshold: Optional[float] = None,
                           title: str = "Near-duplicate test / train pairs") -> Figure:
    """The ``n`` highest-cosine pairs, test tile left, training tile right, cosine above each pair.

    ``test_paths`` / ``train_paths`` hold file paths or (H, W, 3) arrays, indexed by ``test_idx`` / ``train_idx``.
    With no pair at all the figure says so (and names ``threshold`` when given) rather than being left out, so a
    clean audit is visible in the report too.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got n={n}")
    _check_pairs(pairs, len(test_paths), len(train_paths))
    shown = pairs.sort_values("cosine", ascending=False).head(n)
    at = f" at cosine >= {threshold:g}" if threshold is not None else ""
    if not len(shown):
        fig = new_figure(6.0, 1.6)
        fig.text(0.5, 0.5, f"No test tile has a near-duplicate in the training split{at}.", ha="center",
                 va="center", fontsize=11)
        fig.suptitle(title, fontsize=12)
        return save_figure(fig, path)

    per_row = min(PAIRS_PER_ROW, len(shown))
    n_rows = math.ceil(len(shown) / per_row)
    fig = new_figure(3.6 * per_row, 2.2 * n_rows + 0.7)
    cells = fig.subfigures(n_rows, per_row, squeeze=False)
    for cell in cells.flat[len(shown):]:
        cell.set_visible(False)
    for cell, (_, pair) in zip(cells.flat, shown.iterrows()):
        t, g = int(pair["test_idx"]), int(pair["train_idx"])
        cell.suptitle(f"cosine {float(pair['cosine']):.4f}", fontsize=10)
        ax_test, ax_train = cell.subplots(1, 2)
        for ax, tile, label in ((ax_test, test_paths[t], f"test #{t}"), (ax_train, train_paths[g], f"train #{g}")):
            ax.imshow(load_tile(tile))
            hide_ticks(ax)
            ax.set_xlabel(label, fontsize=9)
    shown_text = f"{len(shown)} of {len(pairs)} pair(s){at}, most similar first"
    fig.suptitle(f"{title}\n({shown_text})", fontsize=12)
    return save_figure(fig, path)
