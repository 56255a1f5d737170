"""One DataLoader policy for every loader of the kit: SSL pretraining, fine-tuning, metric learning, prediction and
feature extraction all build their ``DataLoader`` with :func:`loader_kwargs`.

Workers (:func:`worker_count`): the cores this process may run on (``os.sched_getaffinity``, which containers and
``taskset`` narrow), shared by the ``LOCAL_WORLD_SIZE`` ranks torchrun starts on the node.

- CUDA: the CPU only decodes and augments, so each rank gets its share of the cores less one (its main process feeds
  the GPU), at most :data:`MAX_WORKERS`; with pinned host memory (the engine's ``non_blocking`` copies are then
  asynchronous), persistent workers (no respawn and dataset pickling every epoch) and ``prefetch_factor``
  :data:`PREFETCH_FACTOR` batches per worker. Crops and iBOT's masks are made in the workers (the dataset's
  transform, :class:`histokit.ssl.ibot.MaskedViews`).
- CPU, training loaders: no workers. The forward and backward passes already use every core through intra-op
  threads, worker start-up would dominate a smoke run, and a CPU run keeps consuming exactly the random numbers it
  always did: bit-reproducible for a seed, resumed or not (tests/test_determinism.py).
- CPU, evaluation loaders (deterministic transforms): a quarter of the rank's cores (0 on a small machine), the
  decoding that overlaps the forward without starving it.

Reproducibility with workers: the pretraining datasets draw each item's views and masks from an RNG seeded by
(seed, epoch, index) (:class:`histokit.distributed.sampler.PerSampleSeed`, whose epoch persistent workers share), so
they are the same whatever the worker count; so are supervised fine-tuning's (``train.supervised``, the
label-fraction fine-tuning's too), whose loaders :func:`seeded_loader` builds, and Sub-center ArcFace's (stages 02 /
03, a loader with its own generator likewise) (tests/test_determinism_training.py).

Seeding (:func:`seed_everything`, the kit's one): Python's ``random``, NumPy's global RNG and torch's (CPU and
every CUDA device) from one seed; the engine, every stage (``open_stage``) and each training run call it. A loader
whose draws matter beyond its sampler gets its own :func:`loader_generator`, so its workers' base seed never comes
from (nor advances) the global RNG the model's dropout and masks draw from, and :func:`seed_worker`, which adds
OpenCV's RNG to what torch seeds in each worker (Python, NumPy, torch: ``base_seed + worker_id``).
:func:`set_loader_epoch` tells a per-epoch sampler and a per-sample seeded dataset the epoch, and
:func:`draw_skipped_base_seed` keeps the global stream of a loader with persistent workers as it is without workers.

Spawn-safe: every dataset and transform the kit hands a loader is a module-level class (no lambdas or closures), so
the loaders also work under the ``spawn`` / ``forkserver`` start methods (macOS, Windows, Python >= 3.14 on Linux).
"""
from __future__ import annotations

import numbers
import os
import random
import sys
from typing import Any, Optional, Union

import numpy as np
import torch

MAX_WORKERS = 16       # per rank: DINO / iBOT run 10 per GPU; more mostly adds memory (each holds prefetched batches)
PREFETCH_FACTOR = 2    # batches in flight per worker (torch's default; a multi-crop batch is large)


