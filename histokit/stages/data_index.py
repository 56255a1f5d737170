"""The data index: what stage 01 writes per recipe dataset, and what every later stage reads instead of manifests.

``<run_dir>/data/<key>/index.csv`` has one row per image of the recipe dataset ``key`` (protocol merges and a
rehearsal's caps applied), then one per image of its separate official test set (``spec.test_dataset``), columns:

- ``dataset``: the manifest the row comes from (``spec.dataset`` or ``spec.test_dataset``);
- ``path``, ``row``, ``box``: where the image is — a file; an array file and its row (PanNuke / MedMNIST ``.npy``:
  ``path`` = the ``.npy``, ``row`` = the row index); a tile of a source image (VGH/NKI: ``box`` = "l,t,r,b");
- ``label``: the class name (a float for a regression target); ``group``: patient / slide / scan id, empty if none;
- ``official_split``: the dataset's own split (empty if none);
- ``split``: train / val / test under the recipe's scheme (``DatasetSpec.split``: random, group, official or none,
  with the run's seed); ``split_random`` and ``split_group``: the random 80/10/10 and the group-aware variant that
  some tables compare (empty where a row is in no part; ``split_group`` empty throughout without group ids). Rows
  of the official test set are ``test`` in every scheme;
- ``stain_path``: where the recipe asks for Macenko (``DatasetSpec.stain``), the normalized tile, a PNG beside the
  index (relative to its folder): stage 01 fits the normalizer once per manifest dataset and writes every tile, so
  no later stage re-fits or re-normalizes.

``index.json`` beside it says what the index is (recipe key, the recipe's DatasetSpec, seed, caps), where it came
from (manifest names + sha256), the classes, the split sizes per scheme, and the sha256 of ``index.csv``. A reader
(:func:`read_index`) checks all of it against what it asks for, so an index of another seed, dataset entry or run
stops it by name; split indices are positions among a dataset's own rows (not its test set's), as feature files
store them.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from ..data.datasets import PatchDataset, Sample, load_dataset, merge_classes, read_sample_image
from ..data.images import load_image
from ..data.splits import make_split, official_split
from ..io import atomic_write_json, atomic_write_text, sha256_file
from ..sidecars import check_sidecar
from .context import StageContext, slug

INDEX_VERSION = 1
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
SPLIT_NAMES = ("train", "val", "test")
VARIANTS = ("random", "group")  # the split schemes every index holds besides the recipe's own
COLUMNS = ("dataset", "path", "row", "box", "label", "group", "official_split", "split", "split_random",
           "split_group", "stain_path")
REMEDY = "run stage 01 (01_data) first (histokit reproduce, or the 01_data notebook)"


def index_path(ctx: StageContext, key: str) -> Path:
    return ctx.path("data", slug(key), "index.csv")


def index_identity(ctx: StageContext, key: str) -> dict:
    """What an index must have been written for: the recipe key and its DatasetSpec, the seed, a rehearsal's cap."""
    spec = ctx.recipe.dataset(key)
    return {"version": INDEX_VERSION, "key": key, "spec": json.loads(json.dumps(asdict(spec), default=str)),
            "seed": int(ctx.seed), "max_images_per_class": _cap(ctx)}


def _cap(ctx: StageContext) -> Optional[int]:
    cap = ctx.rehearse.get("max_images_per_class") if ctx.rehearsal else None
    return int(cap) if cap else None


# ------------------------------------------------------------------------------------------------ writing (stage 01)


def source_dataset(ctx: StageContext, key: str, *, test: bool = False) -> PatchDataset:
    """The images behind recipe key ``key`` (its official test set when ``test``) read through the manifest, protocol
    merges and a rehearsal's caps applied: what stage 01 indexes. Bundled data (``access: bundled``) is read from
    the package, everything else under the run's data root."""
    from ..data.manifests import load_manifest

    spec = ctx.recipe.dataset(key)
    name = spec.test_dataset if test else spec.dataset
    root = None if load_manifest(name).access == "bundled" else ctx.data_root
    dataset = load_dataset(name, root=root)
    if spec.merges:
        dataset = merge_classes(dataset, dict(spec.merges))
    cap = _cap(ctx)
    return cap_per_class_and_split(dataset, cap) if cap else dataset


