"""One dataset type for every layout: :class:`PatchDataset` over :class:`Sample` records, plus one loader per
manifest layout (``class_folders``, ``csv``, ``pannuke_npy``, ``kimia``, ``medmnist_npz``) and
:func:`load_dataset` which picks the loader from the manifest.

Labels are class indices into ``classes`` (int64), or floats for a regression target (BreastPathQ cellularity,
``classes == []``). ``group`` is what a leak-free split must keep together (patient / slide / scan / source image,
see the manifest's ``groups``); ``split`` is the official split a sample belongs to, when the dataset has one.
"""
from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .errors import DatasetNotFoundError, ManualDownloadRequired
from .images import array_to_image, load_image
from .manifests import Manifest, dataset_dir, load_manifest


@dataclass(frozen=True)
class Sample:
    """One patch: its file (or array file + ``row``), label, group id and official split (None when none)."""

    path: str
    label: int | float
    group: Optional[str] = None
    split: Optional[str] = None
    row: Optional[int] = None  # row of a .npy array (PanNuke, MedMNIST); None for an image file


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


def read_sample_image(sample: Sample) -> Image.Image:
    """The RGB image of ``sample``: ``load_image`` for a file, the array row for an array-backed sample."""
    if sample.row is None:
        return load_image(sample.path)
    return array_to_image(_mmap(sample.path)[sample.row], f"{sample.path}[{sample.row}]")


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
    def paths(self) -> list[str]:
        return [s.path if s.row is None else f"{s.path}[{s.row}]" for s in self.samples]

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


def load_class_folders(directory: str | os.PathLike, classes: Sequence[str], *,
                       class_folders: Optional[Mapping[str, str]] = None, patterns: Sequence[str] = ("*",),
                       group_regex: Optional[str] = None, split_dirs: Optional[Mapping[str, str]] = None,
                       name: str = "") -> PatchDataset:
    """``<directory>[/<split_dir>]/<class folder>/<image>``; ``class_folders`` maps folder names to class names
    (default: the folder is named like the class). Unknown folders are an error, so a typo never drops a class."""
    directory = _require_dir(Path(directory), f"{name or 'dataset'} folder")
    folder_to_class = dict(class_folders) if class_folders else {c: c for c in classes}
    regex = re.compile(group_regex) if group_regex else None
    bases = {None: directory} if not split_dirs else {
        split: _require_dir(directory / sub, f"{name} split folder '{split}'") for split, sub in split_dirs.items()
    }
    samples = []
    for split, base in bases.items():
        unknown = sorted(p.name for p in base.iterdir() if p.is_dir() and p.name not in folder_to_class)
        if unknown:
            raise ValueError(f"{base}: folders {unknown} are not classes of {name or 'the dataset'} "
                             f"(expected {sorted(folder_to_class)})")
        for folder, cls in folder_to_class.items():
            if cls not in classes:
                raise ValueError(f"{name}: class_folders maps {folder!r} to {cls!r}, which is not in classes")
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
        for row in table.to_dict("records"):
            rel = str(row[path_column]) if path_column else path_template.format(**row)
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


def load_dataset(name: str, root: Optional[str | os.PathLike] = None, transform: Optional[Callable] = None, *,
                 split: Optional[str] = None) -> PatchDataset:
    """Load dataset ``name`` from ``<root>/<name>/`` as its manifest's layout says (``kather2016_tiny``: the
    bundled tiles when ``root`` is None). ``split`` keeps one official split (e.g. ``"test"``)."""
    from .download import manual_instructions

    manifest = load_manifest(name)
    if manifest.access == "unavailable":
        raise ManualDownloadRequired(manual_instructions(manifest, root, "the host cannot serve it"))
    directory = dataset_dir(manifest, root) / manifest.layout.subdir
    if not directory.is_dir():
        raise DatasetNotFoundError(f"{name}: {directory} does not exist.\n" + manual_instructions(manifest, root))
    dataset = _from_manifest(manifest, directory)
    if split is not None:
        keep = [i for i, s in enumerate(dataset.splits) if s == split]
        if not keep:
            raise ValueError(f"{name}: no samples in split {split!r} (splits: {sorted(set(map(str, dataset.splits)))})")
        dataset = dataset.subset(keep)
    return dataset.with_transform(transform) if transform is not None else dataset
