"""Methods x datasets heat map of one metric (e.g. Habijan et al. Table I mAP@10 per dataset), via seaborn."""
from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure

from histokit.viz.grid import new_figure, save_figure


def metric_heatmap(df, path: str | os.PathLike | None, title: str = "Retrieval results", fmt: str = ".1f", *,
                   metric_label: str = "", higher_is_better: bool = True, cmap: str = "viridis") -> Figure:
    """Annotated heat map of ``df`` (rows = methods, columns = datasets), one cell per result.

    ``metric_label`` names the colour bar (e.g. "mAP@10 (%)"). For lower-is-better metrics (MSE, latency) pass
    ``higher_is_better=False``: the colour map is reversed so the best cell always has the same colour.
    Missing results (NaN) are left blank.
    """
    import pandas as pd
    import seaborn as sns

    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"df must be a pandas DataFrame (methods x datasets), got {type(df).__name__}")
    if df.empty:
        raise ValueError("df is empty: expected rows = methods, columns = datasets")
    values = df.apply(pd.to_numeric, errors="coerce")
    for column in df.columns:
        not_numeric = values[column].isna() & df[column].notna()
        if not_numeric.any():
            row = df.index[np.flatnonzero(not_numeric.to_numpy())[0]]
            raise ValueError(f"df[{column!r}] at row {row!r} is not a number: {df.at[row, column]!r}")
    try:
        format(1.0, fmt)
    except ValueError as err:
        raise ValueError(f"fmt {fmt!r} is not a number format (e.g. '.1f', '.3f')") from err

    n_rows, n_cols = values.shape
    fig = new_figure(max(4.5, 1.25 * n_cols + 3.0), max(2.5, 0.5 * n_rows + 1.4))
    ax = fig.subplots()
    ax.set_facecolor("#e0e0e0")  # missing results (NaN) are masked by seaborn and show this grey
    sns.heatmap(values.astype(float), annot=True, fmt=fmt, cmap=cmap if higher_is_better else f"{cmap}_r",
                linewidths=0.5, linecolor="white", cbar_kws={"label": metric_label}, ax=ax,
                annot_kws={"fontsize": 10})
    ax.set_xlabel(str(df.columns.name or "dataset"))
    ax.set_ylabel(str(df.index.name or "method"))
    ax.tick_params(axis="x", labelrotation=0 if n_cols <= 4 else 30)
    ax.tick_params(axis="y", labelrotation=0)
    notes = [metric_label] if metric_label else []
    notes.append("higher is better" if higher_is_better else "lower is better")
    if values.isna().to_numpy().any():
        notes.append("grey = no result")
    ax.set_title(f"{title}\n({', '.join(notes)})", fontsize=11)
    return save_figure(fig, path)
