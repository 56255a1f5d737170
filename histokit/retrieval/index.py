"""FAISS index: build, search (with self-exclusion), save/load with a verified JSON sidecar.

Habijan et al. (Sec. III-D/E) index L2-normalized descriptors with FAISS and rank the gallery by cosine similarity
(Eq. 1). On unit vectors cosine = inner product, so the default is an exact ``IndexFlatIP``: exact search is the
kit's default so that an approximate index's recall loss never leaks into a reported metric (docs/design.md). IVF and
HNSW are there for scale; :func:`recall_at_k` measures what they lose against the flat index.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Optional

import faiss
import numpy as np

from ..io import atomic_path, atomic_write_json, sha256_file
from .torch_search import TorchFlatIndex, describe_search  # noqa: F401  (describe_search: re-exported)

KINDS = ("flat", "ivf", "hnsw")
BACKENDS = ("auto", "faiss", "torch")
METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


class IndexFileError(ValueError):
    """An index file or its sidecar is missing, corrupt, or disagrees with the other."""


def _as_float32_matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) array, got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows)")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _default_nlist(n: int) -> int:
    # ~4 sqrt(N) lists (FAISS wiki guideline), but at least 39 training points per centroid (FAISS warns below).
    return int(max(1, min(4 * int(np.sqrt(n)), n // 39)))


# FAISS wheels on PyPI, GPU builds first: which one provides ``import faiss`` is read from the installed metadata.
FAISS_DISTRIBUTIONS = ("faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss-gpu-cuvs", "faiss-gpu-cu12-cuvs",
                       "faiss-gpu-cu13-cuvs", "faiss-cuda", "faiss-cpu", "faiss")


def _gpu_support() -> bool:
    """This FAISS build was compiled with GPU support (whether or not a GPU is present)."""
    return hasattr(faiss, "StandardGpuResources") and hasattr(faiss, "get_num_gpus")


def _num_gpus() -> int:
    if not _gpu_support():
        return 0
    try:
        return int(faiss.get_num_gpus())
    except RuntimeError:  # a GPU build without a usable driver
        return 0


def _gpu_available() -> bool:
    return _num_gpus() > 0


def faiss_build_info() -> dict[str, Any]:
    """The FAISS build in use, for ``run.json``: ``package`` (the installed distribution that provides ``faiss``,
    e.g. ``faiss-cpu`` or ``faiss-gpu``), ``package_version``, ``version`` (``faiss.__version__``),
    ``gpu_support`` (compiled with GPU support), ``num_gpus`` (GPUs FAISS sees; 0 without GPU support) and
    ``installed`` (every FAISS distribution found: two of them overwrite each other's ``faiss`` package)."""
    from importlib import metadata

    installed = {}
    for name in FAISS_DISTRIBUTIONS:
        try:
            installed[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    gpu = _gpu_support()
    gpu_names = [n for n in installed if n != "faiss-cpu" and n != "faiss"]
    package = (gpu_names[0] if gpu and gpu_names else "faiss-cpu" if "faiss-cpu" in installed
               else next(iter(installed), None))
    return {"package": package, "package_version": installed.get(package), "version": faiss.__version__,
            "gpu_support": gpu, "num_gpus": _num_gpus(), "installed": installed}


def no_gpu_reason() -> str:
    """Why FAISS cannot use a GPU here, in words (for the CPU fallback's warning)."""
    info = faiss_build_info()
    build = f"this FAISS build ({info['package']} {info['package_version']}, faiss {info['version']})"
    return f"{build} has no GPU support" if not info["gpu_support"] else f"{build} has GPU support but sees no GPU"


def _gpu_ids(device: str) -> list[int]:
    """``cuda`` -> every GPU FAISS sees; ``cuda:N`` -> GPU N."""
    n = _num_gpus()
    if ":" in str(device):
        gpu_id = int(str(device).split(":", 1)[1])
        if not 0 <= gpu_id < n:
            raise ValueError(f"device={device!r} but FAISS sees {n} GPU(s)")
        return [gpu_id]
    return list(range(n))


def to_gpu(index: faiss.Index, device: str = "cuda") -> faiss.Index:
    """``index`` on the GPU(s) of ``device`` (a replica per GPU for ``cuda`` with several GPUs: exact results,
    queries split between them); the FAISS GPU resources stay alive as long as the returned index."""
    ids = _gpu_ids(device)
    if len(ids) == 1:
        res = faiss.StandardGpuResources()
        gpu_index = faiss.index_cpu_to_gpu(res, ids[0], index)
        gpu_index._histokit_gpu_resources = res
    else:
        gpu_index = faiss.index_cpu_to_all_gpus(index)  # replicas (shard=False): the same hits as one GPU
    gpu_index._histokit_on_gpu = True
    gpu_index._histokit_device = f"cuda:{ids[0]}" if len(ids) == 1 else "cuda"  # for timing rows (describe_search)
    return gpu_index


def is_gpu_index(index: faiss.Index) -> bool:
    """Whether ``index`` lives on a GPU (a GpuIndex, or replicas / shards built by :func:`to_gpu`)."""
    return "Gpu" in type(index).__name__ or bool(getattr(index, "_histokit_on_gpu", False))


def _torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _torch_index(x: np.ndarray, metric: str, device: str) -> TorchFlatIndex:
    return TorchFlatIndex(x, metric=metric, device=device)


def build_index(
    features: np.ndarray,
    *,
    kind: str = "flat",
    metric: str = "ip",
    nlist: Optional[int] = None,
    nprobe: int = 8,
    hnsw_m: int = 32,
    device: str = "cpu",
    backend: str = "auto",
) -> faiss.Index:
    """Index ``features`` (N, D) with FAISS; row ``i`` gets id ``i``.

    kind: ``flat`` (exact, default), ``ivf`` (IndexIVFFlat, ``nlist`` lists, ``nprobe`` searched; trained on the
    features themselves), ``hnsw`` (IndexHNSWFlat with ``hnsw_m`` links). metric: ``ip`` (inner product = cosine on
    L2-normalized vectors, the paper's similarity) or ``l2`` (squared Euclidean). device ``cuda`` (every GPU,
    one replica each) or ``cuda:N`` moves the index to the GPU when this FAISS build has GPU support and sees a GPU
    (the ``gpu`` extra, docs/scaling.md); otherwise (faiss-cpu, the default install) it warns and stays on the
    CPU. The index is built on the CPU and copied, so its contents are the same either way. HNSW has no FAISS GPU
    implementation and always stays on the CPU.

    backend ``auto`` (default): on a CUDA device without GPU FAISS, a flat index becomes a
    :class:`~histokit.retrieval.torch_search.TorchFlatIndex` on that device (exact matmul + sort; the same scores
    and, but for exact ties, the same ids as FAISS). ``faiss``: never the torch search. ``torch``: always it (flat
    only; on ``device="cpu"`` too, which is how the CPU tests compare it with FAISS). :func:`describe_search` says
    which backend and device an index searches on.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got kind={kind!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {tuple(METRICS)}, got metric={metric!r}")
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got device={device!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got backend={backend!r}")
    if backend == "torch" and kind != "flat":
        raise ValueError(f"backend='torch' is an exact search: kind must be 'flat', got kind={kind!r}")
    x = _as_float32_matrix(features, "features")
    if backend == "torch":
        return _torch_index(x, metric, str(device))
    n, d = x.shape
    mt = METRICS[metric]

    if kind == "flat":
        index = faiss.IndexFlatIP(d) if metric == "ip" else faiss.IndexFlatL2(d)
    elif kind == "ivf":
        nlist = _default_nlist(n) if nlist is None else int(nlist)
        if not 1 <= nlist <= n:
            raise ValueError(f"nlist must be in [1, N={n}], got nlist={nlist}")
        quantizer = faiss.IndexFlatIP(d) if metric == "ip" else faiss.IndexFlatL2(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, mt)
        index.train(x)
        index.nprobe = int(min(max(1, nprobe), nlist))
    else:
        if hnsw_m < 2:
            raise ValueError(f"hnsw_m must be >= 2, got hnsw_m={hnsw_m}")
        index = faiss.IndexHNSWFlat(d, int(hnsw_m), mt)
    index.add(x)

    if str(device).startswith("cuda"):
        if kind == "hnsw":
            warnings.warn("FAISS has no GPU HNSW index; the HNSW index stays on the CPU", stacklevel=2)
        elif _gpu_available():
            index = to_gpu(index, str(device))
        elif kind == "flat" and backend == "auto" and _torch_cuda_available():
            index = _torch_index(x, metric, str(device))  # exact search on the GPU without faiss-gpu
        else:
            why = ("" if kind != "flat" or backend != "auto" else "torch sees no CUDA device either; ")
            warnings.warn(f"device={device!r} requested but {no_gpu_reason()}; the index stays on the CPU ({why}GPU "
                          f"FAISS: the gpu extra, docs/scaling.md)", stacklevel=2)
    return index


def search(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    *,
    exclude_self: bool = False,
    query_ids: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` gallery hits per query: ``(scores (Q, k) float32, ids (Q, k) int64)``, best first.

    ``exclude_self=True`` is for queries drawn from the gallery itself: a query's own image is never a hit. The
    search asks for ``k + 1`` and removes the query's own id (``query_ids[q]``, default ``q``: the queries *are* the
    gallery, in order); a row whose own id was not among the ``k + 1`` (possible with exact duplicates) drops its
    last hit instead, so every row keeps exactly ``k``. FAISS pads with id ``-1`` where fewer hits exist.
    """
    q = _as_float32_matrix(queries, "queries")
    if q.shape[1] != index.d:
        raise ValueError(f"queries have dimension {q.shape[1]}, the index has dimension {index.d}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got k={k}")
    if not exclude_self:
        if query_ids is not None:
            raise ValueError("query_ids is only meaningful with exclude_self=True")
        scores, ids = index.search(q, int(k))
        return scores, ids.astype(np.int64, copy=False)

    if k + 1 > index.ntotal:
        raise ValueError(f"k={k} with exclude_self needs a gallery of at least k+1={k + 1} items, has {index.ntotal}")
    own = np.arange(q.shape[0], dtype=np.int64) if query_ids is None else np.asarray(query_ids, dtype=np.int64)
    if own.shape != (q.shape[0],):
        raise ValueError(f"query_ids must have shape ({q.shape[0]},), got {own.shape}")
    scores, ids = index.search(q, int(k) + 1)
    drop = ids == own[:, None]
    drop[~drop.any(axis=1), -1] = True  # own id not retrieved: drop the (k+1)-th hit to keep k
    keep = ~drop
    # Boolean indexing walks row-major, so each row keeps its ranking order.
    return scores[keep].reshape(q.shape[0], k), ids[keep].reshape(q.shape[0], k).astype(np.int64, copy=False)


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / k: what an approximate index loses vs exact search."""
    a = np.asarray(approx_ids)[:, :k]
    e = np.asarray(exact_ids)[:, :k]
    if a.shape != e.shape or a.shape[1] != k:
        raise ValueError(f"approx_ids and exact_ids need >= k={k} columns and equal rows, got {a.shape} vs {e.shape}")
    found = (a[:, :, None] == e[:, None, :]) & (e[:, None, :] >= 0)
    return float(found.any(axis=1).sum(axis=1).mean() / k)


def _describe(index: faiss.Index) -> dict[str, Any]:
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexHNSW):
        kind = "hnsw"
    elif isinstance(inner, faiss.IndexIVF):
        kind = "ivf"
    elif isinstance(inner, faiss.IndexFlat):
        kind = "flat"
    else:
        kind = type(inner).__name__
    metric = {v: k for k, v in METRICS.items()}.get(index.metric_type, str(index.metric_type))
    return {"kind": kind, "metric": metric, "dim": int(index.d), "ntotal": int(index.ntotal)}


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def read_sidecar(side: Path, required: tuple, written_by: str) -> dict[str, Any]:
    """An index's JSON sidecar, with every ``required`` field present; errors name the file and the field."""
    if not side.is_file():
        raise IndexFileError(f"index sidecar not found: {side} ({written_by})")
    try:
        meta = json.loads(side.read_text())
    except json.JSONDecodeError as exc:
        raise IndexFileError(f"index sidecar {side} is not valid JSON: {exc}") from exc
    for key in required:
        if key not in meta:
            raise IndexFileError(f"index sidecar {side} lacks field {key!r} ({written_by})")
    return meta


def save_index(index: faiss.Index, path: str | os.PathLike) -> dict[str, Any]:
    """Write ``index`` atomically (GPU indexes are copied to the CPU first) plus ``<path>.json`` with its sha256,
    dim, ntotal, kind, metric and FAISS version; return that metadata."""
    path = Path(path)
    if isinstance(index, TorchFlatIndex):
        index = index.to_faiss()
    cpu_index = faiss.index_gpu_to_cpu(index) if _gpu_available() and is_gpu_index(index) else index
    with atomic_path(path) as tmp:
        faiss.write_index(cpu_index, str(tmp))
    meta = {**_describe(cpu_index), "sha256": sha256_file(path), "faiss_version": faiss.__version__,
            "file": path.name}
    atomic_write_json(_sidecar(path), meta)
    return meta


def load_index(path: str | os.PathLike) -> faiss.Index:
    """Read an index written by :func:`save_index`, checking sha256, dim and count against its sidecar."""

    path = Path(path)
    side = _sidecar(path)
    if not path.is_file():
        raise IndexFileError(f"index file not found: {path}")
    meta = read_sidecar(side, ("sha256", "dim", "ntotal"), "write indexes with histokit.retrieval.index.save_index")
    actual = sha256_file(path)
    if actual != meta["sha256"]:
        raise IndexFileError(f"index file {path} has sha256 {actual}, sidecar {side} says {meta['sha256']}")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise IndexFileError(f"index file {path} is not a readable FAISS index: {exc}") from exc
    if index.d != meta["dim"]:
        raise IndexFileError(f"index file {path} has dim {index.d}, sidecar {side} says dim={meta['dim']}")
    if index.ntotal != meta["ntotal"]:
        raise IndexFileError(f"index file {path} holds {index.ntotal} vectors, sidecar {side} says ntotal={meta['ntotal']}")
    return index