def cap_per_class_and_split(dataset: PatchDataset, cap: int) -> PatchDataset:
    """A rehearsal's data: at most ``cap`` images of each class in each official split (a regression target: at most
    ``5 x cap`` per split), evenly spaced in path order so that every class and split of the real layout is still
    present and the picks spread over the source images / patients (a group-aware split stays possible)."""
    order = sorted(range(len(dataset)), key=lambda i: (str(dataset.samples[i].path), dataset.samples[i].row or 0,
                                                       dataset.samples[i].box or ()))
    cells: dict = {}
    for i in order:
        sample = dataset.samples[i]
        cells.setdefault((sample.split, None if dataset.is_regression else sample.label), []).append(i)
    limit = cap * 5 if dataset.is_regression else cap
    keep = []
    for members in cells.values():
        if len(members) <= limit:
            keep += members
        else:
            keep += [members[k] for k in np.linspace(0, len(members) - 1, limit).round().astype(int)]
    return dataset.subset(sorted(keep)) if len(keep) < len(dataset) else dataset


def split_of_dataset(ctx: StageContext, key: str, dataset, scheme: Optional[str] = None) -> Optional[dict]:
    """{split: sorted indices} of ``dataset`` (recipe key ``key``'s images) under ``scheme`` (default the recipe's).

    ``random`` = the paper's stratified 80/10/10; ``group`` = group-aware (None when the data has no group ids);
    ``official`` = the dataset's own split (:func:`official_train_val_test`); ``none`` = every image is a training
    image, val and test are empty (ImageNet-1k for LGFFEM strategy A, as ``torchvision.datasets.ImageNet(split=
    'train')`` in the ffnir code). A dataset with a separate official test set splits its training data into
    train/val and keeps the test set whole.
    """
    spec = ctx.recipe.dataset(key)
    scheme = scheme or spec.split
    if scheme == "official":
        return official_train_val_test(ctx, key, dataset, train_splits=spec.train_splits,
                                       val_fraction=spec.val_fraction)
    if scheme == "none":
        empty = np.zeros(0, dtype=np.int64)
        return {"train": np.arange(len(dataset), dtype=np.int64), "val": empty, "test": empty.copy()}
    if scheme not in VARIANTS:
        raise ValueError(f"recipe {ctx.recipe.paper}: dataset {key!r} asks for split {scheme!r}; the kit has "
                         "random, group, official and none")
    groups = None
    if scheme == "group":
        if not any(g is not None for g in dataset.groups):
            return None
        groups = np.asarray([str(g) for g in dataset.groups])
    fractions = (0.9, 0.1, 0.0) if spec.test_dataset else SPLIT_FRACTIONS
    split = make_split(dataset.labels, groups, fractions, ctx.seed)
    return {"train": split["train"], "val": split["val"]} if spec.test_dataset else split


