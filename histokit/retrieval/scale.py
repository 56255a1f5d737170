"""FAISS at scale: IVF-Flat / IVF-PQ trained on a sample, sharded over CPU threads (``IndexShards``) or GPUs
(``index_cpu_to_all_gpus`` with ``shard=True``), and IVF lists merged on disk (``OnDiskInvertedLists`` through
``faiss.contrib.ondisk.merge_ondisk``) for collections larger than memory.

Exact search stays the kit's default for reported metrics (docs/design.md); an approximate index is for galleries where
exact search is too slow or too big: :func:`gallery_index` (stage 04's index, ``evaluate_retrieval``'s) builds the
exact flat index up to ``EXACT_MAX_GALLERY`` vectors and this module's IVF above, with the loss it measured and
:func:`approximate_note`, the footnote that says it. So every builder here measures what it loses: recall@10 of the index against
exact search (``faiss.knn``, or ``faiss.contrib.exhaustive_search.knn_ground_truth`` block by block for data that
does not fit in memory) on a sample of queries, returned with the index in an :class:`ApproxIndex`.

The coarse quantizer and the PQ codebooks are trained on a random sample (``train_size`` rows; FAISS wants at least
39 per list) and the whole collection is then added in batches, as in the FAISS wiki's billion-scale recipes.
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import faiss
import numpy as np

from ..io import atomic_path, atomic_write_json, sha256_file
from .index import (METRICS, IndexFileError, _as_float32_matrix, _default_nlist, _gpu_available, build_index,
                    is_gpu_index, no_gpu_reason, read_sidecar, recall_at_k, save_index)

KINDS = ("ivf_flat", "ivf_pq")
ADD_BATCH = 65_536  # rows per add() call: bounds the temporary memory of assigning vectors to lists
# Galleries up to this many vectors get an exact index (a flat 1M x 768 float32 gallery is 3 GB, and searched in
# seconds per thousand queries); above it gallery_index switches to IVF-Flat and reports its recall against exact.
EXACT_MAX_GALLERY = 1_000_000
APPROX_NPROBE = 32        # IVF lists searched per query by gallery_index (of ~4 sqrt(N) lists: 4,000 at 1M)
APPROX_EVAL_QUERIES = 256  # queries on which gallery_index measures recall@k against exact search


@dataclass
class ApproxIndex:
    """An approximate index and what it loses against exact search (``recall_at_k`` on ``n_queries`` queries)."""

    index: faiss.Index
    recall_at_k: float
    k: int
    nprobe: int
    n_queries: int
    info: dict[str, Any] = field(default_factory=dict)
    queries: Optional[np.ndarray] = field(default=None, repr=False)    # the evaluation queries ...
    exact_ids: Optional[np.ndarray] = field(default=None, repr=False)  # ... and their exact top-k ids

    def report(self) -> dict[str, Any]:
        return {f"recall@{self.k}": self.recall_at_k, "k": self.k, "nprobe": self.nprobe,
                "n_queries": self.n_queries, **self.info}

    def recall_at_nprobe(self, nprobe: int) -> float:
        """Recall@k on the same queries with another ``nprobe`` (to choose the operating point); the index keeps
        its own ``nprobe`` afterwards."""
        set_nprobe(self.index, nprobe)
        try:
            return recall_vs_exact(self.index, self.queries, self.exact_ids, self.k)
        finally:
            set_nprobe(self.index, self.nprobe)


def factory_string(kind: str, nlist: int, *, pq_m: Optional[int] = None, pq_nbits: int = 8) -> str:
    """FAISS ``index_factory`` description: ``IVF<nlist>,Flat`` or ``IVF<nlist>,PQ<m>x<nbits>np``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got kind={kind!r}")
    if nlist < 1:
        raise ValueError(f"nlist must be >= 1, got nlist={nlist}")
    if kind == "ivf_flat":
        return f"IVF{nlist},Flat"
    if pq_m is None or pq_m < 1:
        raise ValueError(f"kind='ivf_pq' needs pq_m (sub-quantizers, a divisor of the dimension), got pq_m={pq_m}")
    # "np": no polysemous training (a code re-ordering for Hamming pre-filtering, unused here, seconds to train)
    return f"IVF{nlist},PQ{pq_m}x{pq_nbits}np"


