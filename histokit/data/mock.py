"""``histokit data mock``: small datasets in the real releases' exact on-disk layouts, for rehearsing the full
profile (``histokit reproduce <paper> --profile full --rehearse``) on a machine without the real data.

Each mock lands where the real dataset goes, ``dataset_dir(manifest, root)`` = ``<root>/<name>/``, with the release's
folder and file names, image size and format (NCT-CRC-HE-100K ``NCT-CRC-HE-100K/ADI/ADI-AAAFLCLY.tif`` at 224 px,
BACH ``ICIAR2018_BACH_Challenge/Photos/Benign/b001.tif`` at 2048 x 1536, PanNuke ``Fold 1/images/fold1/images.npy``
as float64, ...). Archives are not written: a mock is the *extracted* layout, which ``load_dataset`` reads with the
same code as real data and ``verify`` checks (an absent archive is ``unchecked`` when its layout is there).

The pixels come from the 100 bundled Kather 2016 tiles (CC BY 4.0): resampled, rotated / flipped, tiled into a
mosaic for large images and recoloured per class (so classes differ and a k-NN has something to find) and per image
(so no two images are equal), all from a seeded RNG: the same ``seed`` and ``per_class`` give the same bytes.
Each mock's folder holds ``MOCK_DATASET.txt`` (what it is, the attribution) and ``.histokit_mock.json`` (the
parameters); a folder without that marker is never overwritten, and a mock with the same parameters is not
rewritten.

Counts (``per_class``, default 5): images per class in every official split folder (BRACS train / val / test, Kimia
train / test, PanNuke's three folds, PathMNIST's three arrays); **twice** that in a dataset without an official
split (NCT-CRC-HE-100K, CRC-VAL-HE-7K, Kather 2016, BACH, ImageNet, VGH/NKI's two cohort folders), because a
stratified 80 / 10 / 10 split needs 10 images per class for every class to reach both val and test. BreastPathQ
(a regression target): 8 x ``per_class`` train and 4 x ``per_class`` validation patches. ImageNet: 10 synsets.
"""
from __future__ import annotations

import json
import os
import shutil
import string
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Sequence

import cv2
import numpy as np
from PIL import Image

from .. import paths
from ..io import atomic_write_json, atomic_write_text
from .errors import DataError
from .manifests import Manifest, dataset_dir, load_manifest

MARKER = "MOCK_DATASET.txt"
STATE = ".histokit_mock.json"
MOCK_VERSION = 1
DEFAULT_PER_CLASS = 5
GLASS = (242, 241, 239)

ATTRIBUTION = (
    "Pixel content derived from 100 tiles of: Kather JN, Weis C-A, Bianconi F, Melchers SM, Schad LR, Gaiser T, "
    "Marx A, Zoellner FG. Collection of textures in colorectal cancer histology (2016), Zenodo, "
    "doi:10.5281/zenodo.53169, licensed CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/); paper: "
    "Scientific Reports 6:27988 (2016). Changes: resampled, rotated / flipped, tiled into mosaics, recoloured "
    "(histokit/assets/kather2016_tiny/ATTRIBUTION.md describes the bundled copy)."
)

# the bundled tiles' classes, and those that look like tissue (no fat, no glass) for mosaics that must pass a
# tissue filter (VGH/NKI: >= 70 % tissue per tile)
SOURCE_CLASSES = ("TUMOR", "STROMA", "COMPLEX", "LYMPHO", "DEBRIS", "MUCOSA", "ADIPOSE", "EMPTY")
TISSUE = ("TUMOR", "STROMA", "COMPLEX", "LYMPHO", "DEBRIS", "MUCOSA")

# ImageNet's first synsets in sorted order (the folder names of ILSVRC2012_img_train), tench ... ostrich
IMAGENET_SYNSETS = ("n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331", "n01498041",
                    "n01514668", "n01514859", "n01518878")


# ------------------------------------------------------------------------------------------------- pixels


@lru_cache(maxsize=1)
def _bank() -> dict[str, list[np.ndarray]]:
    """The bundled tiles as uint8 arrays, by class name (read once per process)."""
    bank: dict[str, list[np.ndarray]] = {}
    for folder in sorted(p for p in paths.BUNDLED_TILES_DIR.iterdir() if p.is_dir()):
        cls = folder.name.split("_", 1)[1]
        bank[cls] = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]
    if not bank:
        raise DataError(f"mock: no bundled tiles in {paths.BUNDLED_TILES_DIR}")
    return bank