def official_train_val_test(ctx: StageContext, key: str, dataset, *, train_splits: tuple = (),
                            val_fraction: float = 0.1) -> dict:
    """train / val / test from a dataset's official split: named train/test as they are; folds (PanNuke) -> the
    last fold is the test set; train + val only (BreastPathQ, test labels withheld) -> the official validation set
    is the test set (Chen & Krishnan). Without an official val set, ``val_fraction`` of train (stratified, seeded)
    is val; ``val_fraction=0`` keeps all of train for training (val empty: the Kimia Path24C protocol, whose 22,591
    training patches are both the metric-learning set and the search gallery).

    ``train_splits`` names the official splits that form the training part (PanNuke ``("fold1",)``, as PathML's
    ``PanNukeDataModule(split=1)``); the test set is then the official ``test`` split, or else the last split not
    trained on (empty if none is left), and an official ``val`` split not trained on is val."""
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"dataset {key!r}: val_fraction must lie in [0, 1), got {val_fraction}")
    named = official_split(dataset)
    if train_splits:
        unknown = [s for s in train_splits if s not in named]
        if unknown:
            raise ValueError(f"dataset {key!r}: train_splits {unknown} are not official splits of it "
                             f"({list(named)})")
        rest = [s for s in named if s not in train_splits]
        picked = {"train": np.concatenate([named[s] for s in train_splits])}
        if "val" in rest:
            picked["val"] = named["val"]
        tests = [s for s in rest if s == "test"] or [s for s in rest if s != "val"][-1:]
        picked["test"] = named[tests[0]] if tests else np.zeros(0, dtype=np.int64)
        named = picked
    elif "test" not in named and "val" in named:
        named = {"train": named["train"], "test": named.pop("val")}
    elif "train" not in named or "test" not in named:
        folds = list(named)
        named = {"train": np.concatenate([named[f] for f in folds[:-1]]), "test": named[folds[-1]]}
    if "val" not in named:
        train = np.asarray(named["train"])
        if float(val_fraction) == 0.0:
            named["val"] = np.zeros(0, dtype=np.int64)
        else:
            inner = make_split(dataset.labels[train], None, (1.0 - val_fraction, val_fraction), ctx.seed)
            named["train"], named["val"] = train[inner["train"]], train[inner["test"]]
    return {k: np.sort(np.asarray(named[k], dtype=np.int64)) for k in ("train", "val", "test")}


def _split_column(n: int, split: Optional[dict]) -> list[str]:
    column = [""] * n
    for name, rows in (split or {}).items():
        for i in rows:
            column[int(i)] = name
    return column


def write_stain_normalized(ctx: StageContext, key: str, dataset: PatchDataset, method: str,
                           folder: Path) -> list[str]:
    """Every tile of ``dataset`` Macenko-normalized to one reference tile of it (as NCT-CRC-HE-100K was), written as
    a PNG under ``folder``; returns each tile's file. Fitted once, here; the note goes to notes.json once.

    The reference is the most stained of the first 20 tiles (sorted by path), so it is fixed for a dataset and
    never a background tile; tiles without tissue are written as they are."""
    from ..data.stain import MacenkoNormalizer

    if method != "macenko":
        raise ValueError(f"recipe {ctx.paper}: dataset {key!r} asks for stain normalization {method!r}; "
                         "the kit has 'macenko'")
    normalizer = MacenkoNormalizer(on_no_tissue="passthrough")
    candidates = sorted(dataset.samples, key=lambda s: str(s.path))[:20]
    stained = [(normalizer.stained_pixels(np.asarray(read_sample_image(s).convert("RGB"))), str(s.path), s)
               for s in candidates]
    _, ref_path, reference = max(stained, key=lambda t: (t[0], t[1]))
    normalizer.fit(read_sample_image(reference))
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"{i:06d}.png" for i in range(len(dataset))]

    def write(i: int) -> None:  # torchstain's normalize keeps no state: tiles are independent
        normalizer(read_sample_image(dataset.samples[i])).save(files[i], format="PNG")

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL and numpy release the GIL
        list(pool.map(write, range(len(dataset))))
    ctx.add_note("all", f"{key}: tiles Macenko-normalized by the kit (torchstain) to the reference tile "
                        f"{Path(ref_path).name}; tiles without tissue are left as they are.")
    return [str(f) for f in files]


