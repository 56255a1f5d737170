"""A decoded-tile cache: decode a dataset once into a uint8 ``(N, H, W, 3)`` array on disk, then serve tensors.

Why: PIL decodes a 224 px PNG or TIFF in several milliseconds per core (docs/protocols.md, speed references) while a GPU
embeds tens of thousands of tiles per second, so decoding every epoch starves the model. The cache keeps the
*resized* RGB pixels as uint8 (4x smaller than float32, and what crosses PCIe); ``extract_features`` scales and
normalizes them on the device with the cache's ``mean_std``, the same arithmetic as torchvision's ToTensor +
Normalize, so features from the cache equal features from the files through ``eval_transform``.

On disk: ``<path>`` is a ``.npy`` (memory-mapped when read, never loaded whole) and ``<path>.json`` its sidecar:
sha256 of the ``.npy``, shape, resize rule, decoder, labels, and a fingerprint of the sources (paths, sizes,
modification times, labels, tile size, decoder). :func:`build_tile_cache` reuses a cache whose fingerprint and
checksum match, so a dataset is decoded once. Both files are written atomically, the array first.

Decoders: ``"pil"`` (default) is the kit's ``load_image`` + PIL bicubic resize, exactly what ``eval_transform``
does. ``"torchvision"`` decodes with ``torchvision.io.decode_image`` and resizes with antialiased bicubic
interpolation in torch; on a CUDA device JPEGs decode on the GPU (``torchvision.io.decode_jpeg(device="cuda")``,
nvJPEG). Its pixels differ from PIL's by a few grey levels (another IDCT and resampler), which is why the decoder is
part of the fingerprint.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..io import atomic_path, atomic_write_json, sha256_file
from .datasets import PatchDataset
from .transforms import IMAGENET_MEAN, IMAGENET_STD

DECODERS = ("pil", "torchvision")
RESIZE_RULE = "square resize to size x size, bicubic with antialiasing (PIL for 'pil', torch for 'torchvision')"
_JPEG_SUFFIXES = (".jpg", ".jpeg")


class TileCacheError(ValueError):
    """A cache file or its sidecar is missing, corrupt, or does not describe the array next to it."""


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _source_fingerprint(dataset: PatchDataset, size: int, decoder: str) -> str:
    """sha256 over what determines the pixels: each source's path, byte size and mtime, the labels, size, decoder."""
    h = hashlib.sha256(json.dumps({"size": size, "decoder": decoder, "resize": RESIZE_RULE}).encode())
    for sample, label in zip(dataset.samples, dataset.labels.tolist()):
        st = os.stat(sample.path)
        box = "" if sample.box is None else f"|{sample.box}"  # tiles of one image differ by their box
        h.update(f"{sample.path}|{sample.row}{box}|{st.st_size}|{st.st_mtime_ns}|{label}\n".encode())
    return h.hexdigest()


def _pil_tile(dataset: PatchDataset, i: int, size: int) -> np.ndarray:
    """The ``eval_transform`` resize on a PIL image (torchvision's Resize on PIL input calls PIL's bicubic)."""
    img = dataset.image_loader(dataset.samples[i])
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def decode_resize_torchvision(paths: Sequence[str], size: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """Decode ``paths`` with torchvision (JPEGs on the GPU when ``device`` is CUDA) and resize each to
    ``size`` x ``size``; returns a uint8 ``(B, 3, size, size)`` tensor on ``device``."""
    with warnings.catch_warnings():  # torchvision 0.29 flags its image codecs as moving to TorchCodec; they work
        warnings.simplefilter("ignore", DeprecationWarning)
        return _decode_resize_torchvision(paths, size, torch.device(device))


def _decode_resize_torchvision(paths: Sequence[str], size: int, device: torch.device) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file

    raw = [read_file(str(p)) for p in paths]
    is_jpeg = [str(p).lower().endswith(_JPEG_SUFFIXES) for p in paths]
    images: list[Optional[torch.Tensor]] = [None] * len(paths)
    jpeg_ids = [i for i, j in enumerate(is_jpeg) if j]
    if jpeg_ids and device.type == "cuda":  # one batched nvJPEG call
        decoded = decode_jpeg([raw[i] for i in jpeg_ids], mode=ImageReadMode.RGB, device=device)
        for i, img in zip(jpeg_ids, decoded):
            images[i] = img
    for i, data in enumerate(raw):
        if images[i] is None:
            try:
                images[i] = decode_image(data, mode=ImageReadMode.RGB).to(device)
            except RuntimeError as exc:
                raise TileCacheError(f"{paths[i]}: torchvision cannot decode it ({exc}); use decoder='pil'") from exc
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8, device=device)
    for i, img in enumerate(images):
        if tuple(img.shape[1:]) == (size, size):
            out[i] = img
        else:
            resized = torch.nn.functional.interpolate(img[None].float(), size=(size, size), mode="bicubic",
                                                      antialias=True, align_corners=False)
            out[i] = resized[0].round_().clamp_(0, 255).to(torch.uint8)
    return out


