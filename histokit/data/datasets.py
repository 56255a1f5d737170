"""One dataset type for every layout: :class:`PatchDataset` over :class:`Sample` records, plus one loader per
manifest layout (``class_folders``, ``csv``, ``pannuke_npy``, ``kimia``, ``medmnist_npz``) and
:func:`load_dataset` which picks the loader from the manifest.

Labels are class indices into ``classes`` (int64), or floats for a regression target (BreastPathQ cellularity,
``target: regression``). A class-folder manifest that lists no classes (ImageNet synsets, VGH/NKI's folders) gets
them from the folder names, sorted. ``group`` is what a leak-free split must keep together (patient / slide / scan /
source image, see the manifest's ``groups``); ``split`` is the official split a sample belongs to, when the dataset
has one.

A manifest with ``tiling.strategy: tile`` (VGH/NKI) is loaded as one sample per kept tile: ``Sample.box`` is the
crop in its source image, the tile grid and tissue filter are :mod:`histokit.data.tiling`'s, and the kept tiles of
every image are cached in a sidecar (``<dataset dir>/.histokit_tiles_<size>_<stride>_<tissue>.json``, keyed by each
image's size and mtime), so the tissue pass runs once per image.

Hand-placed datasets (``access: login`` or ``unavailable``) load like any other once their folder holds what the
layout says; a missing folder, or one with only a README, raises :class:`ManualDownloadRequired` with the steps.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .errors import DatasetNotFoundError, ManualDownloadRequired
from .images import array_to_image, load_image
from .manifests import Manifest, dataset_dir, describe_unpopulated, layout_entries, load_manifest
from .safepaths import path_problem


@dataclass(frozen=True)
class Sample:
    """One patch: its file (or array file + ``row``), label, group id and official split (None when none)."""

    path: str
    label: int | float
    group: Optional[str] = None
    split: Optional[str] = None
    row: Optional[int] = None  # row of a .npy array (PanNuke, MedMNIST); None for an image file
    box: Optional[tuple[int, int, int, int]] = None  # a tile: (left, top, right, bottom) in the image at ``path``

    @property
    def key(self) -> str:
        """A unique id for the sample: the path, plus ``[row]`` for an array row or ``[l,t,r,b]`` for a tile."""
        if self.row is not None:
            return f"{self.path}[{self.row}]"
        if self.box is not None:
            return f"{self.path}[{','.join(map(str, self.box))}]"
        return self.path


_ARRAYS: dict[tuple, np.ndarray] = {}


def _mmap(path: str) -> np.ndarray:
    """Memory-map a .npy once per process (DataLoader workers inherit or reopen it; nothing is read whole).
    Keyed by path, size and mtime, so a file replaced on disk is mapped afresh."""
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    arr = _ARRAYS.get(key)
    if arr is None:
        arr = _ARRAYS[key] = np.load(path, mmap_mode="r", allow_pickle=False)
    return arr


_SOURCES: "OrderedDict[tuple, Image.Image]" = OrderedDict()
_SOURCES_LOCK = threading.Lock()
_SOURCES_KEPT = 4  # decoded source images of tiles kept per process (neighbouring tiles share one decode)


def _source_image(path: str) -> Image.Image:
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    with _SOURCES_LOCK:
        image = _SOURCES.get(key)
        if image is not None:
            _SOURCES.move_to_end(key)
            return image
    image = load_image(path)
    with _SOURCES_LOCK:
        _SOURCES[key] = image
        while len(_SOURCES) > _SOURCES_KEPT:
            _SOURCES.popitem(last=False)
    return image


def read_sample_image(sample: Sample) -> Image.Image:
    """The RGB image of ``sample``: ``load_image`` for a file, the array row for an array-backed sample, the crop
    ``box`` of its source image for a tile."""
    if sample.row is not None:
        return array_to_image(_mmap(sample.path)[sample.row], sample.key)
    if sample.box is not None:
        return _source_image(sample.path).crop(sample.box)
    return load_image(sample.path)


class PatchDataset(torch.utils.data.Dataset):
    """``ds[i] -> (image or transform(image), label, i)``; the index lets feature extraction keep the order."""

    def __init__(self, samples: Sequence[Sample], classes: Sequence[str], transform: Optional[Callable] = None, *,
                 name: str = "", image_loader: Callable[[Sample], Image.Image] = read_sample_image):
        self.samples = list(samples)
        self.classes = list(classes)
        self.transform = transform
        self.name = name
        self.image_loader = image_loader
        if self.classes:
            n = len(self.classes)
            for s in self.samples:
                if not (isinstance(s.label, (int, np.integer)) and 0 <= s.label < n):
                    raise ValueError(f"{s.path}: label {s.label!r} is not a class index in 0..{n - 1}")
            self.labels = np.array([s.label for s in self.samples], dtype=np.int64)
        else:  # regression target
            self.labels = np.array([s.label for s in self.samples], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        image = self.image_loader(sample)
        if self.transform is not None:
            image = self.transform(image)
        label = int(self.labels[index]) if self.classes else float(self.labels[index])
        return image, label, index

    @property
    def groups(self) -> list[Optional[str]]:
        return [s.group for s in self.samples]

    @property
    def paths(self) -> Optional[list[str]]:
        """The image file of each sample, or None when the samples are not whole files (array rows: PanNuke,
        MedMNIST; tiles: VGH/NKI), which must be read through ``dataset[i]`` / ``image_loader`` (the convention
        ``histokit.viz.grid`` follows). :attr:`keys` names every sample either way."""
        if any(s.row is not None or s.box is not None for s in self.samples):
            return None
        return [s.path for s in self.samples]

    @property
    def keys(self) -> list[str]:
        """One id per sample (:attr:`Sample.key`): the file path, ``path[row]`` for an array row, ``path[l,t,r,b]``
        for a tile."""
        return [s.key for s in self.samples]

    @property
    def splits(self) -> list[Optional[str]]:
        return [s.split for s in self.samples]

    @property
    def is_regression(self) -> bool:
        return not self.classes

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes)) if self.classes else []
        return {c: int(n) for c, n in zip(self.classes, counts)}

    def subset(self, indices) -> "PatchDataset":
        """A new dataset of the given rows (same classes, transform and loader), in the given order."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return PatchDataset([self.samples[i] for i in idx], self.classes, self.transform, name=self.name,
                            image_loader=self.image_loader)

    def with_transform(self, transform: Optional[Callable]) -> "PatchDataset":
        return PatchDataset(self.samples, self.classes, transform, name=self.name, image_loader=self.image_loader)

    def __repr__(self) -> str:
        kind = f"{len(self.classes)} classes" if self.classes else "regression"
        return f"PatchDataset({self.name or '?'}: {len(self)} samples, {kind})"


