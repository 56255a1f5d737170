"""Training curves: loss per optimizer step with the learning-rate schedule on a twin axis.

The learning rate is drawn because every recipe here uses warm-up + cosine decay (DINO, EsViT, CypherViT):
a loss jump that lines up with the end of warm-up reads differently from one mid-cosine.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from histokit.viz.grid import new_figure, save_figure

REQUIRED_KEYS = ("epoch", "step", "loss")
SMOOTH_ABOVE = 200  # with more points than this, a rolling mean is drawn over the (faint) raw loss


def _history_frame(history: Sequence[Mapping]):
    import pandas as pd

    if not history:
        raise ValueError("history is empty: expected a list of {epoch, step, loss, lr} records")
    for i, record in enumerate(history):
        if not isinstance(record, Mapping):
            raise ValueError(f"history[{i}] must be a dict, got {type(record).__name__}")
        missing = [key for key in REQUIRED_KEYS if key not in record]
        if missing:
            raise ValueError(f"history[{i}] lacks {missing}; every record needs {list(REQUIRED_KEYS)} (lr optional)")
    df = pd.DataFrame([{key: record.get(key, math.nan) for key in (*REQUIRED_KEYS, "lr")} for record in history])
    for key in (*REQUIRED_KEYS, "lr"):
        values = pd.to_numeric(df[key], errors="coerce")
        if values.isna().sum() > df[key].isna().sum():
            row = int(np.flatnonzero(values.isna() & df[key].notna())[0])
            raise ValueError(f"history[{row}][{key!r}] must be a number, got {df[key].iloc[row]!r}")
        df[key] = values
    return df.sort_values("step", kind="stable").reset_index(drop=True)


def loss_curve(history: Sequence[Mapping], path: str | os.PathLike | None, title: str = "Training loss", *,
               loss_label: str = "loss") -> Figure:
    """Loss (left axis) and learning rate (right axis, dashed) against the optimizer step.

    ``history`` is the training engine's log: one dict per logged step with ``epoch``, ``step``, ``loss`` and
    ``lr`` (lr may be absent, then no lr axis). Epoch boundaries are marked with faint vertical lines. Non-finite
    losses (a diverged step) leave a gap and are counted in the title rather than hidden.
    """
    df = _history_frame(history)
    fig = new_figure(8.0, 4.2)
    ax = fig.subplots()
    lines = []
    if len(df) > SMOOTH_ABOVE:
        window = max(5, len(df) // 50)
        ax.plot(df["step"], df["loss"], color="#4c72b0", alpha=0.25, linewidth=0.8)
        smooth = df["loss"].rolling(window, min_periods=1, center=True).mean()
        lines += ax.plot(df["step"], smooth, color="#4c72b0", linewidth=1.8,
                         label=f"{loss_label} (rolling mean of {window} logs)")
    else:
        lines += ax.plot(df["step"], df["loss"], color="#4c72b0", linewidth=1.6, marker="o" if len(df) <= 30 else None,
                         markersize=3, label=loss_label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(loss_label, color="#4c72b0")
    ax.grid(alpha=0.3)

    # Faint line where each new epoch starts (skipped for one-epoch runs).
    starts = df.loc[df["epoch"].diff().fillna(0) != 0, "step"]
    for step in starts:
        ax.axvline(step, color="grey", alpha=0.35, linewidth=0.8, linestyle=":")
    n_epochs = df["epoch"].nunique()

    if df["lr"].notna().any():
        ax_lr = ax.twinx()
        lines += ax_lr.plot(df["step"], df["lr"], color="#dd8452", linestyle="--", linewidth=1.4,
                            label="learning rate")
        ax_lr.set_ylabel("learning rate", color="#dd8452")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax_lr.set_ylim(bottom=0)
    ax.legend(handles=lines, loc="upper right", fontsize=9)

    n_bad = int((~np.isfinite(df["loss"])).sum())
    subtitle = f"{n_epochs} epoch{'s' if n_epochs != 1 else ''}, {len(df)} logged steps"
    if n_bad:
        subtitle += f", {n_bad} non-finite loss value{'s' if n_bad != 1 else ''} not drawn"
    ax.set_title(f"{title}\n{subtitle}", fontsize=11)
    return save_figure(fig, path)
