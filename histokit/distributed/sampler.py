"""What each rank reads: torch's ``DistributedSampler`` in place of a loader's own sampler, and per-sample seeded
augmentation, so a run's data does not depend on how many processes share it.

``DistributedSampler`` (shuffle with ``seed + epoch``, rank r takes every world-th index of the permutation) makes
the union of the ranks' k-th batches the k-th ``world x batch`` slice of one permutation: with N ranks of batch B
the run sees the same global batches as one process of batch N x B reading the same permutation.
:class:`PerSampleSeed` makes the random crops of an image a function of (seed, epoch, index) alone, not of which
rank (or DataLoader worker) happens to draw it.
"""
from __future__ import annotations

import random
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

from .launch import is_initialized, rank, world_size


def rank_sampler(dataset: Dataset, *, shuffle: bool = True, seed: int = 0, world: Optional[int] = None,
                 rank_: Optional[int] = None, drop_last: bool = False) -> DistributedSampler:
    """``DistributedSampler`` for this rank; ``world`` / ``rank_`` default to the process group (1 / 0 without one),
    so one process gets the same permutation a torchrun job splits.

    ``drop_last=True`` cuts the permutation to a multiple of ``world`` instead of padding it with repeated items:
    with a loader that drops its last incomplete batch, N ranks of batch B then take exactly the
    ``floor(n / (N x B))`` global batches one process of batch N x B takes, item for item."""
    world = world_size() if world is None else world
    rank_ = rank() if rank_ is None else rank_
    return DistributedSampler(dataset, num_replicas=world, rank=rank_, shuffle=shuffle, seed=seed,
                              drop_last=drop_last)


def distributed_loader(loader: DataLoader, *, seed: int = 0) -> DataLoader:
    """The same loader with a ``DistributedSampler`` when a process group exists; ``loader`` itself otherwise, or
    when it already samples per rank.

    A shuffling loader (``RandomSampler``) gets a shuffling sampler seeded with ``seed``; a sequential one a
    sequential sampler. Batch size, ``drop_last``, workers, collate function and generator are kept.
    """
    if not is_initialized() or isinstance(loader.sampler, DistributedSampler):
        return loader
    if not isinstance(loader, DataLoader):
        raise TypeError(f"under torchrun the training loader must be a torch DataLoader (to shard it per rank), got "
                        f"{type(loader).__name__}")
    if loader.batch_size is None or type(loader.batch_sampler) is not BatchSampler:
        raise ValueError(f"loader has a custom batch_sampler ({type(loader.batch_sampler).__name__}): build it over "
                         f"a DistributedSampler yourself (histokit.distributed.sampler.rank_sampler)")
    if not isinstance(loader.sampler, (RandomSampler, SequentialSampler)):
        raise ValueError(f"loader has a custom sampler ({type(loader.sampler).__name__}): build the loader with a "
                         f"DistributedSampler yourself (histokit.distributed.sampler.rank_sampler)")
    sampler = rank_sampler(loader.dataset, shuffle=isinstance(loader.sampler, RandomSampler), seed=seed)
    kwargs: dict[str, Any] = dict(
        batch_size=loader.batch_size, sampler=sampler, drop_last=loader.drop_last, num_workers=loader.num_workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn, generator=loader.generator,
        persistent_workers=loader.persistent_workers)
    if loader.num_workers > 0:
        kwargs.update(prefetch_factor=loader.prefetch_factor, multiprocessing_context=loader.multiprocessing_context)
    return DataLoader(loader.dataset, **kwargs)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that depends on (seed, epoch, index) only (NumPy's SeedSequence mixes them)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class PerSampleSeed(Dataset):
    """Wrap a dataset whose transform draws random numbers (multi-crop views, LGFFEM's augmentation): item ``i`` of
    epoch ``e`` is built with Python's, NumPy's and torch's RNG seeded from ``(seed, e, i)`` and the outer RNG states
    restored afterwards (the main process's global streams, which dropout and masks draw from, are left as they were).

    torchvision transforms draw from torch's global RNG and histokit's ``RandomRotate90`` from ``random``; seeding
    both makes the views of an image identical whichever rank or worker loads it. The engine calls
    :meth:`set_epoch` before each epoch; the epoch lives in shared memory, so persistent DataLoader workers (which
    keep the dataset they were given, forked or spawned) see it change.
    """

    def __init__(self, dataset: Dataset, seed: int = 0):
        self.dataset = dataset
        self.seed = int(seed)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        s = sample_seed(self.seed, self.epoch, int(index))
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(s)
            np.random.seed(s % 2**32)
            torch.manual_seed(s)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