def merge_classes(dataset: PatchDataset, mapping: Mapping[str, str]) -> PatchDataset:
    """Merge classes by name, e.g. ``{"MUS": "STR"}`` (Chen & Krishnan's 8-class CRC protocol).

    Merged-away classes disappear from ``classes``; the others keep their order, and labels are re-indexed.
    """
    for src, dst in mapping.items():
        if src not in dataset.classes:
            raise ValueError(f"merge_classes: class {src!r} is not in {dataset.name or 'the dataset'} "
                             f"(classes: {dataset.classes})")
        if dst not in dataset.classes or dst in mapping:
            raise ValueError(f"merge_classes: target {dst!r} of {src!r} must be a class that is kept "
                             f"(classes: {dataset.classes})")
    new_classes = [c for c in dataset.classes if c not in mapping]
    remap = {i: new_classes.index(mapping.get(c, c)) for i, c in enumerate(dataset.classes)}
    samples = [replace(s, label=remap[s.label]) for s in dataset.samples]
    return PatchDataset(samples, new_classes, dataset.transform, name=dataset.name,
                        image_loader=dataset.image_loader)


# ---------------------------------------------------------------------------------------------------- layouts


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(name.lower(), p.lower()) for p in (patterns or ["*"]))


def _image_files(folder: Path, patterns: Sequence[str]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and _matches(p.name, patterns))


def _group_from_name(path: Path, regex: Optional[re.Pattern]) -> Optional[str]:
    if regex is None:
        return None
    m = regex.search(path.name)
    if m is None:
        raise ValueError(f"{path}: file name does not match the manifest's group regex {regex.pattern!r}")
    return m.group(1)


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetNotFoundError(f"{what} {path} does not exist")
    return path


