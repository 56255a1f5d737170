"""The leakage audit across the papers' runs: near-duplicate tiles shared by a training and a test split.

For each data the runs stored features of (grouped as in the common benchmark), each split variant

* ``random 80/10/10 (Habijan et al.)`` — the common benchmark's split (make_split, seed 0);
* ``group-aware`` — make_split with the dataset's group ids (patient / slide / scan), when it has any; otherwise a
  row says so;
* ``official test set`` — where the recipe names one (CRC-VAL-HE-7K against the training part),

is searched for (test, train) pairs that look alike to two descriptors: (a) pixels — zero-mean 32 px thumbnails,
whose cosine is the images' normalized cross-correlation, independent of any encoder; (b) one encoder's stored
features (EsViT's where the esvit run has them, else the first feature set of that data). Writes ``leakage.csv``,
``leakage.md`` and one ``pairs_<data>_<split>_<descriptor>.png`` per row with a search to
``results/leakage/<profile>/``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd

from .. import paths
from ..data.errors import DatasetNotFoundError, ManualDownloadRequired
from ..data.splits import make_split
from ..evaluation.leakage import SUMMARY_COLUMNS, leakage_summary, near_duplicates, pixel_descriptors
from .collect import (SPLIT_SEED, DataGroup, FeatureEntry, check_profile_folder, collect_feature_sets,
                      common_split, file_slug)
from .tables import write_table_files

PIXEL_THRESHOLD = 0.95
FEATURE_THRESHOLD = 0.99
PIXEL_SIZE = 32
PREFERRED_ENCODER = "esvit: EsViT + k-NN"
SPLIT_RANDOM = "random 80/10/10 (Habijan et al.)"
SPLIT_GROUP = "group-aware"
SPLIT_OFFICIAL = "official test set"
SPLIT_SLUGS = {SPLIT_RANDOM: "random", SPLIT_GROUP: "group", SPLIT_OFFICIAL: "official-test"}
COLUMNS = ("dataset", "split", "descriptor") + tuple(c for c in SUMMARY_COLUMNS if c not in ("dataset", "split")) \
    + ("note",)
_COUNTS = ("n_train", "n_test", "n_pairs", "n_test_with_duplicate")


class _Tiles(Sequence):
    """Images of some rows of a dataset, read when indexed: the pairs figure shows a few of thousands."""

    def __init__(self, dataset, rows):
        self.dataset, self.rows = dataset, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        return np.asarray(self.dataset.image_loader(self.dataset.samples[int(self.rows[i])]).convert("RGB"))


def default_loader(data_root: Optional[Path] = None) -> Callable:
    from ..data.datasets import load_dataset

    def load(name: str):
        return load_dataset(name, root=None if name == "kather2016_tiny" else (data_root or paths.DATA_ROOT))

    return load


def pick_encoder(group: DataGroup, preferred: Optional[str]) -> FeatureEntry:
    for entry in group.entries:
        if entry.method == preferred:
            return entry
    return group.entries[0]


@dataclass
class Variant:
    """One split variant of one data: training rows of the dataset, test rows (None: the official test set)."""
    name: str
    train: Optional[np.ndarray] = None
    test: Optional[np.ndarray] = None
    official: bool = False
    note: str = ""                  # why it could not be searched (no group ids, ...); then train is None


@dataclass
class _Audit:
    """One audit run: thresholds, the dataset loader, and datasets / pixel descriptors read once per manifest."""
    loader: Callable
    out: Path
    pixel_threshold: float
    feature_threshold: float
    n_shown: int
    datasets: dict = field(default_factory=dict)
    pixels: dict = field(default_factory=dict)
    figures: list = field(default_factory=list)

    def dataset(self, name: str):
        """(dataset, None) or (None, why it could not be loaded)."""
        if name not in self.datasets:
            try:
                self.datasets[name] = (self.loader(name), None)
            except (DatasetNotFoundError, ManualDownloadRequired, FileNotFoundError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                self.datasets[name] = (None, f"dataset {name} could not be loaded ({first})")
        return self.datasets[name]

    def pixel_descriptors(self, name: str, dataset) -> np.ndarray:
        if name not in self.pixels:
            self.pixels[name] = pixel_descriptors(_Tiles(dataset, np.arange(len(dataset))), size=PIXEL_SIZE)
        return self.pixels[name]

    def search(self, base: dict, train_desc, test_desc, threshold: float, tiles, figure: str) -> dict:
        """One row: near-duplicate pairs at ``threshold``, and their figure when the images can be read."""
        pairs = near_duplicates(train_desc, test_desc, threshold)
        row = {**leakage_summary(pairs, len(test_desc), threshold, n_train=len(train_desc), dataset=base["dataset"],
                                 split=base["split"]), **base}
        if tiles is None:
            row["note"] = (row.get("note", "") + " no figure: the images could not be loaded").strip()
            return row
        path = self.out / figure
        from ..viz.pairs import duplicate_pairs_figure

        duplicate_pairs_figure(pairs, tiles[1], tiles[0], path, n=self.n_shown, threshold=threshold,
                               title=f"{base['dataset']}\n{base['split']} · {base['descriptor']}")
        self.figures.append(path)
        return row


def split_variants(group: DataGroup, labels: np.ndarray, dataset, why_not_loaded: Optional[str]) -> list:
    split = common_split(labels)
    variants = [Variant(SPLIT_RANDOM, split["train"], split["test"])]
    name = group.spec.dataset
    if dataset is None:
        variants.append(Variant(SPLIT_GROUP, note=f"{why_not_loaded}: its group ids are unknown"))
    elif not any(dataset.groups):
        variants.append(Variant(SPLIT_GROUP, note=f"{name} has no group ids (patient / slide / scan) in its "
                                                  "manifest: no group-aware split can be made; its splits are "
                                                  "image-level"))
    else:
        try:
            grouped = make_split(labels, groups=dataset.groups, fractions=(0.8, 0.1, 0.1), seed=SPLIT_SEED)
            variants.append(Variant(SPLIT_GROUP, grouped["train"], grouped["test"]))
        except ValueError as err:
            variants.append(Variant(SPLIT_GROUP, note=f"{name}: group-aware split impossible ({err})"))
    if group.spec.test_dataset:
        variants.append(Variant(SPLIT_OFFICIAL, split["train"], official=True))
    return variants


def audit_group(audit: _Audit, group: DataGroup, encoder: Optional[str]) -> list:
    entry = pick_encoder(group, encoder)
    main, official_test = entry.load()
    labels = main.labels
    dataset, why = audit.dataset(group.spec.dataset)
    if dataset is not None and len(dataset) != len(labels):
        raise ValueError(f"dataset {group.spec.dataset} has {len(dataset)} images but feature file {entry.path} "
                         f"has {len(labels)} rows: they are not the same data")
    test_set, test_why = (audit.dataset(group.spec.test_dataset) if group.spec.test_dataset else (None, None))
    if test_set is not None and len(test_set) != len(official_test):
        raise ValueError(f"dataset {group.spec.test_dataset} has {len(test_set)} images but feature file "
                         f"{entry.test_path} has {len(official_test)} rows: they are not the same data")
    pixel_name = f"pixels ({PIXEL_SIZE} px NCC)"
    feature_name = f"features: {entry.method}"
    rows = []
    for variant in split_variants(group, labels, dataset, why):
        base = {"dataset": group.key, "split": variant.name}
        if variant.train is None:
            rows.append({**base, "descriptor": "—", "note": variant.note})
            continue
        stem = f"pairs_{file_slug(group.key)}_{SPLIT_SLUGS[variant.name]}"
        if variant.official:
            test_images, test_rows, test_feats = test_set, None, official_test.features
        else:
            test_images, test_rows, test_feats = dataset, variant.test, main.features[variant.test]
        if dataset is None or test_images is None:
            rows.append({**base, "descriptor": pixel_name, "note": why or test_why})
            tiles = None
        else:
            test_rows = np.arange(len(test_images)) if test_rows is None else test_rows
            tiles = (_Tiles(dataset, variant.train), _Tiles(test_images, test_rows))
            train_pix = audit.pixel_descriptors(group.spec.dataset, dataset)[variant.train]
            test_name = group.spec.test_dataset if variant.official else group.spec.dataset
            test_pix = audit.pixel_descriptors(test_name, test_images)[test_rows]
            rows.append(audit.search({**base, "descriptor": pixel_name}, train_pix, test_pix, audit.pixel_threshold,
                                     tiles, f"{stem}_pixels.png"))
        rows.append(audit.search({**base, "descriptor": feature_name}, main.features[variant.train], test_feats,
                                 audit.feature_threshold, tiles, f"{stem}_features.png"))
    return rows


def audit_notes(audit: _Audit, collection) -> list:
    return [
        f"pixels: each tile as stored (before any stain normalization the recipe applies) resized to {PIXEL_SIZE} px, "
        "each channel minus its mean; the cosine of two such descriptors is the normalized cross-correlation of the "
        f"two images. Threshold {audit.pixel_threshold:g}: the same image up to re-encoding or a brightness change "
        "(histokit.evaluation.leakage.pixel_descriptors); different tiles correlate far less (at most 0.42 between "
        "the bundled tiles' random test and training splits). Encoder independent.",
        f"features: cosine of one encoder's stored, L2-normalized features (EsViT's where the esvit run stored them, "
        f"else the first feature set of that data). Threshold {audit.feature_threshold:g}: a near-identical "
        "embedding. How close unrelated tiles sit depends on the encoder (a barely trained one maps all background "
        "or fat tiles together), so a feature match is a candidate and the pixel row, and the pairs figure, say "
        "whether it is the same image.",
        "Splits: 'random 80/10/10 (Habijan et al.)' is the common benchmark's split (make_split, stratified, "
        f"seed {SPLIT_SEED}), image-level; 'group-aware' is make_split with the dataset's group ids, so no group is in "
        "two splits; 'official test set' searches the recipe's separate test set against the training part.",
        "fraction_test_with_duplicate = test items with at least one training near-duplicate / n_test; n_pairs "
        "counts every (test, train) pair; max_cosine is the highest similarity found at or above the threshold "
        "(— when none). Exact search: FAISS range search on a flat inner-product index "
        "(histokit.evaluation.leakage.near_duplicates).",
        "Figures pairs_<data>_<split>_<descriptor>.png show the most similar pairs, test tile left, as stored (before "
        "stain normalization), or say that none reached the threshold.",
    ] + collection.notes


def _table(rows: list) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    table["note"] = [n if isinstance(n, str) else "" for n in table["note"]]
    for column in _COUNTS:
        table[column] = table[column].astype("Int64")
    table["fraction_test_with_duplicate"] = table["fraction_test_with_duplicate"].astype(float).round(4)
    table["max_cosine"] = table["max_cosine"].astype(float).round(4)
    return table


def run_leakage_audit(profile: str = "smoke", runs_dir: Optional[Path] = None, out: Optional[Path] = None, *,
                      data_root: Optional[Path] = None, pixel_threshold: float = PIXEL_THRESHOLD,
                      feature_threshold: float = FEATURE_THRESHOLD, encoder: Optional[str] = PREFERRED_ENCODER,
                      dataset_loader: Optional[Callable] = None, n_shown: int = 8) -> dict:
    """Audit every data the ``profile`` runs stored features of; write ``leakage.csv`` / ``.md`` and the figures.

    ``dataset_loader(name) -> PatchDataset`` reads a manifest's dataset (default: :func:`load_dataset`, the bundled
    tiles for ``kather2016_tiny``, else under ``data_root``). Returns ``{"csv", "md", "figures", "table"}``.
    """
    out = check_profile_folder(Path(out) if out is not None else paths.RESULTS_DIR / "leakage" / profile,
                               profile, "leakage")
    collection = collect_feature_sets(profile, runs_dir)
    if not collection.n_feature_sets:
        raise FileNotFoundError(f"no stored feature sets under {collection.runs_dir}/<paper>/{profile}/features/: "
                                f"run `histokit reproduce <paper> --profile {profile}` first (the audit covers the "
                                "data the runs used)")
    audit = _Audit(dataset_loader or default_loader(data_root), out, float(pixel_threshold),
                   float(feature_threshold), int(n_shown))
    rows = []
    for group in collection.groups.values():
        rows += audit_group(audit, group, encoder)
    table = _table(rows)
    title = "Leakage audit: near-duplicate tiles shared by train and test"
    files = write_table_files(out, "leakage", title, table, profile=profile, notes=audit_notes(audit, collection))
    written = set(audit.figures)
    for stale in out.glob("pairs_*.png"):  # figures of data or splits this audit no longer has
        if stale not in written:
            stale.unlink()
    return {**files, "figures": audit.figures, "table": table}