class TileCache(torch.utils.data.Dataset):
    """``cache[i] -> (uint8 tensor (3, H, W), label, i)`` from a cache written by :func:`build_tile_cache`.

    ``mean_std`` is the normalization ``extract_features`` applies on the device (ImageNet's unless given);
    ``decode_included`` is False: reading a cache decodes nothing. ``verify=True`` checks the array's sha256
    against the sidecar (a full read: about a second per GB).
    """

    decode_included = False

    def __init__(self, path: str | os.PathLike, *, verify: bool = True,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.path = Path(path)
        side = _sidecar(self.path)
        if not self.path.is_file():
            raise TileCacheError(f"tile cache not found: {self.path}")
        if not side.is_file():
            raise TileCacheError(f"tile cache sidecar not found: {side} (build caches with build_tile_cache)")
        try:
            self.meta = json.loads(side.read_text())
        except json.JSONDecodeError as exc:
            raise TileCacheError(f"tile cache sidecar {side} is not valid JSON: {exc}") from exc
        for key in ("sha256", "shape", "labels", "size", "fingerprint", "decoder"):
            if key not in self.meta:
                raise TileCacheError(f"tile cache sidecar {side} lacks field {key!r}")
        if verify and sha256_file(self.path) != self.meta["sha256"]:
            raise TileCacheError(f"tile cache {self.path} does not match the sha256 in {side}: it changed after it "
                                 "was built (rebuild it with build_tile_cache(..., force=True))")
        self.labels = np.asarray(self.meta["labels"], dtype=np.int64)
        self.size = int(self.meta["size"])
        self.mean_std = (tuple(float(m) for m in mean), tuple(float(s) for s in std))
        self._images = None
        shape = tuple(self.images.shape)
        if shape != tuple(self.meta["shape"]) or self.images.dtype != np.uint8:
            raise TileCacheError(f"tile cache {self.path} holds {self.images.dtype} {shape}, its sidecar says uint8 "
                                 f"{tuple(self.meta['shape'])}")
        if shape[0] != self.labels.shape[0]:
            raise TileCacheError(f"tile cache sidecar {side} has {self.labels.shape[0]} labels for {shape[0]} tiles")

    @property
    def images(self) -> np.ndarray:
        if self._images is None:  # opened lazily, so DataLoader workers map the file instead of receiving a copy
            try:
                self._images = np.load(self.path, mmap_mode="r", allow_pickle=False)
            except ValueError as exc:
                raise TileCacheError(f"tile cache {self.path} is not a readable .npy array: {exc}") from exc
        return self._images

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_images"] = None  # pickling a memmap would copy the whole array into each spawned worker
        return state

    def __len__(self) -> int:
        return self.labels.shape[0]

    def _item(self, pixels: np.ndarray, i: int):
        return torch.from_numpy(pixels).permute(2, 0, 1), int(self.labels[i]), i

    def __getitem__(self, i: int):
        i = int(i)
        return self._item(np.array(self.images[i]), i)  # np.array: a writable copy out of the read-only map

    def __getitems__(self, indices: Sequence[int]) -> list:
        """The DataLoader's batched fetch: one fancy-indexed read for the whole batch instead of one per tile."""
        idx = np.asarray(indices, dtype=np.int64)
        pixels = self.images[idx]
        return [self._item(pixels[j], int(i)) for j, i in enumerate(idx)]


def build_tile_cache(dataset: PatchDataset, path: str | os.PathLike, size: int, *, decoder: str = "pil",
                     device: str | torch.device = "cpu", batch_size: int = 64, force: bool = False,
                     mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> TileCache:
    """Decode every image of ``dataset`` once, resized to ``size`` x ``size``, into ``path`` (+ sidecar).

    An existing cache with the same source fingerprint and a matching sha256 is reused unless ``force``.
    ``decoder`` is ``"pil"`` (the kit's ``load_image``; equals ``eval_transform``'s pixels) or ``"torchvision"``
    (JPEGs decoded on ``device`` when it is CUDA, batches of ``batch_size``). Needs a classification
    :class:`PatchDataset` (integer labels).
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got decoder={decoder!r}")
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer, got size={size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got batch_size={batch_size}")
    if not isinstance(dataset, PatchDataset):
        raise TypeError(f"build_tile_cache needs a histokit PatchDataset, got {type(dataset).__name__}")
    if dataset.is_regression:
        raise ValueError(f"build_tile_cache needs class labels; {dataset!r} is a regression dataset")
    if len(dataset) == 0:
        raise ValueError(f"build_tile_cache got an empty dataset {dataset!r}")
    if decoder == "torchvision" and any(s.row is not None or s.box is not None for s in dataset.samples):
        raise ValueError("decoder='torchvision' reads whole image files; this dataset is array-backed or tiled: "
                         "use decoder='pil'")
    path = Path(path)
    fingerprint = _source_fingerprint(dataset, int(size), decoder)
    side = _sidecar(path)
    if not force and path.is_file() and side.is_file():
        try:
            if json.loads(side.read_text()).get("fingerprint") == fingerprint:
                return TileCache(path, verify=True, mean=mean, std=std)
        except (json.JSONDecodeError, TileCacheError):
            pass  # a stale or broken cache is rebuilt below

    n = len(dataset)
    with atomic_path(path) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            if decoder == "pil":
                for i in range(lo, hi):
                    arr[i] = _pil_tile(dataset, i, int(size))
            else:
                batch = decode_resize_torchvision([s.path for s in dataset.samples[lo:hi]], int(size), device)
                arr[lo:hi] = batch.permute(0, 2, 3, 1).cpu().numpy()
        arr.flush()
        del arr
    atomic_write_json(side, {
        "sha256": sha256_file(path), "shape": [n, int(size), int(size), 3], "dtype": "uint8", "size": int(size),
        "decoder": decoder, "resize": RESIZE_RULE, "fingerprint": fingerprint, "source": dataset.name,
        "labels": dataset.labels.tolist(), "classes": dataset.classes,
    })
    return TileCache(path, verify=False, mean=mean, std=std)
