"""2-D projections of embeddings: Ye et al. (Sci. Rep. 2024) Fig. 1, LGFFEM (Sensors 2025) Fig. 7.

Ye et al. plot UMAP "with the default parameters (neighbors = 15, dist = 0.1)" on the CRC embeddings of each
pre-trained model, one panel per model; LGFFEM colours a 2-D projection of the Kimia Path24C test embeddings by
class (scan). Both go through umap-learn here. A projection is a picture, not a metric: no number is read off it.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from ..progress import progress_bar

from histokit.viz.grid import check_class_labels, new_figure, save_figure

MIN_UMAP_SAMPLES = 4  # below this umap-learn's spectral initialisation fails (k >= N); checked in the tests


def _as_features(features: Any, name: str = "features") -> np.ndarray:
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a (samples, dim) array, got shape {x.shape}")
    bad_rows = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad_rows.size:
        raise ValueError(f"{name} has {bad_rows.size} rows with NaN/inf (first: row {bad_rows[0]})")
    return x


def umap_projection(features: Any, n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0, *,
                    metric: str = "euclidean", n_epochs: int | None = None) -> tuple[np.ndarray, dict]:
    """UMAP of ``features`` (N, D) to (N, 2) with Ye et al.'s settings (n_neighbors = 15, min_dist = 0.1).

    Returns ``(coords, info)``. UMAP needs ``n_neighbors < N``: with fewer samples n_neighbors is lowered to
    ``N - 1`` and ``info["note"]`` says so (``info["n_neighbors"]`` is the value used); fewer than
    ``MIN_UMAP_SAMPLES`` points raise ``ValueError``. ``seed`` makes the layout reproducible (umap-learn then
    runs single-threaded). ``n_epochs=None`` keeps umap-learn's default (200 for large, 500 for small data).
    """
    import umap

    x = _as_features(features)
    n = x.shape[0]
    if n < MIN_UMAP_SAMPLES:
        raise ValueError(f"UMAP needs at least {MIN_UMAP_SAMPLES} samples, got {n} rows in features")
    if n_neighbors < 2:
        raise ValueError(f"n_neighbors must be >= 2, got {n_neighbors}")
    used = min(n_neighbors, n - 1)
    info: dict[str, Any] = {"method": "umap", "n_neighbors_requested": n_neighbors, "n_neighbors": used,
                            "min_dist": min_dist, "metric": metric, "seed": seed, "n_samples": n, "note": ""}
    if used < n_neighbors:
        info["note"] = f"n_neighbors lowered from {n_neighbors} to {used}: only {n} samples"
    reducer = umap.UMAP(n_neighbors=used, min_dist=min_dist, metric=metric, random_state=seed,
                        n_epochs=n_epochs, n_components=2, n_jobs=1)
    with warnings.catch_warnings():
        # Fixed seed forces n_jobs=1 (we ask for it) and umap says so; tiny sets warn about disconnected points.
        warnings.filterwarnings("ignore", message=r"n_jobs value .* overridden", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*disconnected", category=UserWarning)
        coords = reducer.fit_transform(x)
    return np.asarray(coords, dtype=np.float32), info


MARKERS = ("o", "s", "^", "D", "v", "P")


def group_styles(n: int) -> list[tuple[tuple[float, float, float], str]]:
    """A distinct (colour, marker) per group: the 10 tab10 colours, then the same colours with a new marker.

    Why markers: beyond ~10 groups (Kimia Path24C has 24 scans) neighbouring hues of any single palette become
    indistinguishable; colour x shape stays readable up to 60. Past that, evenly spaced husl hues.
    """
    import seaborn as sns

    tab10 = sns.color_palette("tab10", 10)
    if n <= len(tab10) * len(MARKERS):
        return [(tab10[i % 10], MARKERS[i // 10]) for i in range(n)]
    return [(color, "o") for color in sns.color_palette("husl", n)]


def _scatter_groups(ax, coords: np.ndarray, codes: np.ndarray, names: Sequence[str], styles: list,
                    point_size: float) -> None:
    """One scatter call per group so each group gets a legend entry with its readable name."""
    for code, name in enumerate(names):
        member = codes == code
        if member.any():
            color, marker = styles[code]
            ax.scatter(coords[member, 0], coords[member, 1], s=point_size, color=color, marker=marker,
                       label=name, alpha=0.8, linewidths=0, rasterized=True)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")


def _point_size(n: int) -> float:
    """Large dots for a handful of points, small ones for 100k (CRC) so clusters stay visible."""
    return float(np.clip(3000.0 / max(n, 1), 1.0, 40.0))


def _legend_columns(n: int) -> int:
    return 1 if n <= 12 else 2 if n <= 30 else 3


def embedding_panels(panels: Mapping[str, tuple[Any, Any]], classes: Sequence[str],
                     path: str | os.PathLike | None, title: str = "UMAP of feature embeddings", *,
                     n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0, n_epochs: int | None = None,
                     legend_title: str = "tissue class", progress: bool = True) -> Figure:
    """One UMAP panel per method, points coloured by class, one shared legend (Ye et al. Fig. 1).

    ``panels`` maps a method name (panel title) to ``(features (N, D), labels (N,))`` with labels indexing
    ``classes``. Every panel uses the same class colours. A panel whose n_neighbors had to be lowered says so.
    """
    if not panels:
        raise ValueError("panels is empty: give at least one method_name -> (features, labels)")
    classes = list(classes)
    styles = group_styles(len(classes))
    n_cols = min(len(panels), 3)
    n_rows = int(np.ceil(len(panels) / n_cols))
    fig = new_figure(4.2 * n_cols + 2.2, 4.0 * n_rows + 0.6)
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax, (method, pair) in zip(axes, progress_bar(panels.items(), desc="UMAP panels", disable=not progress)):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(f"panels[{method!r}] must be a (features, labels) pair")
        features, labels = pair
        labels = np.asarray(labels)
        x = _as_features(features, f"panels[{method!r}] features")
        if labels.shape != (x.shape[0],):
            raise ValueError(f"panels[{method!r}]: {x.shape[0]} feature rows but labels of shape {labels.shape}")
        labels = check_class_labels(f"panels[{method!r}] labels", labels, classes)
        coords, info = umap_projection(x, n_neighbors, min_dist, seed, n_epochs=n_epochs)
        _scatter_groups(ax, coords, labels, classes, styles, _point_size(len(labels)))
        ax.set_title(method if not info["note"] else f"{method}\n({info['note']})", fontsize=11)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    fig.legend(handles=_legend_handles(classes, styles), loc="outside right center", title=legend_title,
               fontsize=9, ncols=_legend_columns(len(classes)))
    fig.suptitle(title, fontsize=13)
    return save_figure(fig, path)


def _legend_handles(names: Sequence[str], styles: list) -> list:
    """Legend markers of one fixed size, whatever the scatter point size."""
    from matplotlib.lines import Line2D

    return [Line2D([], [], marker=marker, linestyle="", markersize=7, color=color, label=str(name))
            for name, (color, marker) in zip(names, styles)]


def projection_plot(features: Any, groups: Sequence[Any], path: str | os.PathLike | None,
                    title: str = "2-D projection of embeddings", *, group_names: Sequence[str] | None = None,
                    legend_title: str = "class", n_neighbors: int = 15, min_dist: float = 0.1,
                    seed: int = 0, n_epochs: int | None = None) -> Figure:
    """A single UMAP scatter coloured by group (LGFFEM Fig. 7: Kimia Path24C test embeddings, one colour per scan).

    ``groups`` holds one entry per row of ``features``: integer codes indexing ``group_names`` when given, else
    any labels (scan ids, names) used as they are in the legend, sorted.
    """
    x = _as_features(features)
    groups = np.asarray(groups)
    if groups.shape != (x.shape[0],):
        raise ValueError(f"groups must have one entry per feature row ({x.shape[0]}), got shape {groups.shape}")
    if group_names is not None:
        names = [str(g) for g in group_names]
        codes = groups.astype(np.int64)
        bad = codes[(codes < 0) | (codes >= len(names))]
        if bad.size:
            raise ValueError(f"groups holds {sorted(set(bad.tolist()))[:5]}, outside group_names "
                             f"(0..{len(names) - 1})")
    else:
        uniques, codes = np.unique(groups, return_inverse=True)
        names = [str(u) for u in uniques]
    coords, info = umap_projection(x, n_neighbors, min_dist, seed, n_epochs=n_epochs)
    styles = group_styles(len(names))
    fig = new_figure(8.0, 6.0)
    ax = fig.subplots()
    _scatter_groups(ax, coords, codes, names, styles, _point_size(x.shape[0]))
    ax.set_title(title if not info["note"] else f"{title}\n({info['note']})", fontsize=12)
    fig.legend(handles=_legend_handles(names, styles), loc="outside right center", title=legend_title,
               fontsize=8, ncols=_legend_columns(len(names)))
    return save_figure(fig, path)