def _subfolders(base: Path) -> list[Path]:
    """Sub-folders that can hold a class (hidden folders such as ``.ipynb_checkpoints`` never do)."""
    return sorted((p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def discover_classes(directory: str | os.PathLike, split_dirs: Optional[Mapping[str, str]] = None) -> list[str]:
    """Class names from folder names, sorted (deterministic): the union over the split folders when there are
    any. A folder with image files but no sub-folders is one class, named after the folder."""
    directory = Path(directory)
    bases = [directory] if not split_dirs else [directory / sub for sub in split_dirs.values()]
    names = sorted({p.name for base in bases if base.is_dir() for p in _subfolders(base)})
    return names or [directory.name]


def load_class_folders(directory: str | os.PathLike, classes: Sequence[str], *,
                       class_folders: Optional[Mapping[str, str]] = None, patterns: Sequence[str] = ("*",),
                       group_regex: Optional[str] = None, split_dirs: Optional[Mapping[str, str]] = None,
                       name: str = "") -> PatchDataset:
    """``<directory>[/<split_dir>]/<class folder>/<image>``; ``class_folders`` maps folder names to class names
    (default: the folder is named like the class). Unknown folders are an error, so a typo never drops a class.

    Without ``classes`` (and ``class_folders``) the classes are the folder names, sorted (:func:`discover_classes`);
    images lying directly in a folder without sub-folders are then one class named after that folder."""
    directory = _require_dir(Path(directory), f"{name or 'dataset'} folder")
    discovered = not classes and not class_folders
    if discovered:
        classes = discover_classes(directory, split_dirs)
    folder_to_class = dict(class_folders) if class_folders else {c: c for c in classes}
    regex = re.compile(group_regex) if group_regex else None
    bases = {None: directory} if not split_dirs else {
        split: _require_dir(directory / sub, f"{name} split folder '{split}'") for split, sub in split_dirs.items()
    }
    samples = []
    for split, base in bases.items():
        subfolders = _subfolders(base)
        if discovered and not subfolders and list(classes) == [directory.name]:  # loose images: the folder itself is the one class
            samples += [Sample(str(p), 0, _group_from_name(p, regex), split) for p in _image_files(base, patterns)]
            continue
        unknown = sorted(p.name for p in subfolders if p.name not in folder_to_class)
        if unknown:
            raise ValueError(f"{base}: folders {unknown} are not classes of {name or 'the dataset'} "
                             f"(expected {sorted(folder_to_class)})")
        for folder, cls in folder_to_class.items():
            if cls not in classes:
                raise ValueError(f"{name}: class_folders maps {folder!r} to {cls!r}, which is not in classes")
            if discovered and not (base / folder).is_dir():
                continue  # a discovered class need not be in every split folder
            class_dir = _require_dir(base / folder, f"{name} class folder")
            label = list(classes).index(cls)
            samples += [Sample(str(p), label, _group_from_name(p, regex), split)
                        for p in _image_files(class_dir, patterns)]
    if not samples:
        raise DatasetNotFoundError(f"{directory}: no images matching {list(patterns)} in the class folders")
    return PatchDataset(samples, classes, name=name)


def load_kimia(directory: str | os.PathLike, classes: Sequence[str], *, split_dirs: Mapping[str, str],
               patterns: Sequence[str] = ("*.jpg",), scan_regex: str = r"^s(\d+)$", name: str = "") -> PatchDataset:
    """Kimia Path24C: ``<split_dir>/s<k>/<patch>.jpg``; the scan ``s<k>`` is both the label and the group."""
    directory = _require_dir(Path(directory), f"{name or 'kimia'} folder")
    regex = re.compile(scan_regex)
    samples = []
    for split, sub in split_dirs.items():
        base = _require_dir(directory / sub, f"{name} split folder '{split}'")
        for scan_dir in sorted((p for p in base.iterdir() if p.is_dir()), key=lambda p: p.name):
            if not regex.match(scan_dir.name) or scan_dir.name not in classes:
                raise ValueError(f"{scan_dir}: folder name is not a scan id s0..s{len(classes) - 1}")
            label = list(classes).index(scan_dir.name)
            samples += [Sample(str(p), label, scan_dir.name, split) for p in _image_files(scan_dir, patterns)]
    if not samples:
        raise DatasetNotFoundError(f"{directory}: no Kimia patches ({list(patterns)}) under {dict(split_dirs)}")
    return PatchDataset(samples, classes, name=name)


def load_csv(directory: str | os.PathLike, *, split_csvs: Optional[Mapping[str, Mapping[str, str]]] = None,
             csv: Optional[str] = None, image_dir: str = "", path_column: Optional[str] = None,
             path_template: Optional[str] = None, label_column: str = "label", group_column: Optional[str] = None,
             classes: Sequence[str] = (), name: str = "") -> PatchDataset:
    """Rows of CSV files -> samples. The image path is ``path_column`` or ``path_template`` formatted with the row
    (BreastPathQ: ``{slide}_{rid}.tif``), relative to ``image_dir``. With ``classes`` the label column holds class
    names (or indices); without, it is a float regression target. ``split_csvs`` = {split: {csv, image_dir}}."""
    directory = _require_dir(Path(directory), f"{name or 'dataset'} folder")
    if (path_column is None) == (path_template is None):
        raise ValueError(f"{name}: give exactly one of path_column or path_template for the csv layout")
    tables = dict(split_csvs) if split_csvs else {None: {"csv": csv, "image_dir": image_dir}}
    samples = []
    for split, spec in tables.items():
        if not spec.get("csv"):
            raise ValueError(f"{name}: csv layout needs a 'csv' file name (split {split!r})")
        csv_path = directory / spec["csv"]
        if not csv_path.is_file():
            raise DatasetNotFoundError(f"label file {csv_path} does not exist")
        table = pd.read_csv(csv_path)
        needed = [c for c in (label_column, group_column, path_column) if c]
        needed += re.findall(r"{(\w+)}", path_template or "")
        missing = [c for c in needed if c not in table.columns]
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {missing} (has {list(table.columns)})")
        image_root = directory / spec.get("image_dir", "")
        for number, row in enumerate(table.to_dict("records"), 1):
            rel = str(row[path_column]) if path_column else path_template.format(**row)
            problem = path_problem(rel, allow_empty=False)
            if problem:  # the manifest's confinement rule, for a path the data names
                column = path_column or ", ".join(re.findall(r"{(\w+)}", path_template))
                raise ValueError(f"{csv_path}: row {number} (column {column}): image path {rel!r} {problem}; "
                                 f"image paths in a label CSV must stay inside {image_root}")
            label = _csv_label(row[label_column], classes, csv_path)
            group = str(row[group_column]) if group_column else None
            samples.append(Sample(str(image_root / rel), label, group, split))
    absent = [s.path for s in samples if not os.path.isfile(s.path)]
    if absent:
        raise DatasetNotFoundError(f"{len(absent)} image(s) listed in the label CSV are missing, e.g. {absent[:3]}")
    return PatchDataset(samples, classes, name=name)


def _csv_label(value, classes: Sequence[str], csv_path: Path):
    if not classes:
        return float(value)
    if str(value) in classes:
        return list(classes).index(str(value))
    if isinstance(value, (int, np.integer)) and 0 <= value < len(classes):
        return int(value)
    raise ValueError(f"{csv_path}: label {value!r} is not one of the classes {list(classes)}")


def load_pannuke(directory: str | os.PathLike, classes: Sequence[str], *, folds: Sequence[Mapping[str, str]],
                 name: str = "pannuke") -> PatchDataset:
    """PanNuke folds: ``images.npy`` (n, 256, 256, 3) memory-mapped, ``types.npy`` tissue names = labels;
    the fold is both the group and the official split."""
    directory = Path(directory)
    samples = []
    for fold in folds:
        images, types = directory / fold["images"], directory / fold["types"]
        for p in (images, types):
            if not p.is_file():
                raise DatasetNotFoundError(f"PanNuke {fold['name']}: {p} does not exist")
        tissue = np.load(types, allow_pickle=False)
        n_images = _mmap(str(images)).shape[0]
        if len(tissue) != n_images:
            raise ValueError(f"{types}: {len(tissue)} tissue types for {n_images} images in {images}")
        unknown = sorted(set(map(str, tissue)) - set(classes))
        if unknown:
            raise ValueError(f"{types}: tissue types {unknown} are not in the manifest's classes")
        index = {c: i for i, c in enumerate(classes)}
        samples += [Sample(str(images), index[str(t)], fold["name"], fold["name"], row=i) for i, t in enumerate(tissue)]
    return PatchDataset(samples, classes, name=name)


def load_medmnist(directory: str | os.PathLike, classes: Sequence[str], *,
                  splits: Sequence[str] = ("train", "val", "test"), name: str = "pathmnist") -> PatchDataset:
    """MedMNIST arrays extracted from the .npz: ``<split>_images.npy`` (n, H, W, 3) and ``<split>_labels.npy``."""
    directory = _require_dir(Path(directory), f"{name} folder")
    samples = []
    for split in splits:
        images, labels = directory / f"{split}_images.npy", directory / f"{split}_labels.npy"
        for p in (images, labels):
            if not p.is_file():
                raise DatasetNotFoundError(f"{name}: {p} does not exist")
        y = np.load(labels, allow_pickle=False).reshape(-1)
        if len(y) != _mmap(str(images)).shape[0]:
            raise ValueError(f"{labels}: {len(y)} labels for {_mmap(str(images)).shape[0]} images")
        samples += [Sample(str(images), int(label), None, split, row=i) for i, label in enumerate(y)]
    return PatchDataset(samples, classes, name=name)


def _from_manifest(manifest: Manifest, directory: Path) -> PatchDataset:
    layout, p = manifest.layout, manifest.layout.params
    name = manifest.name
    if layout.type == "class_folders":
        regex = manifest.groups.get("regex") if manifest.groups.get("source") == "filename_regex" else None
        return load_class_folders(directory, manifest.classes, class_folders=manifest.class_folders or None,
                                  patterns=layout.patterns or ("*",), group_regex=regex,
                                  split_dirs=p.get("split_dirs"), name=name)
    if layout.type == "kimia":
        return load_kimia(directory, manifest.classes, split_dirs=p["split_dirs"],
                          patterns=layout.patterns or ("*.jpg",), scan_regex=p.get("scan_regex", r"^s(\d+)$"),
                          name=name)
    if layout.type == "csv":
        return load_csv(directory, split_csvs=p.get("split_csvs"), csv=p.get("csv"), image_dir=p.get("image_dir", ""),
                        path_column=p.get("path_column"), path_template=p.get("path_template"),
                        label_column=p.get("label_column", "label"), group_column=p.get("group_column"),
                        classes=manifest.classes, name=name)
    if layout.type == "pannuke_npy":
        return load_pannuke(directory, manifest.classes, folds=p["folds"], name=name)
    if layout.type == "medmnist_npz":
        return load_medmnist(directory, manifest.classes, splits=manifest.splits.get("names", ("train", "val", "test")),
                             name=name)
    raise ValueError(f"{manifest.path}: layout.type {layout.type!r} has no loader")


# ---------------------------------------------------------------------------------------------------- tiling

TILE_INDEX_VERSION = 1


def tile_index_path(directory: Path, tile_size: int, stride: int, min_tissue: float) -> Path:
    """Where :func:`tile_dataset` caches the kept tiles of the images under ``directory`` (a dataset folder)."""
    return Path(directory) / f".histokit_tiles_{tile_size}_{stride}_{round(min_tissue * 100)}.json"


def _fallback_index_path(path: Path) -> Path:
    """The user cache, for a dataset folder that cannot be written (a shared read-only copy)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "histokit" / "tiles"
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    return cache / f"{digest}_{path.name.lstrip('.')}"


def _read_index(path: Path, params: dict) -> dict:
    for candidate in (path, _fallback_index_path(path)):
        try:
            stored = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        if stored.get("params") == params:
            return dict(stored.get("images", {}))
    return {}


def _write_index(path: Path, params: dict, images: dict) -> None:
    from ..io import atomic_write_json

    record = {"params": params, "images": images}
    for candidate in (path, _fallback_index_path(path)):
        try:
            candidate.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(candidate, record)
            return
        except OSError:
            continue  # not writable: try the user cache, else recompute next time


def _kept_tiles(path: str, tile_size: int, stride: int, min_tissue: float) -> list[list]:
    from .tiling import tile_grid

    return [[x, y, round(f, 4)] for x, y, f in tile_grid(load_image(path), tile_size, stride, min_tissue)]


def tile_dataset(dataset: PatchDataset, tile_size: int, stride: Optional[int] = None, min_tissue: float = 0.0, *,
                 index_path: Optional[Path] = None, base_dir: Optional[Path] = None,
                 workers: Optional[int] = None) -> PatchDataset:
    """One sample per kept tile of every image of ``dataset`` (row by row, images in dataset order): the tile grid
    and tissue rule of :func:`histokit.data.tiling.tile_grid`. A tile keeps its image's label and split; its group
    is the image's group or, when it has none, the image (relative to ``base_dir``), so a group-aware split never
    puts tiles of one image on both sides. ``index_path`` caches the kept tiles per image (size + mtime checked)."""
    stride = stride or tile_size
    if any(s.row is not None or s.box is not None for s in dataset.samples):
        raise ValueError(f"{dataset.name}: only image files can be tiled (not array rows or tiles)")
    params = {"version": TILE_INDEX_VERSION, "tile_size": int(tile_size), "stride": int(stride),
              "min_tissue": float(min_tissue), "rule": "histokit.data.tiling.tile_grid"}
    base = Path(base_dir) if base_dir else None

    def rel(path: str) -> str:
        return os.path.relpath(path, base) if base else path

    stored = _read_index(index_path, params) if index_path else {}
    stats = {s.path: os.stat(s.path) for s in dataset.samples}
    todo = [p for p, st in stats.items()
            if stored.get(rel(p), {}).get("stamp") != [st.st_size, st.st_mtime_ns]]
    if todo:
        n = workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=n) as pool:  # PIL decodes and numpy reduces outside the GIL
            results = list(pool.map(lambda p: _kept_tiles(p, tile_size, stride, min_tissue), todo))
        for p, tiles in zip(todo, results):
            stored[rel(p)] = {"stamp": [stats[p].st_size, stats[p].st_mtime_ns], "tiles": tiles}
        if index_path:
            keep = {rel(p) for p in stats}
            _write_index(index_path, params, {k: v for k, v in sorted(stored.items()) if k in keep})
    samples = []
    for s in dataset.samples:
        group = s.group if s.group is not None else rel(s.path)
        samples += [replace(s, group=group, box=(x, y, x + tile_size, y + tile_size))
                    for x, y, _ in stored[rel(s.path)]["tiles"]]
    if not samples:
        raise DatasetNotFoundError(f"{dataset.name}: no {tile_size} px tile with >= {min_tissue:.0%} tissue in "
                                   f"{len(dataset)} image(s)")
    return PatchDataset(samples, dataset.classes, dataset.transform, name=dataset.name,
                        image_loader=dataset.image_loader)


def load_layout(manifest: Manifest, root: Optional[str | os.PathLike] = None) -> PatchDataset:
    """The dataset as its manifest's layout (and tiling) says, from ``dataset_dir(manifest, root)``; raises
    :class:`DatasetNotFoundError` / ``ValueError`` naming what is missing or wrong (no manual steps added)."""
    ddir = dataset_dir(manifest, root)
    directory = ddir / manifest.layout.subdir
    if not layout_entries(directory):
        raise DatasetNotFoundError(f"{manifest.name}: {describe_unpopulated(directory)}")
    dataset = _from_manifest(manifest, directory)
    if manifest.tiles:
        t = manifest.tiling
        size = int(t["tile_size"])
        stride = int(t.get("stride", size))
        tissue = float(t.get("min_tissue", 0.0))
        dataset = tile_dataset(dataset, size, stride, tissue, index_path=tile_index_path(ddir, size, stride, tissue),
                               base_dir=ddir)
    return dataset


def load_dataset(name: str, root: Optional[str | os.PathLike] = None, transform: Optional[Callable] = None, *,
                 split: Optional[str] = None) -> PatchDataset:
    """Load dataset ``name`` from ``<root>/<name>/`` as its manifest's layout says (``kather2016_tiny``: the
    bundled tiles when ``root`` is None). ``split`` keeps one official split (e.g. ``"test"``).

    Whatever the manifest's ``access``, a folder laid out as the manifest says loads. For a hand-placed dataset
    (login / unavailable host) a missing folder, or one with only a README, raises :class:`ManualDownloadRequired`
    with the manual steps and where the files go; anything else that is missing (an open host's folder, a file a
    label CSV names) raises :class:`DatasetNotFoundError` naming it, followed by the same instructions."""
    from .download import manual_instructions

    manifest = load_manifest(name)
    directory = dataset_dir(manifest, root) / manifest.layout.subdir
    if manifest.hand_placed and not layout_entries(directory):
        reason = "the host cannot serve it" if manifest.access == "unavailable" else "the host requires registration"
        raise ManualDownloadRequired(f"{name}: {describe_unpopulated(directory)}.\n"
                                     + manual_instructions(manifest, root, reason))
    try:
        dataset = load_layout(manifest, root)
    except DatasetNotFoundError as exc:  # a placed folder that lacks something: name it, then the steps
        raise DatasetNotFoundError(f"{exc}.\n" + manual_instructions(manifest, root)) from None
    if split is not None:
        keep = [i for i, s in enumerate(dataset.splits) if s == split]
        if not keep:
            raise ValueError(f"{name}: no samples in split {split!r} (splits: {sorted(set(map(str, dataset.splits)))})")
        dataset = dataset.subset(keep)
    return dataset.with_transform(transform) if transform is not None else dataset
