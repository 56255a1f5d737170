"""Dataset overview figures for notebook 01: sample tiles per class, class counts.

Also home of the helpers every ``histokit.viz`` module shares: :func:`new_figure` (a figure outside pyplot's
figure list), :func:`save_figure` (atomic PNG write), :func:`load_tile` (path / array / PIL -> RGB uint8),
:func:`check_class_labels` and :func:`hide_ticks`. Every figure function writes its PNG (when given a path) and
returns the Figure, which a notebook displays.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from histokit.io import atomic_path

DEFAULT_DPI = 150


def new_figure(width: float, height: float) -> Figure:
    """A ``Figure`` with constrained layout, so titles, labels and legends never overlap.

    Made by pyplot, then at once removed from pyplot's figure list: creating it through pyplot loads the
    notebook's backend, which registers Jupyter's PNG display for figures (a bare ``Figure()`` in a kernel that
    never touched pyplot shows as text); closing it means nothing piles up in long runs and a notebook shows the
    returned figure exactly once.
    """
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(width, height), layout="constrained")
    plt.close(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike | None, dpi: int = DEFAULT_DPI) -> Figure:
    """Write ``fig`` as PNG to ``path`` atomically (temp file + rename) and return it; ``path=None`` only returns."""
    if path is None:
        return fig
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"figure path must end in .png, got {str(path)!r}")
    with atomic_path(path) as tmp:
        # The temp file ends in .tmp, so the format must be named explicitly.
        fig.savefig(tmp, format="png", dpi=dpi, facecolor="white")  # atomic_path gives it the usual umask mode
    return fig


def load_tile(source: Any) -> np.ndarray:
    """An image as an (H, W, 3) uint8 array, from a file path, a PIL image or an array.

    Arrays may be (H, W), (H, W, 3), (H, W, 4) uint8, or float in [0, 1]; alpha is dropped (tiles are opaque).
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, (str, os.PathLike)):
        try:
            with Image.open(source) as im:
                return np.asarray(im.convert("RGB"))
        except FileNotFoundError:
            raise FileNotFoundError(f"tile not found: {os.fspath(source)}") from None
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot read tile {os.fspath(source)}: {err}") from err
    if isinstance(source, Image.Image):
        return np.asarray(source.convert("RGB"))
    arr = np.asarray(source)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating) or arr.min() < 0 or arr.max() > 1:
            raise ValueError(f"image array must be uint8 or float in [0, 1], got {arr.dtype} "
                             f"in [{arr.min()}, {arr.max()}]")
        arr = (arr * 255).round().astype(np.uint8)
    return arr


def hide_ticks(ax) -> None:
    """Image axes: no ticks, no tick labels (axis labels stay usable for captions)."""
    ax.set_xticks([])
    ax.set_yticks([])


def check_class_labels(name: str, labels: Any, classes: Sequence[str]) -> np.ndarray:
    """``labels`` as an int array, each a valid index into ``classes``; the error names the argument."""
    labels = np.asarray(labels)
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must be integer indices into classes, got dtype {labels.dtype}")
    bad = labels[(labels < 0) | (labels >= len(classes))]
    if bad.size:
        raise ValueError(f"{name} holds {sorted(set(bad.tolist()))[:5]}, outside classes (0..{len(classes) - 1})")
    return labels.astype(np.int64)