@dataclass(frozen=True)
class Style:
    """How one mock class looks: the bundled classes its pixels come from and a colour cast (per-channel gain, bias)."""

    sources: tuple[str, ...]
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    bias: tuple[float, float, float] = (0.0, 0.0, 0.0)


def _class_styles(classes: Sequence[str], key: str, mapping: Optional[dict] = None,
                  pool: Sequence[str] = TISSUE) -> list[Style]:
    """One style per class: ``mapping[class]`` (source classes) when given, else the pool in turn; a class cast drawn
    from (``key``, class) so that classes sharing a source still differ in colour."""
    styles = []
    for i, cls in enumerate(classes):
        rng = np.random.default_rng([zlib.crc32(f"{key}/{cls}".encode())])
        sources = tuple(mapping[cls]) if mapping and cls in mapping else (pool[i % len(pool)],)
        strength = 0.0 if mapping and cls in mapping else 1.0  # mapped classes look like their source
        gain = tuple(float(g) for g in 1 + strength * rng.uniform(-0.12, 0.12, 3))
        bias = tuple(float(b) for b in strength * rng.uniform(-14, 14, 3))
        styles.append(Style(sources, gain, bias))
    return styles


def _orient(tile: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 rotations / flips of a square tile."""
    tile = np.rot90(tile, k % 4)
    return tile[:, ::-1] if k >= 4 else tile


def _render(rng: np.random.Generator, style: Style, size: tuple[int, int], jitter: float,
            background: bool = False) -> np.ndarray:
    """An (h, w, 3) uint8 image of ``size`` = (w, h): a resampled crop of one tile for tile-sized images, a mosaic
    of tiles for large ones; recoloured by the style and by a per-image jitter; ``background`` whitens the
    outside of an ellipse (a TMA core on glass)."""
    bank = _bank()
    w, h = size
    tiles = [t for c in style.sources for t in bank[c]]
    if max(w, h) <= 320:
        tile = _orient(tiles[rng.integers(len(tiles))], int(rng.integers(8)))
        side = int(rng.integers(160, 225))
        y0, x0 = rng.integers(0, 225 - side, 2)
        crop = Image.fromarray(np.ascontiguousarray(tile[y0:y0 + side, x0:x0 + side]))
        img = np.asarray(crop.resize((w, h), Image.Resampling.BILINEAR))
    else:
        img = np.empty((h, w, 3), dtype=np.uint8)
        for y in range(0, h, 224):
            for x in range(0, w, 224):
                t = _orient(tiles[rng.integers(len(tiles))], int(rng.integers(8)))
                img[y:y + 224, x:x + 224] = t[:min(224, h - y), :min(224, w - x)]
    gain = np.asarray(style.gain) * (1 + rng.normal(0, jitter, 3))
    bias = np.asarray(style.bias) + rng.normal(0, 60 * jitter, 3)
    levels = np.arange(256, dtype=np.float64)[:, None]
    lut = np.clip(levels * gain[None, :] + bias[None, :], 0, 255).astype(np.uint8).reshape(1, 256, 3)
    out = cv2.LUT(np.ascontiguousarray(img), lut)  # one look-up table per channel, one pass over the pixels
    if background:
        yy, xx = np.ogrid[:h, :w]
        cx, cy = w * rng.uniform(0.45, 0.55), h * rng.uniform(0.45, 0.55)
        rx, ry = w * rng.uniform(0.52, 0.6), h * rng.uniform(0.55, 0.65)
        outside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 > 1
        out[outside] = GLASS
    return out


@dataclass(frozen=True)
class ImageJob:
    path: Path          # relative to the dataset folder
    size: tuple[int, int]
    style: Style
    seed: tuple
    jitter: float = 0.06
    background: bool = False


def _save(array: np.ndarray, path: Path) -> None:
    img = Image.fromarray(array)
    suffix = path.suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        img.save(path, format="JPEG", quality=90)
    elif suffix == ".png":
        img.save(path, format="PNG", compress_level=1)
    elif suffix in (".tif", ".tiff"):
        img.save(path, format="TIFF")  # uncompressed RGB, as the NCT / BACH / BreastPathQ releases
    else:
        raise ValueError(f"mock: no writer for {path.suffix}")


def _run_job(job: ImageJob, base: Path) -> int:
    rng = np.random.default_rng(list(job.seed))
    target = base / job.path
    _save(_render(rng, job.style, job.size, job.jitter, job.background), target)
    return target.stat().st_size


# ------------------------------------------------------------------------------------------------- layouts


@dataclass
class Plan:
    """What one mock consists of: image files, array / text files written by ``extra``, and a description."""

    images: list[ImageJob] = field(default_factory=list)
    extra: list[Callable[[Path], None]] = field(default_factory=list)
    detail: str = ""
    samples: int = 0


def _seed(seed: int, name: str, *parts) -> tuple:
    return (int(seed), zlib.crc32(name.encode()), *[zlib.crc32(str(p).encode()) for p in parts])


def _codes(rng: np.random.Generator, n: int, length: int = 8) -> list[str]:
    """``n`` distinct random upper-case codes (NCT-CRC-HE-100K's tile names: ADI-AAAFLCLY.tif)."""
    letters = np.array(list(string.ascii_uppercase))
    out: list[str] = []
    seen = set()
    while len(out) < n:
        code = "".join(rng.choice(letters, length))
        if code not in seen:
            seen.add(code)
            out.append(code)
    return out


def _folders(m: Manifest) -> list[tuple[str, int]]:
    """(folder name, class index) for a class-folder manifest, in class order."""
    if m.class_folders:
        return sorted(((f, m.classes.index(c)) for f, c in m.class_folders.items()), key=lambda t: t[1])
    return [(c, i) for i, c in enumerate(m.classes)]


CRC_LOOK = {"ADI": ["ADIPOSE"], "BACK": ["EMPTY"], "DEB": ["DEBRIS"], "LYM": ["LYMPHO"], "MUC": ["COMPLEX"],
            "MUS": ["STROMA"], "NORM": ["MUCOSA"], "STR": ["STROMA", "COMPLEX"], "TUM": ["TUMOR"]}


def _crc_styles(m: Manifest) -> list[Style]:
    styles = _class_styles(m.classes, "crc", CRC_LOOK)
    # MUC (mucus) and MUS (smooth muscle) share sources with other classes: give them their own cast
    out = []
    for cls, st in zip(m.classes, styles):
        if cls == "MUC":
            st = Style(st.sources, (0.92, 0.95, 1.08), (18, 12, 20))
        elif cls == "MUS":
            st = Style(st.sources, (1.08, 0.9, 0.95), (6, -10, -4))
        out.append(st)
    return out


def _plan_crc(m: Manifest, n: int, seed: int, *, prefix: str = "", jitter: float = 0.06) -> Plan:
    """NCT-CRC-HE-100K(-NONORM) / CRC-VAL-HE-7K: ``<subdir>/<CLS>/<CLS>-[TCGA-]<8 letters>.tif``, 224 px."""
    plan = Plan()
    styles = _crc_styles(m)
    size = tuple(m.layout.image_size)
    for (folder, label) in _folders(m):
        codes = _codes(np.random.default_rng(_seed(seed, m.name, folder, "names")), n)
        for i, code in enumerate(codes):
            rel = Path(m.layout.subdir) / folder / f"{folder}-{prefix}{code}.tif"
            plan.images.append(ImageJob(rel, size, styles[label], _seed(seed, m.name, folder, i), jitter))
    plan.detail = f"{len(m.classes)} classes x {n} tiles, {size[0]} x {size[1]} TIF"
    return plan


def _plan_kather2016(m: Manifest, n: int, seed: int) -> Plan:
    """``Kather_texture_2016_image_tiles_5000/01_TUMOR/<id>_CRC-Prim-HE-<NN>_<k>.tif_Row_<r>_Col_<c>.tif``, 150 px;
    the source image CRC-Prim-HE-01..10 is the group."""
    plan = Plan()
    styles = _class_styles(m.classes, "kather2016", {c: [c] for c in SOURCE_CLASSES})
    size = tuple(m.layout.image_size)
    for folder, label in _folders(m):
        rng = np.random.default_rng(_seed(seed, m.name, folder, "names"))
        ids = rng.choice(np.arange(10000, 99999), n, replace=False)
        for i in range(n):
            src, row, col = i % 10 + 1, int(rng.integers(0, 30)) * 150 + 1, int(rng.integers(0, 30)) * 150 + 1
            name = f"{ids[i]}_CRC-Prim-HE-{src:02d}_{i + 1:03d}.tif_Row_{row}_Col_{col}.tif"
            plan.images.append(ImageJob(Path(m.layout.subdir) / folder / name, size, styles[label],
                                        _seed(seed, m.name, folder, i)))
    plan.detail = f"{len(m.classes)} classes x {n} tiles, {size[0]} x {size[1]} TIF, source images CRC-Prim-HE-01..10"
    return plan


# RoI sizes (w, h): BRACS RoIs vary from a few hundred to several thousand px; a few real-looking sizes, kept
# around 1 megapixel because PNG encoding dominates the mock's time
BRACS_SIZES = ((1024, 768), (768, 1024), (1280, 960), (1024, 1024), (1536, 1152), (896, 672))


def _plan_bracs(m: Manifest, n: int, seed: int) -> Plan:
    """``BRACS_RoI/latest_version/{train,val,test}/<k>_<CLS>/BRACS_<slide>_<CLS>_<k>.png``, RoIs of 672-1536 px;
    the slides of the three splits are disjoint (the official split is patient-level)."""
    plan = Plan()
    styles = _class_styles(m.classes, "bracs")
    for j, (split, sub) in enumerate(m.layout.params["split_dirs"].items()):
        rng = np.random.default_rng(_seed(seed, m.name, split, "slides"))
        n_split = n * len(m.classes)  # about two RoIs per slide; slide ids of the splits never overlap
        slides = 1000 + 2000 * j + rng.choice(np.arange(2000), min(2000, max(2, n_split // 2)), replace=False)
        roi_no: dict = {}
        for folder, label in _folders(m):
            cls = m.classes[label]
            for i in range(n):
                slide = int(slides[rng.integers(len(slides))])
                roi_no[(slide, cls)] = roi_no.get((slide, cls), 0) + 1
                size = BRACS_SIZES[int(rng.integers(len(BRACS_SIZES)))]
                rel = Path(m.layout.subdir) / sub / folder / f"BRACS_{slide}_{cls}_{roi_no[(slide, cls)]}.png"
                plan.images.append(ImageJob(rel, size, styles[label], _seed(seed, m.name, split, folder, i)))
    plan.detail = (f"{len(m.layout.params['split_dirs'])} splits x {len(m.classes)} classes x {n} RoIs, PNG "
                   f"{min(min(s) for s in BRACS_SIZES)}-{max(max(s) for s in BRACS_SIZES)} px")
    return plan


BACH_PREFIX = {"Benign": "b", "InSitu": "is", "Invasive": "iv", "Normal": "n"}


def _plan_bach(m: Manifest, n: int, seed: int) -> Plan:
    """``ICIAR2018_BACH_Challenge/Photos/<Class>/<b|is|iv|n><NNN>.tif`` (2048 x 1536 TIF) and the release's
    ``Photos/microscopy_ground_truth.csv`` (``b001.tif,Benign``, no header)."""
    plan = Plan()
    look = {"Normal": ["MUCOSA"], "Benign": ["COMPLEX", "STROMA"], "InSitu": ["TUMOR", "LYMPHO"],
            "Invasive": ["TUMOR", "STROMA"]}
    styles = _class_styles(m.classes, "bach", look)
    size = tuple(m.layout.image_size)
    rows = []
    for folder, label in sorted(_folders(m)):
        for i in range(n):
            name = f"{BACH_PREFIX.get(folder, folder[:2].lower())}{i + 1:03d}.tif"
            plan.images.append(ImageJob(Path(m.layout.subdir) / folder / name, size, styles[label],
                                        _seed(seed, m.name, folder, i)))
            rows.append(f"{name},{folder}")

    def write_csv(base: Path) -> None:
        (base / m.layout.subdir / "microscopy_ground_truth.csv").write_text("\n".join(rows) + "\n")

    plan.extra.append(write_csv)
    plan.detail = f"{len(m.classes)} classes x {n} images, {size[0]} x {size[1]} TIF + microscopy_ground_truth.csv"
    return plan


def _plan_kimia(m: Manifest, n: int, seed: int) -> Plan:
    """``{train,test}/s0..s23/s<k>_<i>.jpg``, 1000 x 1000 JPEG; each scan keeps one look in both splits."""
    plan = Plan()
    styles = _class_styles(m.classes, "kimia")
    size = tuple(m.layout.image_size)
    for split, sub in m.layout.params["split_dirs"].items():
        for label, scan in enumerate(m.classes):
            for i in range(n):
                rel = Path(m.layout.subdir) / sub / scan / f"{scan}_{i}.jpg"
                plan.images.append(ImageJob(rel, size, styles[label], _seed(seed, m.name, split, scan, i), 0.04))
    plan.detail = (f"{len(m.layout.params['split_dirs'])} splits x {len(m.classes)} scans x {n} patches, "
                   f"{size[0]} x {size[1]} JPEG")
    return plan


def _plan_pannuke(m: Manifest, n: int, seed: int) -> Plan:
    """Per fold ``Fold N/images/foldN/images.npy`` (k, 256, 256, 3) float64 in 0..255, ``types.npy`` (tissue names,
    unicode) and ``Fold N/masks/foldN/masks.npy`` (k, 256, 256, 6) float64; each fold has every tissue, shuffled.
    The masks have the release's shape and dtype but are all zero (the kit does not read them); the file is
    written sparse, so it costs no disk until copied."""
    plan = Plan()
    styles = _class_styles(m.classes, "pannuke")
    size = tuple(m.layout.image_size)
    for fold in m.layout.params["folds"]:
        rng = np.random.default_rng(_seed(seed, m.name, fold["name"], "order"))
        labels = rng.permutation(np.repeat(np.arange(len(m.classes)), n))

        def write_fold(base: Path, fold=fold, labels=labels) -> None:
            images_path, types_path = base / fold["images"], base / fold["types"]
            masks_path = base / fold.get("masks", fold["images"].replace("/images/", "/masks/").replace(
                "images.npy", "masks.npy"))
            for p in (images_path, types_path, masks_path):
                p.parent.mkdir(parents=True, exist_ok=True)
            images = np.lib.format.open_memmap(images_path, mode="w+", dtype=np.float64,
                                               shape=(len(labels), size[1], size[0], 3))
            for row, label in enumerate(labels):
                images[row] = _render(np.random.default_rng(_seed(seed, m.name, fold["name"], row)),
                                      styles[label], size, 0.08)
            images.flush()
            del images
            names = [m.classes[i] for i in labels]
            np.save(types_path, np.array(names, dtype=f"<U{max(map(len, names))}"))
            masks = np.lib.format.open_memmap(masks_path, mode="w+", dtype=np.float64,
                                              shape=(len(labels), size[1], size[0], 6))
            masks.flush()
            del masks

        plan.extra.append(write_fold)
    plan.samples = len(m.layout.params["folds"]) * n * len(m.classes)
    plan.detail = (f"{len(m.layout.params['folds'])} folds x {len(m.classes)} tissues x {n} patches, "
                   f"{size[0]} px float64 .npy + types.npy + masks.npy (zeros)")
    return plan


def _plan_pathmnist(m: Manifest, n: int, seed: int) -> Plan:
    """``pathmnist_224/{train,val,test}_{images,labels}.npy`` as extracted from pathmnist_224.npz: images
    (k, 224, 224, 3) uint8, labels (k, 1) uint8 (MedMNIST's class order = the manifest's)."""
    plan = Plan()
    styles = _crc_styles(m)
    size = tuple(m.layout.image_size)
    splits = m.splits.get("names", ["train", "val", "test"])
    for split in splits:
        def write_split(base: Path, split=split) -> None:
            rng = np.random.default_rng(_seed(seed, m.name, split, "order"))
            labels = rng.permutation(np.repeat(np.arange(len(m.classes)), n)).astype(np.uint8)
            folder = base / m.layout.subdir
            folder.mkdir(parents=True, exist_ok=True)
            images = np.lib.format.open_memmap(folder / f"{split}_images.npy", mode="w+", dtype=np.uint8,
                                               shape=(len(labels), size[1], size[0], 3))
            for row, label in enumerate(labels):
                images[row] = _render(np.random.default_rng(_seed(seed, m.name, split, row)), styles[label], size,
                                      0.06)
            images.flush()
            del images
            np.save(folder / f"{split}_labels.npy", labels.reshape(-1, 1))

        plan.extra.append(write_split)
    plan.samples = len(splits) * n * len(m.classes)
    plan.detail = f"{len(splits)} splits x {len(m.classes)} classes x {n} tiles, {size[0]} px uint8 .npy"
    return plan


def _plan_breastpathq(m: Manifest, n: int, seed: int) -> Plan:
    """``breastpathq/datasets/{train,validation}/<slide>_<rid>.tif`` (512 px TIF) and ``train_labels.csv`` /
    ``val_labels.csv`` (slide, rid, y). A patch is a 2 x 2 mosaic of 256 px quadrants, each tumour or not; y, the
    cellularity, is the tumour share plus a little noise, so a regression on features has a signal."""
    plan = Plan()
    p = m.layout.params
    size = tuple(m.layout.image_size)
    counts = {"train": 8 * n, "val": 4 * n}
    tumour = Style(("TUMOR",))
    other = Style(("STROMA", "ADIPOSE", "LYMPHO", "DEBRIS"))
    slide_ranges = {"train": (10000, 50000), "val": (50000, 99999)}
    for split, spec in p["split_csvs"].items():
        rng = np.random.default_rng(_seed(seed, m.name, split))
        k = counts.get(split, 4 * n)
        lo, hi = slide_ranges.get(split, (10000, 99999))
        slides = rng.choice(np.arange(lo, hi), max(2, k // 5), replace=False)
        rows, rids = [], {}
        for i in range(k):
            slide = int(slides[i % len(slides)])
            rids[slide] = rids.get(slide, 0) + 1
            n_tumour = int(rng.integers(0, 5))
            y = float(np.clip(round(n_tumour / 4 + rng.normal(0, 0.04), 2), 0, 1))
            quadrants = [tumour] * n_tumour + [other] * (4 - n_tumour)
            order = [quadrants[j] for j in rng.permutation(4)]
            rel = Path(m.layout.subdir) / spec["image_dir"] / p["path_template"].format(slide=slide, rid=rids[slide])
            rows.append({"slide": slide, "rid": rids[slide], "y": y, "rel": rel, "order": order,
                         "seed": _seed(seed, m.name, split, i)})

        def write_split(base: Path, rows=rows, csv_name=spec["csv"]) -> None:
            half = (size[0] // 2, size[1] // 2)
            for r in rows:
                rng_i = np.random.default_rng(list(r["seed"]))
                parts = [_render(rng_i, st, half, 0.05) for st in r["order"]]
                img = np.vstack([np.hstack(parts[:2]), np.hstack(parts[2:])])
                (base / r["rel"]).parent.mkdir(parents=True, exist_ok=True)
                _save(img, base / r["rel"])
            text = "slide,rid,y\n" + "".join(f"{r['slide']},{r['rid']},{r['y']}\n" for r in rows)
            (base / m.layout.subdir / csv_name).write_text(text)

        plan.extra.append(write_split)
        plan.samples += k
    plan.detail = (f"regression: {counts['train']} train / {counts['val']} val patches, {size[0]} px TIF, "
                   "cellularity = tumour share of 4 quadrants")
    return plan


IMAGENET_SIZES = ((500, 375), (500, 333), (375, 500), (500, 400), (640, 480))


def _plan_imagenet(m: Manifest, n: int, seed: int) -> Plan:
    """``train/<synset>/<synset>_<number>.JPEG`` (the ILSVRC2012 train tree) for 10 synsets, 333-640 px JPEGs."""
    plan = Plan()
    styles = _class_styles(IMAGENET_SYNSETS, "imagenet", pool=SOURCE_CLASSES)
    for label, synset in enumerate(IMAGENET_SYNSETS):
        rng = np.random.default_rng(_seed(seed, m.name, synset))
        numbers = rng.choice(np.arange(1, 40000), n, replace=False)
        for i, number in enumerate(numbers):
            size = IMAGENET_SIZES[int(rng.integers(len(IMAGENET_SIZES)))]
            rel = Path(m.layout.subdir) / synset / f"{synset}_{number}.JPEG"
            plan.images.append(ImageJob(rel, size, styles[label], _seed(seed, m.name, synset, i), 0.1))
    plan.detail = f"{len(IMAGENET_SYNSETS)} synsets x {n} images, JPEG {IMAGENET_SIZES[2][0]}-640 px"
    return plan


def _plan_vgh_nki(m: Manifest, n: int, seed: int) -> Plan:
    """``images/VGH/VGH_<NNNN>.jpg`` and ``images/NKI/NKI_<NNNN>.jpg``, 1128 x 720 JPEG: a TMA core on glass (the
    corners are background, so the 70 % tissue filter drops some tiles)."""
    plan = Plan()
    size = tuple(m.layout.image_size)
    for cohort, look in (("NKI", ("TUMOR", "STROMA", "COMPLEX")), ("VGH", ("TUMOR", "STROMA", "LYMPHO"))):
        style = Style(look)
        for i in range(n):
            rel = Path(m.layout.subdir) / cohort / f"{cohort}_{i + 1:04d}.jpg"
            plan.images.append(ImageJob(rel, size, style, _seed(seed, m.name, cohort, i), 0.06, background=True))
    plan.detail = f"2 cohort folders x {n} images, {size[0]} x {size[1]} JPEG (TMA core on glass)"
    return plan


# dataset -> (planner, has an official split: per_class counts per split; without, twice per_class)
PLANNERS: dict[str, tuple[Callable[..., Plan], bool]] = {
    "nct_crc_he_100k": (lambda m, n, s: _plan_crc(m, n, s, jitter=0.03), False),
    "nct_crc_he_100k_nonorm": (lambda m, n, s: _plan_crc(m, n, s, jitter=0.15), False),
    "crc_val_he_7k": (lambda m, n, s: _plan_crc(m, n, s, prefix="TCGA-", jitter=0.08), False),
    "kather2016": (_plan_kather2016, False),
    "pathmnist": (_plan_pathmnist, True),
    "bracs": (_plan_bracs, True),
    "bach": (_plan_bach, False),
    "kimia_path24c": (_plan_kimia, True),
    "pannuke": (_plan_pannuke, True),
    "breastpathq": (_plan_breastpathq, True),
    "imagenet1k": (_plan_imagenet, False),
    "vgh_nki": (_plan_vgh_nki, False),
}
MOCKABLE = tuple(PLANNERS)


# ------------------------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class MockResult:
    name: str
    path: Path
    files: int
    samples: int
    bytes: int
    seconds: float
    detail: str
    skipped: bool = False

    def line(self) -> str:
        what = "up to date" if self.skipped else f"{self.files:5d} files {self.bytes / 1e6:8.1f} MB {self.seconds:6.1f} s"
        return f"{self.name:24s} {what}  {self.detail}  -> {self.path}"


def _marker_text(m: Manifest, per_class: int, seed: int, detail: str) -> str:
    return (
        f"MOCK DATA written by `histokit data mock {m.name}`: NOT the real dataset, for rehearsal only.\n\n"
        f"It imitates the on-disk layout of {m.title} ({m.homepage}): folder and file names, image size and\n"
        f"format, so that the kit's loaders read it exactly as they read the real release. Its images are not\n"
        f"that dataset's images and no number computed on them means anything about any paper.\n\n"
        f"Contents: {detail}\n"
        f"Parameters: per_class={per_class}, seed={seed}, mock version {MOCK_VERSION}.\n\n"
        f"{ATTRIBUTION}\n\n"
        f"Delete this folder before placing the real data here (`histokit data mock` never overwrites a folder\n"
        f"without this file, and rewrites this one only when its parameters change or with --force).\n"
    )


def _state(m: Manifest, per_class: int, seed: int) -> dict:
    return {"mock": m.name, "version": MOCK_VERSION, "per_class": int(per_class), "seed": int(seed)}


def is_mock(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` is a dataset folder written by ``histokit data mock``."""
    return (Path(directory) / MARKER).is_file() and (Path(directory) / STATE).is_file()


def _files_and_bytes(folder: Path) -> tuple[int, int]:
    """(data files, bytes on disk): sparse files (PanNuke's zero masks) count what they occupy, not their length."""
    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".") and p.name != MARKER]
    used = 0
    for p in files:
        st = p.stat()
        used += min(st.st_size, getattr(st, "st_blocks", st.st_size // 512 + 1) * 512)
    return len(files), used


def mock_dataset(name: str, root: str | os.PathLike, *, per_class: Optional[int] = None, seed: int = 0,
                 force: bool = False, workers: Optional[int] = None) -> MockResult:
    """Write the mock of ``name`` at ``dataset_dir(manifest, root)``; see the module docstring. Returns what it did.

    A folder that holds anything but a mock is refused (:class:`DataError`); an existing mock with the same
    parameters is kept (``skipped``) unless ``force``. The mock is written into a temporary sibling folder and
    renamed into place, so an interrupted run leaves no half-written dataset."""
    if name not in PLANNERS:
        raise DataError(f"no mock for {name!r} (mockable: {', '.join(MOCKABLE)})")
    per_class = DEFAULT_PER_CLASS if per_class is None else int(per_class)
    if per_class < 1:
        raise DataError(f"per_class must be >= 1, got {per_class}")
    m = load_manifest(name)
    if root is None:
        raise DataError("give the data root (--root DIR); mocks are never written to the default "
                        "data root implicitly")
    target = dataset_dir(m, root)
    planner, has_splits = PLANNERS[name]
    n = per_class if has_splits else 2 * per_class
    state = _state(m, per_class, seed)
    if target.exists() and any(target.iterdir()):
        if not is_mock(target):
            raise DataError(f"{target} exists and is not a mock (no {MARKER}); refusing to "
                            "overwrite what may be the real dataset. Choose another --root.")
        try:
            same = json.loads((target / STATE).read_text()) == {**state, "complete": True}
        except (OSError, ValueError):
            same = False
        if same and not force:
            files, size = _files_and_bytes(target)
            return MockResult(name, target, files, 0, size, 0.0, "same parameters", skipped=True)
    start = time.perf_counter()
    plan = planner(m, n, seed)
    tmp = target.parent / f".{target.name}.mock-partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        for folder in sorted({(tmp / j.path).parent for j in plan.images}):
            folder.mkdir(parents=True, exist_ok=True)
        n_workers = workers or min(4, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=n_workers) as pool:  # PIL encodes outside the GIL
            list(pool.map(lambda j: _run_job(j, tmp), plan.images))
            list(pool.map(lambda f: f(tmp), plan.extra))
        atomic_write_text(tmp / MARKER, _marker_text(m, per_class, seed, plan.detail))
        atomic_write_json(tmp / STATE, {**state, "complete": True})
        if target.exists():
            shutil.rmtree(target)  # an older mock (checked above): never real data
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files, size = _files_and_bytes(target)
    samples = plan.samples or len(plan.images)
    return MockResult(name, target, files, samples, size, time.perf_counter() - start, plan.detail)


def write_mock(name: str, root: str | os.PathLike, per_class: Optional[int] = None, seed: int = 0, *,
               force: bool = False, workers: Optional[int] = None) -> Path:
    """Write the mock of dataset ``name`` under ``root`` (``<root>/<name>/``) and return that folder."""
    return mock_dataset(name, root, per_class=per_class, seed=seed, force=force, workers=workers).path


def write_all_mocks(root: str | os.PathLike, per_class: Optional[int] = None, seed: int = 0, *,
                    names: Optional[Sequence[str]] = None, force: bool = False, workers: Optional[int] = None,
                    report: Optional[Callable[[MockResult], None]] = None) -> dict[str, Path]:
    """Write every mock (or ``names``) under ``root``; ``report`` is called with each :class:`MockResult`."""
    out = {}
    for name in names or MOCKABLE:
        result = mock_dataset(name, root, per_class=per_class, seed=seed, force=force, workers=workers)
        if report is not None:
            report(result)
        out[name] = result.path
    return out
