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
they are the same whatever the worker count. Other datasets with random transforms (fine-tuning) draw from torch's
per-worker seeds, which come from the loader's generator: the same for a given worker count, not across counts.

Spawn-safe: every dataset and transform the kit hands a loader is a module-level class (no lambdas or closures), so
the loaders also work under the ``spawn`` / ``forkserver`` start methods (macOS, Windows, Python >= 3.14 on Linux).
"""
from __future__ import annotations

import numbers
import os
from typing import Any, Optional, Union

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