def sample_rows(x: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` rows of ``x`` drawn without replacement (all of them if ``n >= len(x)``), in their original order."""
    if n >= len(x):
        return np.ascontiguousarray(x, dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(len(x), size=n, replace=False))
    return np.ascontiguousarray(x[rows], dtype=np.float32)


def train_ivf(sample: np.ndarray, *, kind: str = "ivf_flat", nlist: int, metric: str = "ip",
              pq_m: Optional[int] = None, pq_nbits: int = 8, seed: int = 0) -> faiss.Index:
    """An empty IVF index whose coarse quantizer (and PQ codebooks) are trained on ``sample``."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {tuple(METRICS)}, got metric={metric!r}")
    x = _as_float32_matrix(sample, "sample")
    if len(x) < nlist:
        raise ValueError(f"the training sample has {len(x)} rows, fewer than nlist={nlist} lists")
    if kind == "ivf_pq" and pq_m and x.shape[1] % pq_m:
        raise ValueError(f"pq_m={pq_m} must divide the dimension {x.shape[1]}")
    index = faiss.index_factory(x.shape[1], factory_string(kind, nlist, pq_m=pq_m, pq_nbits=pq_nbits),
                                METRICS[metric])
    faiss.extract_index_ivf(index).cp.seed = seed  # k-means initialisation: the same lists every time
    index.train(x)
    return index


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    """Lists searched per query, on a plain, sharded (``IndexShards``) or GPU index alike."""
    if nprobe < 1:
        raise ValueError(f"nprobe must be >= 1, got nprobe={nprobe}")
    space = faiss.GpuParameterSpace() if is_gpu_index(index) and hasattr(faiss, "GpuParameterSpace") \
        else faiss.ParameterSpace()
    space.set_index_parameter(index, "nprobe", int(nprobe))


def add_in_batches(index: faiss.Index, x: np.ndarray, ids: Optional[np.ndarray] = None,
                   batch: int = ADD_BATCH) -> None:
    """Add rows of ``x`` (ids ``ids``, else FAISS's running count) ``batch`` at a time."""
    for start in range(0, len(x), batch):
        part = np.ascontiguousarray(x[start:start + batch], dtype=np.float32)
        if ids is None:
            index.add(part)
        else:
            index.add_with_ids(part, np.ascontiguousarray(ids[start:start + batch], dtype=np.int64))


def exact_neighbours(queries: np.ndarray, *, k: int, metric: str = "ip", xb: Optional[np.ndarray] = None,
                     blocks: Optional[Callable[[], Iterable[np.ndarray]]] = None) -> np.ndarray:
    """Exact top-``k`` ids of ``queries``: over ``xb`` in memory (``faiss.knn``), or over ``blocks()`` one block at a
    time (``knn_ground_truth``; ids count rows across blocks) when the collection does not fit in memory."""
    from faiss.contrib.exhaustive_search import knn_ground_truth

    q = _as_float32_matrix(queries, "queries")
    if (xb is None) == (blocks is None):
        raise ValueError("give exactly one of xb (an array) or blocks (a callable returning an iterator of arrays)")
    if xb is not None:
        _, ids = faiss.knn(q, _as_float32_matrix(xb, "xb"), k, metric=METRICS[metric])
    else:
        _, ids = knn_ground_truth(q, (np.ascontiguousarray(b, dtype=np.float32) for b in blocks()), k,
                                  metric_type=METRICS[metric])
    return ids.astype(np.int64, copy=False)


def recall_vs_exact(index: faiss.Index, queries: np.ndarray, exact_ids: np.ndarray, k: int = 10) -> float:
    """Recall@k of ``index`` against exact top-k ids (``exact_neighbours``): |approx ∩ exact| / k, averaged."""
    _, ids = index.search(_as_float32_matrix(queries, "queries"), k)
    return recall_at_k(ids, exact_ids, k)


def _measure(index: faiss.Index, queries: np.ndarray, exact_ids: np.ndarray, k: int, nprobe: int,
             info: dict) -> ApproxIndex:
    t = time.perf_counter()
    recall = recall_vs_exact(index, queries, exact_ids, k)
    info = {**info, "search_s": time.perf_counter() - t}
    return ApproxIndex(index, recall, k, nprobe, len(queries), info, queries, exact_ids)


def build_ivf(xb: np.ndarray, *, kind: str = "ivf_flat", nlist: int, nprobe: int = 8, train_size: Optional[int] = None,
              metric: str = "ip", pq_m: Optional[int] = None, pq_nbits: int = 8, n_shards: int = 1, k: int = 10,
              n_eval: int = 256, queries: Optional[np.ndarray] = None, seed: int = 0) -> ApproxIndex:
    """IVF index over ``xb`` trained on ``train_size`` sampled rows (default 64 per list; for PQ at least 40 per
    codeword), searched with ``nprobe``;
    ``n_shards > 1`` splits the rows over an ``IndexShards`` (one sub-index per CPU thread, ids kept).

    Recall@k against exact search is measured on ``queries`` (default: ``n_eval`` rows of ``xb``).
    """
    x = _as_float32_matrix(xb, "xb")
    if train_size is None:  # FAISS asks for >= 39 training rows per centroid: lists, and PQ's 2^nbits codewords
        train_size = max(64 * nlist, 40 * 2 ** pq_nbits if kind == "ivf_pq" else 0)
    t = time.perf_counter()
    trained = train_ivf(sample_rows(x, train_size, seed), kind=kind, nlist=nlist, metric=metric, pq_m=pq_m,
                        pq_nbits=pq_nbits, seed=seed)
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    if n_shards > 1:
        index = build_shards(trained, x, n_shards)
    else:
        index = trained
        add_in_batches(index, x)
    add_s = time.perf_counter() - t
    set_nprobe(index, nprobe)
    q = sample_rows(x, n_eval, seed + 1) if queries is None else _as_float32_matrix(queries, "queries")
    info = {"kind": kind, "factory": factory_string(kind, nlist, pq_m=pq_m, pq_nbits=pq_nbits), "nlist": nlist,
            "metric": metric, "n": len(x), "dim": x.shape[1], "train_size": min(train_size, len(x)),
            "n_shards": n_shards, "train_s": train_s, "add_s": add_s}
    return _measure(index, q, exact_neighbours(q, k=k, metric=metric, xb=x), k, nprobe, info)


def build_shards(trained: faiss.Index, xb: np.ndarray, n_shards: int) -> faiss.IndexShards:
    """``IndexShards`` of ``n_shards`` copies of the (trained, empty) index, each holding a contiguous slice of
    ``xb`` under its global row ids; queries go to every shard in parallel threads and the results are merged."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got n_shards={n_shards}")
    if trained.ntotal:
        raise ValueError(f"build_shards needs a trained, empty index; this one holds {trained.ntotal} vectors")
    shards = faiss.IndexShards(trained.d, True, False)  # threaded, ids as added (not renumbered per shard)
    for part in np.array_split(np.arange(len(xb), dtype=np.int64), n_shards):
        sub = faiss.clone_index(trained)
        add_in_batches(sub, xb[part[0]:part[-1] + 1] if len(part) else xb[:0], ids=part)
        shards.add_shard(sub)  # the Python wrapper keeps ``sub`` alive with the shards
    return shards


def to_all_gpus(index: faiss.Index, *, shard: bool = True) -> faiss.Index:
    """Copy ``index`` to every GPU: ``shard=True`` splits the vectors across GPUs (each searches its part, results
    merged), ``False`` replicates it (more queries per second, no more capacity). Without a FAISS GPU build (the
    pinned faiss-cpu) it warns and returns ``index`` unchanged. On-disk inverted lists cannot go to a GPU."""
    if not _gpu_available():
        warnings.warn(f"{no_gpu_reason()}: the index stays on the CPU", stacklevel=2)
        return index
    co = faiss.GpuMultipleClonerOptions()
    co.shard = shard
    gpu_index = faiss.index_cpu_to_all_gpus(index, co=co)
    gpu_index._histokit_on_gpu = True  # IndexShards / IndexReplicas of GPU indexes: searched through GpuParameterSpace
    gpu_index._histokit_device = "cuda"  # every GPU, for timing rows (describe_search)
    return gpu_index


def _ivfdata_path(path: Path) -> Path:
    return path.with_name(path.name + ".ivfdata")


def build_ondisk(trained: faiss.Index, blocks: Callable[[], Iterable[np.ndarray]], path: str | os.PathLike, *,
                 nprobe: int = 8, k: int = 10, n_eval: int = 256, queries: Optional[np.ndarray] = None,
                 metric: str = "ip", seed: int = 0) -> ApproxIndex:
    """An IVF index whose inverted lists live on disk (``<path>.ivfdata``, memory-mapped), for more vectors than RAM.

    ``blocks()`` returns an iterator over the collection in row blocks (e.g. slices of a memory-mapped ``.npy``);
    it is called twice, to add and to compute the exact neighbours for recall. Each block is added to a copy of
    ``trained`` and written as its own small index, then ``merge_ondisk`` joins their lists into one file. Writes are
    atomic: ``.ivfdata`` is merged under a temporary name and renamed, and the index file (the one that points to it)
    is written last with :func:`~histokit.retrieval.index.save_index`, its sidecar recording the ``.ivfdata``
    sha256. Default queries: ``n_eval`` rows of the first block.
    """
    from faiss.contrib.ondisk import merge_ondisk

    path = Path(path).resolve()
    if trained.ntotal or not trained.is_trained:
        raise ValueError("build_ondisk needs a trained, empty IVF index (train_ivf)")
    parts_dir = path.with_name(f".{path.name}.blocks")
    parts_dir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    part_files, offset, first = [], 0, None
    for b, block in enumerate(blocks()):
        x = _as_float32_matrix(block, f"block {b}")
        first = x if first is None else first
        sub = faiss.clone_index(trained)
        add_in_batches(sub, x, ids=np.arange(offset, offset + len(x), dtype=np.int64))
        offset += len(x)
        part = parts_dir / f"block_{b:05d}.index"
        with atomic_path(part) as tmp:
            faiss.write_index(sub, str(tmp))
        part_files.append(str(part))
        del sub
    if not part_files:
        raise ValueError("blocks() yielded no data")
    index = faiss.clone_index(trained)
    ivfdata = _ivfdata_path(path)
    with atomic_path(ivfdata) as tmp:
        merge_ondisk(index, part_files, str(tmp))
    # the lists were merged into the temporary file (same inode after the rename): point the index at the final name
    faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists).filename = str(ivfdata)
    meta = save_index(index, path)
    meta.update(ivfdata=ivfdata.name, ivfdata_sha256=sha256_file(ivfdata), ivfdata_bytes=ivfdata.stat().st_size)
    atomic_write_json(path.with_name(path.name + ".json"), meta)
    for f in part_files:
        Path(f).unlink()
    parts_dir.rmdir()
    add_s = time.perf_counter() - t
    set_nprobe(index, nprobe)
    q = sample_rows(first, n_eval, seed + 1) if queries is None else _as_float32_matrix(queries, "queries")
    info = {"kind": "ivf_ondisk", "n": offset, "dim": trained.d, "blocks": len(part_files), "metric": metric,
            "ivfdata": str(ivfdata), "add_s": add_s}
    return _measure(index, q, exact_neighbours(q, k=k, metric=metric, blocks=blocks), k, nprobe, info)


def load_ondisk(path: str | os.PathLike, *, verify: bool = True) -> faiss.Index:
    """Open an index written by :func:`build_ondisk`, its ``.ivfdata`` looked up beside it (so the pair can move
    together); the index file's sha256, dim and count are checked against the sidecar, and with ``verify`` the
    ``.ivfdata`` sha256 too (that reads the whole file: pass False for very large lists once they are known good)."""
    path = Path(path).resolve()
    side = path.with_name(path.name + ".json")
    meta = read_sidecar(side, ("ivfdata", "ivfdata_sha256", "sha256", "dim", "ntotal"),
                        "write on-disk indexes with build_ondisk")
    ivfdata = path.with_name(meta["ivfdata"])
    if not (path.is_file() and ivfdata.is_file()):
        raise IndexFileError(f"on-disk index incomplete: need both {path} and {ivfdata}")
    if sha256_file(path) != meta["sha256"]:
        raise IndexFileError(f"index file {path} does not match the sha256 in {side}")
    if verify and sha256_file(ivfdata) != meta["ivfdata_sha256"]:
        raise IndexFileError(f"inverted-list file {ivfdata} does not match the sha256 in {side}")
    index = faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR)
    if index.d != meta["dim"] or index.ntotal != meta["ntotal"]:
        raise IndexFileError(f"index file {path} has dim {index.d} / {index.ntotal} vectors, sidecar {side} says "
                             f"dim={meta['dim']} / ntotal={meta['ntotal']}")
    return index


@dataclass
class GalleryIndex:
    """The index a gallery is searched with, and ``approximate``: None for the exact flat index, else what the IVF
    index loses against exact search (:meth:`ApproxIndex.report` plus ``exact_max``), for a sidecar and a note."""

    index: Any
    approximate: Optional[dict[str, Any]] = None


def gallery_index(features: np.ndarray, *, metric: str = "ip", device: str = "cpu",
                  exact_max: int = EXACT_MAX_GALLERY, k: int = 10, queries: Optional[np.ndarray] = None,
                  n_eval: int = APPROX_EVAL_QUERIES, seed: int = 0) -> GalleryIndex:
    """The exact flat index (:func:`~histokit.retrieval.index.build_index`) for up to ``exact_max`` gallery
    vectors, so no approximate-recall loss leaks into a reported metric; above it an IVF-Flat index
    (:func:`build_ivf`: ~4 sqrt(N) lists, ``APPROX_NPROBE`` searched; on every GPU, sharded, where FAISS has GPU
    support) whose recall@``k`` against exact search is measured on ``n_eval`` of ``queries`` (default: of the
    gallery's own rows) and returned in ``approximate``."""
    if not isinstance(exact_max, (int, np.integer)) or isinstance(exact_max, bool) or exact_max < 1:
        raise ValueError(f"exact_max (the largest gallery searched exactly) must be an integer >= 1, "
                         f"got exact_max={exact_max!r}")
    x = _as_float32_matrix(features, "features")
    if len(x) <= exact_max:
        return GalleryIndex(build_index(x, kind="flat", metric=metric, device=device))
    nlist = _default_nlist(len(x))
    q = None if queries is None else sample_rows(_as_float32_matrix(queries, "queries"), n_eval, seed + 1)
    built = build_ivf(x, kind="ivf_flat", nlist=nlist, nprobe=min(APPROX_NPROBE, nlist), metric=metric,
                      k=min(k, len(x)), n_eval=n_eval, queries=q, seed=seed)
    index = built.index
    if str(device).startswith("cuda"):
        index = to_all_gpus(index, shard=True)  # warns and stays on the CPU without GPU FAISS
    report = {key: value for key, value in built.report().items() if not key.endswith("_s")}  # no timings
    return GalleryIndex(index, {**report, "exact_max": int(exact_max)})


def approximate_note(report: dict[str, Any]) -> str:
    """The footnote of a table whose numbers came from an approximate index (``GalleryIndex.approximate``)."""
    k = report["k"]
    return (f"approximate search: the gallery of {report['n']:,} vectors exceeds the exact-search limit "
            f"({report['exact_max']:,}), so it was searched with FAISS {report['factory']} (nprobe={report['nprobe']}); "
            f"its recall@{k} against exact search is {report[f'recall@{k}']:.3f} on {report['n_queries']} sampled "
            f"queries, a loss the numbers carry")
