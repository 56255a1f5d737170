"""Batched feature extraction with honest timing, and the feature-set artifact on disk.

Habijan et al. (EUSIPCO 2025, Sec. III-B) describe the retrieval descriptor as the average of the final patch
tokens, ``f(I) = 1/N sum_i Z_i``, followed by L2 normalization, ``f^(I) = f(I) / ||f(I)||``. The pooling belongs to
the encoder (``histokit.models.base.Encoder.forward`` already returns each paper's pooled embedding: mean patch token
for EsViT, [CLS] for DINO ViT, mean [cls] tokens for CypherViT, GAP for CNNs); this module only applies the
L2 normalization, so inner product on the stored vectors equals the paper's cosine similarity (Eq. 1).

Timings follow the kit's rule (docs/design.md): every number says its batch size, precision, device and whether image
decoding was included, and CUDA is synchronized before a clock is read.

Speed (``histokit speed`` measures each): bf16 autocast on request, channels_last for convolutional networks,
optional ``torch.compile``, pinned host memory with non-blocking copies, DataLoader workers sized to the machine
(``num_workers="auto"``), in-memory ``TensorDataset`` batches sliced instead of collated item by item, uint8 images
(a :class:`histokit.data.tile_cache.TileCache`) normalized on the device after a 4x smaller copy, per-batch model
time from CUDA events (no host synchronization per batch), and one device-to-host copy of all features at the end.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from ..progress import progress_bar
from ..data.loading import loader_kwargs, usable_cpus, worker_count  # noqa: F401  (usable_cpus: kept importable)

from ..io import atomic_path, sha256_file

PRECISIONS = ("fp32", "bf16")
_NPZ_KEYS = ("features", "labels", "indices", "timing_json")


class FeatureFileError(ValueError):
    """A feature file is missing, corrupt, or does not match its expected checksum."""


@dataclass
class FeatureSet:
    """Embeddings of one dataset split, row ``i`` belonging to dataset item ``indices[i]``."""

    features: np.ndarray          # (N, D) float32, L2-normalized unless extracted with normalize=False
    labels: np.ndarray            # (N,) int64 (-1 where the dataset has no label)
    indices: np.ndarray           # (N,) int64 dataset indices, to map a hit back to its image
    timing: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.features = np.ascontiguousarray(self.features, dtype=np.float32)
        labels = np.asarray(self.labels)
        # class ids are int64; a regression target (BreastPathQ cellularity) keeps its float value
        self.labels = labels.astype(np.float64 if labels.dtype.kind == "f" else np.int64)
        self.indices = np.asarray(self.indices, dtype=np.int64)
        if self.features.ndim != 2:
            raise ValueError(f"FeatureSet.features must be (N, D), got shape {self.features.shape}")
        n = self.features.shape[0]
        for name in ("labels", "indices"):
            arr = getattr(self, name)
            if arr.shape != (n,):
                raise ValueError(f"FeatureSet.{name} must have shape ({n},), got {arr.shape}")

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        return self.features.shape[1]


def l2_normalize(x: np.ndarray | torch.Tensor, eps: float = 1e-12):
    """Row-wise ``x / max(||x||_2, eps)`` (Habijan et al., Sec. III-B.3); numpy in -> numpy, tensor in -> tensor.

    ``eps`` keeps an all-zero row at zero instead of NaN (the convention of ``torch.nn.functional.normalize``).
    """
    if isinstance(x, torch.Tensor):
        return torch.nn.functional.normalize(x, p=2, dim=-1, eps=eps)
    x = np.asarray(x, dtype=np.float32)
    # einsum: the row norms in one pass without the (N, D) temporary of x * x (7x faster than linalg.norm here)
    norms = np.sqrt(np.einsum("...i,...i->...", x, x))[..., None]
    return (x / np.maximum(norms, eps)).astype(np.float32, copy=False)


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got precision={precision!r}")


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast where asked (GPU tensor cores; CPU autocast works too); fp32 runs without autocast."""
    _check_precision(precision)
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA kernels, so a wall clock read afterwards measures finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _infer_decode_included(dataset: Dataset) -> bool:
    # A dataset may say so itself; otherwise anything but an in-memory TensorDataset reads (and decodes) files.
    flag = getattr(dataset, "decode_included", None)
    if flag is not None:
        return bool(flag)
    return not isinstance(dataset, TensorDataset)