def _rows(dataset: PatchDataset, splits: dict, stain_paths: Optional[list], base: Path) -> pd.DataFrame:
    n = len(dataset)
    columns = {scheme: _split_column(n, split) for scheme, split in splits.items()}
    label = (lambda s: repr(float(s.label))) if dataset.is_regression else (lambda s: dataset.classes[s.label])
    return pd.DataFrame({
        "dataset": [dataset.name] * n,
        "path": [s.path for s in dataset.samples],
        "row": ["" if s.row is None else str(s.row) for s in dataset.samples],
        "box": ["" if s.box is None else ",".join(map(str, s.box)) for s in dataset.samples],
        "label": [label(s) for s in dataset.samples],
        "group": ["" if s.group is None else str(s.group) for s in dataset.samples],
        "official_split": ["" if s.split is None else str(s.split) for s in dataset.samples],
        **columns,
        "stain_path": [os.path.relpath(p, base) for p in stain_paths] if stain_paths else [""] * n,
    }, columns=list(COLUMNS))


def write_index(ctx: StageContext, key: str) -> dict:
    """Stage 01 for recipe dataset ``key``: read it (and its official test set) through the manifest, split it under
    the recipe's scheme and the random / group variants, normalize its tiles where the recipe asks, and write
    ``data/<key>/index.csv`` + ``index.json``. Returns the sidecar."""
    from ..data.manifests import load_manifest

    spec = ctx.recipe.dataset(key)
    path = index_path(ctx, key)
    main = source_dataset(ctx, key)
    schemes = {scheme: split_of_dataset(ctx, key, main, scheme) for scheme in dict.fromkeys((spec.split,) + VARIANTS)}
    splits = {"split": schemes[spec.split], "split_random": schemes["random"], "split_group": schemes["group"]}
    parts = [(main, splits, "macenko")]
    if spec.test_dataset:
        test = source_dataset(ctx, key, test=True)
        if test.name == main.name:
            raise ValueError(f"recipe {ctx.paper}: dataset {key!r} names {test.name!r} as its own test set")
        if test.classes != main.classes:
            raise ValueError(f"recipe {ctx.paper}: dataset {key!r}: the test set {test.name!r} has classes "
                             f"{test.classes}, the dataset {main.name!r} has {main.classes}")
        whole = {"test": np.arange(len(test))}
        parts.append((test, {c: whole for c in splits}, "macenko_test"))
    tables = []
    for dataset, part_splits, folder in parts:
        stain = (write_stain_normalized(ctx, key, dataset, spec.stain, path.parent / folder) if spec.stain
                 else None)
        tables.append(_rows(dataset, part_splits, stain, path.parent))
    atomic_write_text(path, pd.concat(tables, ignore_index=True).to_csv(index=False))
    names = [spec.dataset] + ([spec.test_dataset] if spec.test_dataset else [])
    sidecar = {**index_identity(ctx, key),
               "manifests": {n: manifest_record(load_manifest(n)) for n in names},
               "classes": list(main.classes), "task": "regression" if main.is_regression else "classification",
               "name": main.name + (f"+{spec.stain}" if spec.stain else ""),
               "counts": {"dataset": len(main), "test": len(parts[1][0]) if spec.test_dataset else 0},
               "splits": {scheme: None if split is None else {k: int(len(v)) for k, v in split.items()}
                          for scheme, split in schemes.items()},
               "index_sha256": sha256_file(path)}
    atomic_write_json(path.with_suffix(".json"), sidecar)
    return sidecar


def manifest_record(manifest) -> dict:
    """What the sidecar keeps of a manifest: its file, that file's sha256, and how the data is had (``access``)."""
    return {"file": Path(manifest.path).name, "sha256": sha256_file(manifest.path), "access": manifest.access}


# ------------------------------------------------------------------------------------------- reading (later stages)


class NormalizedTiles:
    """The image loader of a stain-normalized dataset: each sample's tile as stage 01 wrote it (picklable, so a
    spawned DataLoader worker gets it)."""

    def __init__(self, files: dict[str, str]):
        self.files = files

    def __call__(self, sample: Sample):
        return load_image(self.files[sample.key])