class _DatasetImages:
    """``[i]`` -> the image of ``dataset[i]`` (item 0), for datasets without files (PanNuke's memory-mapped npy)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i][0]


def _paths_and_labels(data: Any) -> tuple[Sequence[Any], np.ndarray]:
    """Accept a PatchDataset (``.paths`` + ``.labels``), an ImageFolder (``.samples``) or a (paths, labels) pair.

    A dataset whose ``.paths`` is None (images not stored as files) is read through ``dataset[i][0]``.
    """
    if hasattr(data, "paths") and hasattr(data, "labels"):
        paths = _DatasetImages(data) if data.paths is None else list(data.paths)
        labels = data.labels
    elif hasattr(data, "samples"):
        paths, labels = [s[0] for s in data.samples], [s[1] for s in data.samples]
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        paths, labels = list(data[0]), data[1]
    else:
        raise ValueError("dataset_or_paths_labels must be a dataset with .paths and .labels, an ImageFolder "
                         f"(.samples) or a (paths, labels) pair; got {type(data).__name__}")
    labels = np.asarray(labels)
    if len(paths) != len(labels):
        raise ValueError(f"dataset_or_paths_labels: {len(paths)} paths but {len(labels)} labels")
    return paths, labels


def sample_grid(dataset_or_paths_labels: Any, classes: Sequence[str], per_class: int = 4,
                path: str | os.PathLike | None = None, seed: int = 0, *,
                title: str = "Sample tiles per class") -> Figure:
    """A grid of tiles, one row per class, ``per_class`` tiles drawn at random (``seed``) from that class.

    Row labels give the class name and how many tiles the class has; a class with fewer tiles than
    ``per_class`` leaves its remaining cells empty.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    paths, labels = _paths_and_labels(dataset_or_paths_labels)
    classes = list(classes)
    if len(classes) == 0:
        raise ValueError("classes must name at least one class")
    labels = check_class_labels("labels", labels, classes)

    rng = np.random.default_rng(seed)
    fig = new_figure(1.6 * per_class + 1.6, 1.6 * len(classes) + 0.6)
    axes = fig.subplots(len(classes), per_class, squeeze=False)
    for row, name in enumerate(classes):
        members = np.flatnonzero(labels == row)
        chosen = rng.choice(members, size=min(per_class, members.size), replace=False) if members.size else []
        for col in range(per_class):
            ax = axes[row, col]
            # Ticks and frame off but the axis kept on, so the row label (a ylabel) stays visible.
            hide_ticks(ax)
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col < len(chosen):
                ax.imshow(load_tile(paths[int(chosen[col])]))
        axes[row, 0].set_ylabel(f"{name}\n(n={members.size})", rotation=0, ha="right", va="center", fontsize=10)
    fig.suptitle(title, fontsize=13)
    return save_figure(fig, path)


def class_counts_bar(counts: Mapping[str, Any], path: str | os.PathLike | None = None, *,
                     title: str | None = None, xlabel: str = "number of tiles") -> Figure:
    """Horizontal bars of tiles per class, each bar annotated with its count.

    ``counts`` is ``{class_name: n}``, or ``{split_name: {class_name: n}}`` for bars grouped by split
    (e.g. train / val / test), coloured by split with a legend.
    """
    import pandas as pd
    import seaborn as sns

    if not counts:
        raise ValueError("counts is empty")
    nested = all(isinstance(v, Mapping) for v in counts.values())
    if nested:
        rows = [(str(split), str(cls), n) for split, per_cls in counts.items() for cls, n in per_cls.items()]
    else:
        rows = [("all", str(cls), n) for cls, n in counts.items()]
    df = pd.DataFrame(rows, columns=["split", "class", "count"])
    numeric = pd.to_numeric(df["count"], errors="coerce")
    if numeric.isna().any() or (numeric < 0).any():
        bad = df.loc[numeric.isna() | (numeric < 0)].iloc[0]
        raise ValueError(f"counts[{bad['class']!r}] must be a non-negative number, got {bad['count']!r}")
    df["count"] = numeric

    n_classes = df["class"].nunique()
    n_splits = df["split"].nunique()
    fig = new_figure(7.0, 1.0 + 0.3 * n_classes * (1 + 0.45 * (n_splits - 1)))
    ax = fig.subplots()
    sns.barplot(data=df, y="class", x="count", hue="split" if nested else None, ax=ax, orient="h",
                color=None if nested else "#4c72b0", errorbar=None)
    for container in ax.containers:
        ax.bar_label(container, fmt="%d", padding=3, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # tiles are counted, never fractional
    ax.margins(x=0.12)  # room for the count labels at the end of the longest bar
    if nested:
        # Outside the axes so it never covers a bar; constrained layout makes room for it.
        ax.legend(title="split", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
        title = title if title is not None else "Tiles per class and split"
    ax.set_title(title if title is not None else "Tiles per class")
    return save_figure(fig, path)