def _split_batch(batch, batch_index: int):
    if not isinstance(batch, (tuple, list)) or len(batch) != 3:
        raise ValueError(
            "extract_features expects a dataset yielding (image_tensor, label, index); "
            f"batch {batch_index} has {len(batch) if isinstance(batch, (tuple, list)) else type(batch).__name__} "
            "element(s)"
        )
    return batch


def auto_num_workers(device: str | torch.device) -> int:
    """DataLoader workers of an extraction: the kit's one loader policy (:func:`histokit.data.loading.worker_count`
    for an evaluation loader): on a GPU the rank's share of the cores less one; on a CPU a quarter of them."""
    return worker_count(device, train=False)


def is_convnet(module: nn.Module) -> bool:
    """True for convolutional networks (more than one Conv2d); a ViT or Swin has one, its patch embedding."""
    n_conv = 0
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            n_conv += 1
            if n_conv > 1:
                return True
    return False


def _tensor_batches(dataset: TensorDataset, batch_size: int):
    # An in-memory TensorDataset is sliced: no per-item indexing and re-stacking (the DataLoader's default path).
    n = len(dataset)
    for lo in range(0, n, batch_size):
        yield tuple(t[lo:lo + batch_size] for t in dataset.tensors)


def _pixel_normalizer(dataset: Dataset, uint8_mean_std, device: torch.device):
    """(mean, std) as (1, 3, 1, 1) device tensors for uint8 batches: the argument, else the dataset's own."""
    mean_std = uint8_mean_std if uint8_mean_std is not None else getattr(dataset, "mean_std", None)
    if mean_std is None:
        return None
    mean, std = mean_std
    mean = torch.as_tensor(mean, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
    return mean, std


def _to_model_input(images: torch.Tensor, device: torch.device, normalizer, channels_last: bool, batch_index: int):
    """Copy a batch to the device (non-blocking from pinned memory) and, for uint8 pixels, scale to [0, 1] and
    normalize there: the same arithmetic as torchvision's ToTensor + Normalize, after a 4x smaller copy."""
    images = images.to(device, non_blocking=device.type == "cuda")
    if images.dtype == torch.uint8:
        if normalizer is None:
            raise ValueError(
                f"batch {batch_index} holds uint8 pixels but no normalization is known: pass "
                "extract_features(..., uint8_mean_std=(mean, std)) or use a dataset with a mean_std attribute "
                "(histokit.data.tile_cache.TileCache)"
            )
        mean, std = normalizer
        images = images.float().div_(255.0).sub_(mean).div_(std)
    if channels_last and images.ndim == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


def extract_features(
    encoder: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    num_workers: Union[int, str] = 0,
    normalize: bool = True,
    decode_included: Optional[bool] = None,
    progress: bool = True,
    channels_last: Optional[bool] = None,
    compile: bool = False,
    uint8_mean_std: Optional[tuple[Sequence[float], Sequence[float]]] = None,
) -> FeatureSet:
    """Embed every item of ``dataset`` (yielding ``(tensor, label, index)``) with ``encoder``'s pooled output.

    The encoder already applies its paper's pooling (``Encoder.forward`` -> ``(B, D)``); ``normalize`` applies the
    L2 normalization of Habijan et al. Sec. III-B.3 so inner product = cosine similarity.

    Speed options: ``num_workers="auto"`` sizes the DataLoader to the machine (:func:`auto_num_workers`);
    ``channels_last`` (default: on for convolutional networks, :func:`is_convnet`) converts the model and each
    batch to NHWC, which cuDNN and oneDNN run faster (the encoder's parameters stay in that format afterwards;
    values are unchanged); ``compile=True`` runs ``torch.compile(encoder)`` (first batches pay the compilation).
    uint8 image batches (a decoded-tile cache) are normalized on the device with ``uint8_mean_std`` or the
    dataset's ``mean_std``.

    ``timing`` records: ``device``, ``batch_size``, ``precision``, ``num_workers``, ``decode_included`` (True when the
    clock ran while images were read and decoded from files, i.e. the loader's time is inside ``total_s``; inferred
    from ``dataset.decode_included`` or "not a TensorDataset" unless given), ``n_images``, ``total_s`` (wall clock of
    the whole loop, CUDA synchronized at both ends), ``model_s`` (forward passes only: CUDA events on a GPU, a wall
    clock per batch on the CPU), ``ms_per_image`` (= total_s / n_images, amortized over batches — not a batch-1
    latency; see ``measure_latency``), ``channels_last``, ``compiled``, ``input_dtype``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got batch_size={batch_size}")
    _check_precision(precision)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} requested but CUDA is not available")
    if len(dataset) == 0:
        raise ValueError("extract_features got an empty dataset")
    if num_workers == "auto":
        num_workers = auto_num_workers(device)
    if not isinstance(num_workers, (int, np.integer)) or isinstance(num_workers, bool) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0 or 'auto', got num_workers={num_workers!r}")
    decode_included = _infer_decode_included(dataset) if decode_included is None else bool(decode_included)

    on_cuda = device.type == "cuda"
    if isinstance(dataset, TensorDataset):
        batches = _tensor_batches(dataset, batch_size)
        num_workers = 0
    else:
        # pinned host memory (on CUDA) makes the non_blocking copy below truly asynchronous
        batches = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                             **loader_kwargs(device, train=False, num_workers=int(num_workers)))
    was_training = encoder.training
    encoder.eval().to(device)
    channels_last = is_convnet(encoder) if channels_last is None else bool(channels_last)
    if channels_last:
        encoder.to(memory_format=torch.channels_last)
    model = torch.compile(encoder) if compile else encoder
    normalizer = _pixel_normalizer(dataset, uint8_mean_std, device)

    feats, labels, indices, events = [], [], [], []
    model_s = 0.0
    input_dtype = None
    n_batches = -(-len(dataset) // batch_size)
    synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for b, batch in enumerate(progress_bar(batches, total=n_batches, desc="extract features", disable=not progress,
                                       leave=False)):
            images, y, idx = _split_batch(batch, b)
            input_dtype = str(images.dtype).replace("torch.", "")
            images = _to_model_input(images, device, normalizer, channels_last, b)
            if on_cuda:  # events time the GPU work without stalling the host once per batch
                t_start, t_end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                t_start.record()
            else:
                t0 = time.perf_counter()
            with autocast_context(device, precision):
                out = model(images)
            if out.ndim != 2 or out.shape[0] != images.shape[0]:
                raise ValueError(
                    f"encoder must return a pooled (B, D) embedding (histokit.models.base.Encoder), "
                    f"got shape {tuple(out.shape)} for a batch of {images.shape[0]}"
                )
            out = out.float()
            if normalize:
                out = l2_normalize(out)
            if on_cuda:
                t_end.record()
                events.append((t_start, t_end))
            else:
                model_s += time.perf_counter() - t0
            feats.append(out)  # stays on the device: one copy to the host at the end, not one sync per batch
            y = torch.as_tensor(y).reshape(-1)
            labels.append(y if y.is_floating_point() else y.long())  # regression targets stay float
            indices.append(torch.as_tensor(idx).reshape(-1).long())
        features = torch.cat(feats).cpu()
    synchronize(device)
    total_s = time.perf_counter() - start
    if on_cuda:
        model_s = sum(s.elapsed_time(e) for s, e in events) / 1000.0
    encoder.train(was_training)

    n = features.shape[0]
    timing = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if on_cuda else "cpu",
        "batch_size": batch_size,
        "precision": precision,
        "num_workers": int(num_workers),
        "decode_included": decode_included,
        "n_images": n,
        "total_s": total_s,
        "model_s": model_s,
        "ms_per_image": 1000.0 * total_s / n,
        "model_ms_per_image": 1000.0 * model_s / n,
        "cuda_synchronized": on_cuda,
        "channels_last": channels_last,
        "compiled": bool(compile),
        "input_dtype": input_dtype,
    }
    return FeatureSet(  # labels / indices of a device-resident TensorDataset come back to the host here
        features=features.numpy(), labels=torch.cat(labels).cpu().numpy(),
        indices=torch.cat(indices).cpu().numpy(), timing=timing,
    )


def measure_latency(
    encoder: nn.Module,
    image_size: int | tuple[int, int],
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    precision: str = "fp32",
    warmup: int = 3,
    repeats: int = 20,
    normalize: bool = True,
    channels_last: Optional[bool] = None,
) -> dict[str, Any]:
    """Forward-pass latency on an in-memory random batch: NO file reading or decoding is included.

    Each repeat times one ``encoder(x)`` (+ L2 normalization) between two CUDA synchronizations; ``warmup`` untimed
    passes first (cuDNN autotuning, lazy allocations); ``channels_last`` as in :func:`extract_features`. Returns
    ``ms_per_batch`` (median over repeats), ``ms_per_batch_p90``, ``ms_per_image`` (= median / batch_size),
    ``images_per_s`` and the conditions (device, batch size, precision, image size, ``decode_included=False``). Habijan et al.'s "feature extraction time" per
    image is compared against ``batch_size=1`` here (docs/protocols.md, speed references).
    """
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise ValueError(
            f"need batch_size >= 1, repeats >= 1, warmup >= 0; got batch_size={batch_size}, "
            f"repeats={repeats}, warmup={warmup}"
        )
    _check_precision(precision)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} requested but CUDA is not available")
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    x = torch.randn(batch_size, 3, h, w, device=device)
    was_training = encoder.training
    encoder.eval().to(device)
    channels_last = is_convnet(encoder) if channels_last is None else bool(channels_last)
    if channels_last:  # the same memory-format rule as extract_features
        encoder.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    times_ms = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            synchronize(device)
            t0 = time.perf_counter()
            with autocast_context(device, precision):
                out = encoder(x)
            out = out.float()
            if normalize:
                out = l2_normalize(out)
            synchronize(device)
            if i >= warmup:
                times_ms.append(1000.0 * (time.perf_counter() - t0))
    encoder.train(was_training)
    med = float(np.median(times_ms))
    return {
        "ms_per_batch": med,
        "ms_per_batch_p90": float(np.percentile(times_ms, 90)),
        "ms_per_image": med / batch_size,
        "images_per_s": 1000.0 * batch_size / med,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "batch_size": batch_size,
        "precision": precision,
        "image_size": [h, w],
        "warmup": warmup,
        "repeats": repeats,
        "decode_included": False,
        "channels_last": channels_last,
        "note": "in-memory random tensors already on the device; no file reading or decoding",
    }


def save_features(path: str | os.PathLike, fs: FeatureSet) -> str:
    """Write ``fs`` as an uncompressed ``.npz`` atomically; return the file's sha256 (record it in the run)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:  # a file handle: np.savez would otherwise append ".npz" to the temp name
            np.savez(
                fh, features=fs.features, labels=fs.labels, indices=fs.indices,
                timing_json=np.array(json.dumps(fs.timing, sort_keys=True, default=str)),
            )
    return sha256_file(path)


def load_features(path: str | os.PathLike, expected_sha256: Optional[str] = None) -> FeatureSet:
    """Read a feature file written by :func:`save_features`, verifying ``expected_sha256`` when given."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FeatureFileError(f"feature file not found: {path}")
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256.lower():
            raise FeatureFileError(
                f"feature file {path} has sha256 {actual}, expected {expected_sha256}: "
                "it changed since it was recorded (re-run the extraction stage)"
            )
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _NPZ_KEYS if k not in z.files]
            if missing:
                raise FeatureFileError(f"feature file {path} lacks field(s) {missing}")
            return FeatureSet(
                features=z["features"], labels=z["labels"], indices=z["indices"],
                timing=json.loads(str(z["timing_json"])),
            )
    except FeatureFileError:
        raise
    except Exception as exc:  # zipfile/pickle/json errors: name the file
        raise FeatureFileError(f"feature file {path} is not a readable histokit .npz: {exc}") from exc