@dataclass
class DataIndex:
    """A checked ``index.csv`` with its sidecar, parsed."""
    key: str
    meta: dict
    table: pd.DataFrame
    base: Path

    def _rows(self, test: bool) -> pd.DataFrame:
        spec = self.meta["spec"]
        name = spec["test_dataset"] if test else spec["dataset"]
        return self.table[self.table["dataset"] == name]

    def dataset(self, test: bool = False) -> PatchDataset:
        """The images as a PatchDataset (no transform), read from the normalized tiles where the recipe asks."""
        rows = self._rows(test)
        classes = self.meta["classes"]
        regression = self.meta["task"] == "regression"
        index = {c: i for i, c in enumerate(classes)}
        samples = [Sample(path, float(label) if regression else index[label], group or None, official or None,
                          int(row) if row else None, tuple(int(v) for v in box.split(",")) if box else None)
                   for path, label, group, official, row, box in
                   zip(rows["path"], rows["label"], rows["group"], rows["official_split"], rows["row"], rows["box"])]
        if not self.meta["spec"].get("stain"):
            return PatchDataset(samples, classes, name=self.meta["name"])
        stained = NormalizedTiles({s.key: str(self.base / p) for s, p in zip(samples, rows["stain_path"])})
        return PatchDataset(samples, classes, name=self.meta["name"], image_loader=stained)

    def split(self, scheme: Optional[str] = None) -> Optional[dict]:
        """{split: sorted row positions} of the dataset's rows under ``scheme`` (the recipe's when None); None for
        the group-aware split of data without group ids."""
        scheme = scheme or self.meta["spec"]["split"]
        column = "split" if scheme == self.meta["spec"]["split"] else f"split_{scheme}"
        if scheme not in self.meta["splits"] or column not in COLUMNS:
            raise ValueError(f"{self.base / 'index.csv'} holds the splits {sorted(self.meta['splits'])} of dataset "
                             f"{self.key!r}, not {scheme!r}")
        sizes = self.meta["splits"][scheme]
        if sizes is None:
            return None
        values = self._rows(False)[column].to_numpy()
        names = [n for n in SPLIT_NAMES if n in sizes]  # the split's own order (the sidecar's JSON sorts keys)
        return {name: np.flatnonzero(values == name).astype(np.int64) for name in names}


_CACHE: dict = {}


def read_index(ctx: StageContext, key: str) -> DataIndex:
    """The index stage 01 wrote for ``key``, checked: its sidecar describes this key, DatasetSpec, seed and caps,
    and ``index.csv`` is the file the sidecar describes (sha256). Parsed once per process and file version."""
    path = index_path(ctx, key)
    if not path.is_file():
        raise FileNotFoundError(f"dataset {key!r} of {ctx.paper}: the data index {path} does not exist; {REMEDY}")
    stat = path.stat()
    cache_key = (str(path), stat.st_size, stat.st_mtime_ns)
    meta = check_sidecar(path.with_suffix(".json"), index_identity(ctx, key),
                         what=f"the data index of {key!r} for this {ctx.paper} {ctx.label} run (seed {ctx.seed})",
                         remedy=REMEDY)
    if cache_key not in _CACHE or _CACHE[cache_key].meta != meta:
        check_sidecar(path.with_suffix(".json"), {"index_sha256": sha256_file(path)}, meta=meta,
                      what=f"{path} as it is now (edited since stage 01 wrote it?)", remedy=REMEDY)
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = [c for c in COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; {REMEDY}")
        _CACHE[cache_key] = DataIndex(key, meta, table, path.parent)
    return _CACHE[cache_key]


def index_digest(ctx: StageContext, key: str) -> str:
    """The sha256 of ``key``'s checked index: what a reader's fingerprint records of the data it read."""
    return read_index(ctx, key).meta["index_sha256"]

