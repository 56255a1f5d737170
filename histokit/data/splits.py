"""Train / val / test splits: stratified by label, group-aware when groups are given, reproducible from a seed,
stored as JSON next to a run so every stage reads the same indices.

Fallbacks for tiny data (documented because the smoke profile and Table 2's 1 % fractions hit them):

- Ungrouped: sklearn ``train_test_split(stratify=labels)`` in two steps (train vs rest, then val vs test).
  Stratification needs >= 2 members per class in the part being split and a held-out part at least as large as
  the number of classes. A class with a single member in the part being split stays on the kept side: a
  1-sample class goes to **train only** (it can be retrieved, never queried); a class left with one member in the
  held-out part goes to test rather than val. If sklearn still cannot stratify (e.g. 10 % of 30 samples is fewer
  than the 8 classes), that step falls back to a seeded unstratified split and warns.
- Grouped: ``StratifiedGroupKFold`` with ``n_folds = round(1 / smallest non-zero fraction)`` folds
  (0.8/0.1/0.1 -> 10 folds: 1 test, 1 val, 8 train), so no group is in two splits and label proportions are kept as
  far as the groups allow. With fewer groups than folds, ``n_folds`` drops to the number of groups; fewer groups
  than non-empty splits is an error.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from ..io import atomic_write_json
from .errors import SplitMismatchError

SPLIT_NAMES = {2: ("train", "test"), 3: ("train", "val", "test")}


def _check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) not in SPLIT_NAMES:
        raise ValueError(f"fractions must have 2 (train, test) or 3 (train, val, test) entries, got {fr}")
    if any(f < 0 for f in fr) or fr[0] <= 0 or not np.isclose(sum(fr), 1.0):
        raise ValueError(f"fractions must be >= 0, train > 0, and sum to 1; got {fr}")
    return fr


def _stratified_two_way(idx: np.ndarray, labels: np.ndarray, held_fraction: float, seed: int):
    """Split ``idx`` into (kept, held) with ``held_fraction`` held out, stratified where possible."""
    if held_fraction <= 0:
        return idx, idx[:0]
    if held_fraction >= 1:
        return idx[:0], idx
    y = labels[idx]
    values, counts = np.unique(y, return_counts=True)
    rare = np.isin(y, values[counts < 2])  # cannot be stratified: keep them on the training side
    common = idx[~rare]
    try:
        kept, held = train_test_split(common, test_size=held_fraction, stratify=labels[common], random_state=seed)
    except ValueError as exc:  # held-out part smaller than the number of classes, or too few samples
        if len(common) < 2:
            return idx, idx[:0]
        warnings.warn(f"make_split: stratification impossible ({exc}); using an unstratified seeded split")
        kept, held = train_test_split(common, test_size=held_fraction, random_state=seed)
    return np.concatenate([kept, idx[rare]]), held


def _grouped(labels: np.ndarray, groups: np.ndarray, fractions: tuple[float, ...], seed: int):
    n_groups = len(np.unique(groups))
    nonzero = [f for f in fractions if f > 0]
    if n_groups < len(nonzero):
        raise ValueError(f"make_split: {n_groups} group(s) cannot fill {len(nonzero)} disjoint splits")
    n_folds = min(max(2, int(round(1 / min(nonzero)))), n_groups)
    # StratifiedGroupKFold refuses more folds than the largest class has members: fewer, larger folds then (a tiny
    # dataset, a rehearsal's capped one); held-out splits still get whole groups, train at least one fold
    n_folds = max(2, min(n_folds, int(np.unique(labels, return_counts=True)[1].max())))
    # held-out splits get whole folds (at least one each when their fraction > 0); train keeps the rest
    held_folds = [max(1, int(round(f * n_folds))) if f > 0 else 0 for f in fractions[1:]]
    while sum(held_folds) >= n_folds:  # never leave train without a fold
        held_folds[int(np.argmax(held_folds))] -= 1
    cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")  # expected on tiny classes
        folds = [test for _, test in cv.split(np.zeros(len(labels)), labels, groups)]
    out, start = [], 0
    for k in held_folds:
        out.append(np.concatenate(folds[start:start + k]) if k else np.array([], dtype=np.int64))
        start += k
    train = np.concatenate(folds[start:]) if start < n_folds else np.array([], dtype=np.int64)
    return [train] + out


def make_split(labels, groups: Optional[Sequence] = None, fractions: Sequence[float] = (0.8, 0.1, 0.1),
               seed: int = 0) -> dict[str, np.ndarray]:
    """``{"train", "val", "test"}`` (or ``{"train", "test"}`` for 2 fractions) -> sorted int64 index arrays.

    Stratified by ``labels``; with ``groups`` no group is in two splits. See the module docstring for the fallbacks.
    """
    labels = np.asarray(labels)
    fr = _check_fractions(fractions)
    names = SPLIT_NAMES[len(fr)]
    n = len(labels)
    if n == 0:
        raise ValueError("make_split: no samples")
    strat = labels if labels.dtype.kind in "iub" else np.zeros(n, dtype=np.int64)  # regression: no strata
    if groups is not None:
        groups = np.asarray([str(g) for g in groups])
        if len(groups) != n:
            raise ValueError(f"make_split: {len(groups)} groups for {n} labels")
        parts = _grouped(strat, groups, fr, seed)
    else:
        idx = np.arange(n)
        train, rest = _stratified_two_way(idx, strat, sum(fr[1:]), seed)  # not 1 - train: 1 - 0.7 != 0.3
        if len(fr) == 2:
            parts = [train, rest]
        else:
            val_share = fr[1] / (fr[1] + fr[2]) if fr[1] + fr[2] > 0 else 0.0
            test, val = _stratified_two_way(rest, strat, val_share, seed)
            parts = [train, val, test]
    return {name: np.sort(np.asarray(p, dtype=np.int64)) for name, p in zip(names, parts)}


def official_split(dataset) -> dict[str, np.ndarray]:
    """``{split name: indices}`` from the samples' official split (BRACS train/val/test, Kimia train/test, PanNuke
    folds, ...), in order of first appearance. Raises ValueError when the dataset has none."""
    splits = dataset.splits
    if not splits or any(s is None for s in splits):
        raise ValueError(f"{getattr(dataset, 'name', '') or 'dataset'} has no official split "
                         f"(manifest splits.type is 'none'); use make_split(labels, groups, fractions, seed)")
    order = list(dict.fromkeys(splits))
    arr = np.asarray(splits)
    return {name: np.flatnonzero(arr == name).astype(np.int64) for name in order}


def _digest(values) -> str:
    return hashlib.sha256("\n".join(map(str, values)).encode()).hexdigest()


def load_or_make_split(path: str | os.PathLike, labels, groups: Optional[Sequence] = None,
                       fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> dict[str, np.ndarray]:
    """Reuse the split stored at ``path`` or make and store it (atomically).

    Refuses (:class:`SplitMismatchError`) a stored split made with other fractions / seed / grouping, or for a
    dataset of another size or other labels / groups: a run never mixes indices of two datasets.
    """
    path = Path(path)
    labels = np.asarray(labels)
    params = {
        "fractions": list(_check_fractions(fractions)), "seed": int(seed), "n": int(len(labels)),
        "grouped": groups is not None, "labels_sha256": _digest(labels.tolist()),
        "groups_sha256": _digest(groups) if groups is not None else None,
    }
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
        except ValueError as exc:
            raise SplitMismatchError(f"split file {path} is not valid JSON: {exc}") from None
        for key, want in params.items():
            have = stored.get("params", {}).get(key)
            if have != want:
                raise SplitMismatchError(
                    f"split file {path} was made with {key}={have!r}, but this run asks for {key}={want!r}; "
                    f"delete it or point to another split file"
                )
        return {k: np.asarray(v, dtype=np.int64) for k, v in stored["splits"].items()}
    splits = make_split(labels, groups, fractions, seed)
    atomic_write_json(path, {"params": params, "splits": {k: v.tolist() for k, v in splits.items()}})
    return splits


def class_balanced_fraction(labels, fraction: float, seed: int = 0) -> np.ndarray:
    """Indices of a label fraction (CypherViT Table 2: 1 % ... 100 % of the training labels) drawn per class:
    ``max(1, round(fraction * n_c))`` of each class c, so every class keeps its share and at least one example."""
    labels = np.asarray(labels)
    if not 0 < fraction <= 1:
        raise ValueError(f"class_balanced_fraction: fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = min(len(members), max(1, int(round(fraction * len(members)))))
        picked.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(picked)).astype(np.int64)
