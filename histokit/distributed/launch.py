"""Process-group setup: the same code runs under ``torchrun`` (one process per GPU, or per CPU slot) and as one plain
process in a notebook, where every call here is a no-op.

``torchrun`` exports ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_distributed` reads them and opens the group over ``env://`` (NCCL when the process drives a GPU, gloo on
CPU), binding rank r of a node to GPU ``LOCAL_RANK``. Without those variables nothing is initialised and the process
is rank 0 of 1. :func:`run_local` forks N CPU ranks on this machine with exactly those variables set, so tests,
benchmarks and notebooks drive the torchrun code path without a launcher.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist

TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: ``backend`` is None for a single process without a process group."""

    rank: int
    local_rank: int
    world_size: int
    backend: Optional[str]
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """Rank 0 (or a single process): the one that writes checkpoints, configs and merged outputs."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank; a no-op without a process group."""
    if not is_initialized():
        return
    if dist.get_backend() == "nccl":  # name the device, or NCCL guesses it (and warns)
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def cleanup() -> None:
    """Destroy the process group if one exists (end of a torchrun worker)."""
    if is_initialized():
        dist.destroy_process_group()


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError as err:
        raise ValueError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from err


def torchrun_env() -> Optional[tuple[int, int, int]]:
    """``(rank, local_rank, world_size)`` from torchrun's variables, or None when the process was not launched so."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    r, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    local = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else r
    if world < 1 or not 0 <= r < world:
        raise ValueError(f"environment variables RANK={r} and WORLD_SIZE={world} are inconsistent: need 0 <= RANK < "
                         f"WORLD_SIZE")
    return r, local, world


def _wants_cuda(device: Optional[str | torch.device]) -> bool:
    if device is None:
        return torch.cuda.is_available()
    return torch.device(device).type == "cuda"


def init_distributed(device: Optional[str | torch.device] = None, *, backend: Optional[str] = None,
                     timeout: Optional[timedelta] = None) -> DistEnv:
    """Open the process group when launched by torchrun; otherwise describe the single process (no group).

    device: ``None`` = CUDA when available; under torchrun a CUDA process uses GPU ``LOCAL_RANK``. backend: default
    ``nccl`` for CUDA, ``gloo`` for CPU. timeout: how long a collective (a barrier while another rank still extracts
    its shard, say) may wait; torch's default otherwise. Safe to call twice.
    """
    cuda = _wants_cuda(device)
    if cuda and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} requested but CUDA is not available")
    env = torchrun_env()
    if env is None:
        dev = torch.device(device) if device is not None else torch.device("cuda" if cuda else "cpu")
        return DistEnv(0, 0, 1, None, dev)
    r, local, world = env
    dev = torch.device("cpu")
    if cuda:
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local} but this node has {torch.cuda.device_count()} GPU(s): launch at most "
                             f"that many processes per node (torchrun --nproc_per_node)")
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    if not is_initialized():
        backend = backend or ("nccl" if cuda else "gloo")
        kwargs: dict[str, Any] = {"device_id": dev} if backend == "nccl" else {}
        if timeout is not None:
            kwargs["timeout"] = timeout
        store = _restart_scoped_store(r, world, timeout)
        if store is not None:
            dist.init_process_group(backend, store=store, rank=r, world_size=world, **kwargs)
        else:
            dist.init_process_group(backend, init_method="env://", rank=r, world_size=world, **kwargs)
    return DistEnv(r, local, world, dist.get_backend(), dev)


def _restart_scoped_store(r: int, world: int, timeout: Optional[timedelta]):
    """The agent's store seen under a per-restart prefix, when torchrun shares its rendezvous store with the workers.

    The shared store outlives a worker restart (``--max-restarts``), and the process group of the restarted workers
    would read the previous attempt's keys (gloo: the dead workers' addresses, "Connection refused"; NCCL: a stale
    unique id; pytorch/pytorch#135712). ``TORCHELASTIC_RESTART_COUNT`` keeps each attempt's keys apart. With
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` torch builds a fresh store per attempt itself: None, env:// as usual.
    """
    shared = (os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
              and os.environ.get("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "0") != "1")
    if not shared:
        return None
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    rendezvous_kw = {"timeout": timeout} if timeout is not None else {}
    store, _, _ = next(dist.rendezvous("env://", rank=r, world_size=world, **rendezvous_kw))
    return dist.PrefixStore(f"histokit/attempt_{attempt}", store)


@torch.no_grad()
def assert_replicas_equal(module: torch.nn.Module, what: str = "model", rtol: float = 1e-6) -> None:
    """Raise if any parameter or buffer of ``module`` differs between ranks (DDP keeps the student equal by
    averaging gradients; the EMA teacher and the centers stay equal only if every rank updates them alike).

    One float64 checksum per tensor, gathered from every rank; cheap enough to run once per epoch.
    """
    if not is_initialized():
        return
    names, sums = [], []
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if t.is_floating_point():
            names.append(name)
            sums.append(t.detach().double().sum())
    if not sums:
        return
    mine = torch.stack(sums)
    gathered = [torch.empty_like(mine) for _ in range(world_size())]
    dist.all_gather(gathered, mine)
    for r, other in enumerate(gathered[1:], start=1):
        bad = ~torch.isclose(other, gathered[0], rtol=rtol, atol=0.0)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise RuntimeError(f"{what}: tensor {names[i]!r} differs between rank 0 and rank {r} (checksums "
                               f"{float(gathered[0][i])!r} vs {float(other[i])!r}): the replicas have diverged")


def free_port() -> int:
    """A TCP port free at the moment of asking (for MASTER_PORT of a local launch)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_worker(local_rank: int, fn: Callable, world: int, port: int, args: Sequence, env: dict) -> None:
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.update({k: str(v) for k, v in env.items()})
    # One intra-op thread per rank, as torchrun sets OMP_NUM_THREADS=1; with "fork" it is also required: the
    # parent's OpenMP thread pool does not survive fork, and a child entering a parallel region would hang.
    torch.set_num_threads(1)
    try:
        fn(*args)
    finally:
        cleanup()


def run_local(fn: Callable, world: int, args: Sequence = (), *, start_method: str = "fork",
              env: Optional[dict] = None) -> None:
    """Run ``fn(*args)`` in ``world`` CPU processes on this machine, each with torchrun's environment variables
    (so ``fn`` calls :func:`init_distributed` exactly as under torchrun; ``env`` adds or overrides variables).
    Blocks until all end; an exception in any rank is re-raised here with its traceback, and a rank that exits
    early makes the others stop (as torchrun's agent does).

    ``fork`` (default, Linux) starts in milliseconds because the children inherit the imported modules; ``spawn``
    re-imports torch in each child (seconds) and needs ``fn`` importable by name.
    """
    import torch.multiprocessing as mp

    if world < 1:
        raise ValueError(f"world must be >= 1, got world={world}")
    if start_method == "fork":
        # DDP imports torch._dynamo lazily (seconds); importing it once here saves every forked child the wait
        import torch._dynamo  # noqa: F401
    mp.start_processes(_local_worker, args=(fn, world, free_port(), tuple(args), dict(env or {})), nprocs=world,
                       start_method=start_method, join=True)