def usable_cpus() -> int:
    """CPU cores this process may run on (the affinity mask, which containers and ``taskset`` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        return os.cpu_count() or 1


def local_world_size() -> int:
    """Processes sharing this node's cores: torchrun's ``LOCAL_WORLD_SIZE`` (1 outside torchrun)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def worker_count(device: Union[str, torch.device], *, train: bool = True, cpus: Optional[int] = None,
                 local_world: Optional[int] = None) -> int:
    """DataLoader workers for one rank by the rule in the module docstring."""
    cpus = usable_cpus() if cpus is None else cpus
    local_world = local_world_size() if local_world is None else local_world
    per_rank = max(1, cpus // local_world)
    if torch.device(device).type == "cuda":
        return max(1, min(MAX_WORKERS, per_rank - 1))
    return 0 if train else min(MAX_WORKERS, per_rank // 4)


def loader_kwargs(device: Union[str, torch.device], *, train: bool = True,
                  num_workers: Union[int, str, None] = "auto") -> dict[str, Any]:
    """``DataLoader`` keyword arguments for a loader feeding ``device``: ``num_workers`` ("auto" or None: the
    policy's :func:`worker_count`; an int is kept), ``pin_memory`` on CUDA, and with workers
    ``persistent_workers`` and ``prefetch_factor``."""
    if num_workers in ("auto", None):
        num_workers = worker_count(device, train=train)
    if isinstance(num_workers, bool) or not isinstance(num_workers, numbers.Integral) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0 or 'auto', got num_workers={num_workers!r}")
    num_workers = int(num_workers)
    kwargs: dict[str, Any] = {"num_workers": num_workers, "pin_memory": torch.device(device).type == "cuda"}
    if num_workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=PREFETCH_FACTOR)
    return kwargs


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and CUDA) with ``seed`` (the kit's one seeding
    function: ``histokit.train.engine.seed_everything`` and ``histokit.stages.context.seed_everything`` are this)."""
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` of the kit's training loaders. torch has already seeded Python, NumPy and torch in the
    worker from the loader's base seed (``base_seed + worker_id``); this seeds OpenCV's own RNG from the same seed
    when OpenCV is loaded (the LGFFEM blurs call it), so no library in a worker starts from an unseeded state."""
    cv2 = sys.modules.get("cv2")
    if cv2 is not None and hasattr(cv2, "setRNGSeed"):
        cv2.setRNGSeed(int(torch.initial_seed() % 2**31))


def loader_generator(seed: int) -> torch.Generator:
    """A loader's own generator, seeded: its shuffling (a ``RandomSampler``) and its workers' base seed come from
    it, not from the global RNG."""
    return torch.Generator().manual_seed(int(seed))


def set_loader_epoch(loader, epoch: int) -> None:
    """Tell ``loader``'s sampler (a ``DistributedSampler`` reshuffles with ``seed + epoch``) and its dataset (a
    :class:`~histokit.distributed.sampler.PerSampleSeed` seeds each item with (seed, epoch, index)) the epoch."""
    for obj in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None),
                getattr(loader, "dataset", None)):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)


def seeded_loader(dataset, *, batch_size: int, seed: int, device: Union[str, torch.device], drop_last: bool = False,
                  num_workers: Union[int, str, None] = "auto"):
    """A training ``DataLoader`` whose batches are the same whatever its worker count, resumed or not: ``dataset``
    wrapped in :class:`~histokit.distributed.sampler.PerSampleSeed` (item ``i`` of epoch ``e`` built with Python's,
    NumPy's and torch's RNG seeded from (seed, e, i), the main process's streams left as they were), each epoch's
    order from ``seed + epoch`` (a ``DistributedSampler``: the whole permutation in one process, this rank's share
    under torchrun; ``drop_last`` also cuts it to a multiple of the world size instead of padding), the workers' base
    seed from its own :func:`loader_generator` (never from the global RNG dropout draws from), :func:`seed_worker`,
    and workers / pinned memory / prefetching by :func:`loader_kwargs`. The training loop calls
    :func:`set_loader_epoch` before each epoch (the engine does) and
    checkpoints the loader's generator. Supervised fine-tuning trains from it."""
    from torch.utils.data import DataLoader

    from ..distributed.sampler import PerSampleSeed, rank_sampler

    if not isinstance(dataset, PerSampleSeed):
        dataset = PerSampleSeed(dataset, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, drop_last=drop_last,
                      sampler=rank_sampler(dataset, shuffle=True, seed=seed, drop_last=drop_last),
                      generator=loader_generator(seed), worker_init_fn=seed_worker,
                      **loader_kwargs(device, num_workers=num_workers))


def draw_skipped_base_seed(loader) -> None:
    """Call before each epoch's ``iter(loader)``: a DataLoader without a generator of its own draws its workers' base
    seed from the global torch RNG each time it makes an iterator - every epoch with no workers or non-persistent
    ones, only the first epoch with persistent workers (``_iterator`` kept). The main process's stream, which
    dropout, drop-path and MAE's noise draw from, would then depend on the worker count; this makes the one draw a
    persistent loader skips, so a run is the same with 0 or N workers (and a CPU run's numbers are unchanged)."""
    if (getattr(loader, "num_workers", 0) > 0 and getattr(loader, "persistent_workers", False)
            and getattr(loader, "generator", None) is None and getattr(loader, "_iterator", None) is not None):
        torch.empty((), dtype=torch.int64).random_()
