"""histokit.distributed: scale past one GPU without a second code path.

- ``launch``: open the process group from torchrun's environment (NCCL on GPU, gloo on CPU), or do nothing in a
  plain process; a fork launcher for N CPU ranks on one machine (tests, benchmarks, notebooks).
- ``sampler``: ``DistributedSampler`` per rank, per-sample seeded augmentation (data independent of world size).
- ``launch`` also builds and runs the torchrun jobs of the stages (``torchrun_command``, ``run_torchrun``).
- ``pretrain``: one rank of a recipe's training run (``torchrun ... -m histokit.distributed.pretrain --paper P
  --profile PROF --train-run NAME ...``), what stages 02 / 03 launch under ``distributed`` flags.
- ``extract``: sharded feature extraction (whole slides / groups per rank, done markers, merge into one store);
  ``python -m histokit.distributed.extract ...``, and ``... extract stage ...`` for stage 04.
- ``stage``: the stage context as worker arguments and back.

The engine (``histokit.train.engine``) wraps the method in DDP when a group exists; docs/scaling.md shows how to
launch on one node, several nodes and SLURM. ``pretrain`` and ``extract`` are not imported here (they pull in
the training and retrieval stacks).
"""
from .launch import (DistEnv, assert_replicas_equal, barrier, cleanup, init_distributed, is_initialized, is_main,
                     rank, run_local, world_size)
from .sampler import PerSampleSeed, distributed_loader, rank_sampler

__all__ = ["DistEnv", "assert_replicas_equal", "barrier", "cleanup", "init_distributed", "is_initialized", "is_main",
           "rank", "run_local", "world_size", "PerSampleSeed", "distributed_loader", "rank_sampler"]
