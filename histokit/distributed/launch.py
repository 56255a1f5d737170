"""Process-group setup: the same code runs under ``torchrun`` (one process per GPU, or per CPU slot) and as one plain
process in a notebook, where every call here is a no-op.

``torchrun`` exports ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_distributed` reads them and opens the group over ``env://`` (NCCL when the process drives a GPU, gloo on
CPU), binding rank r of a node to GPU ``LOCAL_RANK``. Without those variables nothing is initialised and the process
is rank 0 of 1. :func:`run_local` forks N CPU ranks on this machine with exactly those variables set, so tests,
benchmarks and notebooks drive the torchrun code path without a launcher.

A stage with ``distributed`` flags (the notebook parameter; keys :data:`TORCHRUN_KEYS`) starts real torchrun jobs:
:func:`torchrun_command` builds the argv, :func:`run_torchrun` runs it, streams its output and raises
:class:`TorchrunError` with the failing rank's exception and last lines (:func:`failure_report`).
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


# ------------------------------------------------------------------------------------------- torchrun from a stage

# Keys of a stage's ``distributed`` parameter (``histokit reproduce --nproc-per-node ...``), each a torchrun flag.
TORCHRUN_KEYS = ("nproc_per_node", "nnodes", "node_rank", "master_addr", "master_port", "rdzv_backend",
                 "rdzv_endpoint", "rdzv_id", "max_restarts")


class TorchrunError(RuntimeError):
    """A torchrun job launched by a stage failed; the message holds the failing rank's error and last lines."""


def _flags(ctx_distributed: Optional[dict]) -> dict:
    flags = {k: v for k, v in dict(ctx_distributed or {}).items() if v is not None and v != ""}
    unknown = sorted(set(flags) - set(TORCHRUN_KEYS))
    if unknown:
        raise ValueError(f"distributed: unknown key(s) {unknown}; known: {list(TORCHRUN_KEYS)}")
    for key in ("nproc_per_node", "node_rank", "master_port", "max_restarts"):
        if key in flags:
            try:
                flags[key] = int(flags[key])
            except (TypeError, ValueError) as err:
                raise ValueError(f"distributed: {key} must be an integer, got {flags[key]!r}") from err
    if flags.get("nproc_per_node", 1) < 1:
        raise ValueError(f"distributed: nproc_per_node must be >= 1, got {flags['nproc_per_node']}")
    return flags


def _nnodes_max(nnodes: Any) -> int:
    """``nnodes`` as torchrun takes it: ``N`` or ``MIN:MAX`` (elastic); the largest node count."""
    text = str(nnodes)
    try:
        parts = [int(p) for p in text.split(":")]
    except ValueError as err:
        raise ValueError(f"distributed: nnodes must be N or MIN:MAX, got {nnodes!r}") from err
    if len(parts) > 2 or min(parts) < 1:
        raise ValueError(f"distributed: nnodes must be N or MIN:MAX with N >= 1, got {nnodes!r}")
    return parts[-1]


def is_multiprocess(ctx_distributed: Optional[dict]) -> bool:
    """True when the flags ask for more than one process (``nproc_per_node > 1`` or ``nnodes > 1``): the stage then
    launches torchrun; otherwise it trains in its own process without a process group."""
    flags = _flags(ctx_distributed)
    return flags.get("nproc_per_node", 1) > 1 or _nnodes_max(flags.get("nnodes", 1)) > 1


def planned_world_size(ctx_distributed: Optional[dict]) -> Optional[int]:
    """nproc_per_node x nnodes, or None for an elastic node range (``MIN:MAX``: known only at rendezvous)."""
    flags = _flags(ctx_distributed)
    if ":" in str(flags.get("nnodes", 1)):
        return None
    return flags.get("nproc_per_node", 1) * _nnodes_max(flags.get("nnodes", 1))


def torchrun_command(ctx_distributed: dict, module_args: list[str], *, log_dir: Optional[str | os.PathLike] = None,
                     python: Optional[str] = None) -> list[str]:
    """The argv that runs ``python -m <module_args[0]> <module_args[1:]>`` under torchrun with a stage's flags.

    ``ctx_distributed``: the notebook parameter ``distributed`` (keys :data:`TORCHRUN_KEYS`; None or "" values are
    ignored, unknown keys refused). ``module_args``: the module, then its arguments. The launcher is
    ``<python> -m torch.distributed.run`` (= ``torchrun``) of this interpreter (``python``, default
    ``sys.executable``), so the workers import the same environment as the notebook kernel.

    Rendezvous: ``rdzv_endpoint`` (+ ``rdzv_backend``, default c10d, and ``rdzv_id``) -> dynamic rendezvous;
    else ``master_addr`` / ``master_port`` -> static rendezvous (``--node-rank``); else, on one node,
    ``--standalone`` (a free local port); several nodes need one of the two. ``max_restarts`` ->
    ``--max-restarts``. ``log_dir`` -> ``--log-dir DIR --redirects 3 --tee 3``: each local rank's stdout / stderr
    (and the ``error.json`` of a failed rank) under DIR, and on the console too.
    """
    import sys

    if not module_args or str(module_args[0]).startswith("-"):
        raise ValueError(f"module_args must start with the module to run, got {module_args!r}")
    flags = _flags(ctx_distributed)
    nproc = flags.get("nproc_per_node", 1)
    nnodes = str(flags.get("nnodes", 1))
    multi_node = _nnodes_max(nnodes) > 1 or ":" in nnodes
    cmd = [python or sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    if "rdzv_endpoint" in flags:
        cmd += ["--nnodes", nnodes, "--rdzv-backend", str(flags.get("rdzv_backend", "c10d")),
                "--rdzv-endpoint", str(flags["rdzv_endpoint"])]
        if "rdzv_id" in flags:
            cmd += ["--rdzv-id", str(flags["rdzv_id"])]
        if "node_rank" in flags:
            cmd += ["--node-rank", str(flags["node_rank"])]
    elif "master_addr" in flags or "master_port" in flags:
        if multi_node and not ("master_addr" in flags and "master_port" in flags):
            raise ValueError("distributed: several nodes with static rendezvous need both master_addr and "
                             "master_port (or give rdzv_endpoint)")
        if "rdzv_backend" in flags or "rdzv_id" in flags:
            raise ValueError("distributed: rdzv_backend / rdzv_id need rdzv_endpoint (static rendezvous uses "
                             "master_addr / master_port)")
        cmd += ["--nnodes", nnodes, "--node-rank", str(flags.get("node_rank", 0))]
        if "master_addr" in flags:
            cmd += ["--master-addr", str(flags["master_addr"])]
        if "master_port" in flags:
            cmd += ["--master-port", str(flags["master_port"])]
    elif multi_node:
        raise ValueError(f"distributed: nnodes={nnodes} needs a rendezvous: master_addr + master_port (static, with "
                         f"node_rank per node) or rdzv_endpoint HOST:PORT")
    else:
        cmd += ["--standalone"]
    if "max_restarts" in flags:
        cmd += ["--max-restarts", str(flags["max_restarts"])]
    if log_dir is not None:
        cmd += ["--log-dir", str(log_dir), "--redirects", "3", "--tee", "3"]
    module_args = [str(a) for a in module_args]
    _refuse_ambiguous(module_args[1:])
    return cmd + ["-m", *module_args]


def _refuse_ambiguous(args: Sequence[str]) -> None:
    """torchrun's parser (argparse, abbreviations allowed) reads a script argument that is a prefix of one of its
    own options as that option ("--run" -> "--run-path"): such a name is refused here with the reason."""
    from torch.distributed.run import get_args_parser

    own = [o for a in get_args_parser()._actions for o in a.option_strings if o.startswith("--")]
    for arg in args:
        name = arg.split("=", 1)[0]
        if name.startswith("--") and name != "--":
            clash = [o for o in own if o.startswith(name)]
            if clash:
                raise ValueError(f"module argument {name!r} would be read by torchrun as {clash[0]!r} (argparse "
                                 f"abbreviation): rename it")


def _tail(path, n: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def failure_report(log_dir: Optional[str | os.PathLike], returncode: int, console_tail: Sequence[str], what: str,
                   lines: int = 25) -> str:
    """What a failed torchrun job says in words: the failing rank(s) of the last attempt with the exception each
    recorded (``error.json``) and the last ``lines`` of its stderr; else the last lines torchrun printed."""
    import json as _json
    from pathlib import Path

    parts = [f"{what} failed under torchrun (exit code {returncode})."]
    ranks = []
    if log_dir is not None and Path(log_dir).is_dir():
        attempts = sorted(Path(log_dir).glob("*/attempt_*"), key=lambda p: (p.stat().st_mtime, p.name))
        if attempts:
            last = attempts[-1]
            for rank_dir in sorted((p for p in last.iterdir() if p.is_dir() and p.name.isdigit()),
                                   key=lambda p: int(p.name)):
                error = rank_dir / "error.json"
                message = None
                if error.is_file():
                    try:
                        message = _json.loads(error.read_text())["message"]
                        message = message.get("message", message) if isinstance(message, dict) else message
                    except (ValueError, KeyError, TypeError, OSError):
                        message = error.read_text(errors="replace")[-2000:]
                if message is not None:
                    ranks.append((rank_dir, str(message).strip()))
            if not ranks:  # killed by a signal or os._exit: no error file; show ranks that wrote to stderr
                ranks = [(d, None) for d in sorted(p for p in last.iterdir() if p.is_dir() and p.name.isdigit())
                         if _tail(d / "stderr.log", 1)]
    for rank_dir, message in ranks:
        parts.append(f"local rank {rank_dir.name}" + (f" raised: {message}" if message else " wrote:"))
        tail = _tail(rank_dir / "stderr.log", lines)
        if tail:
            parts.append(f"  last {len(tail)} lines of {rank_dir / 'stderr.log'}:")
            parts += ["    " + t for t in tail]
    if not ranks:
        tail = list(console_tail)[-lines:]
        parts.append(f"last {len(tail)} lines torchrun printed:")
        parts += ["    " + t.rstrip("\n") for t in tail]
    return "\n".join(parts)


def run_torchrun(cmd: Sequence[str], *, what: str, log_dir: Optional[str | os.PathLike] = None,
                 env: Optional[dict] = None, echo: bool = True) -> None:
    """Run a :func:`torchrun_command` and stream its output (``echo``: printed, e.g. into a notebook cell); raise
    :class:`TorchrunError` with :func:`failure_report` when it fails. ``env`` adds variables; the workers import
    the same ``histokit`` as this process (its folder leads ``PYTHONPATH``) and write unbuffered."""
    import subprocess
    from collections import deque
    from pathlib import Path

    import histokit

    package_root = str(Path(histokit.__file__).resolve().parents[1])
    run_env = dict(os.environ)
    run_env["PYTHONPATH"] = os.pathsep.join([package_root] + [p for p in run_env.get("PYTHONPATH", "").split(
        os.pathsep) if p])
    run_env["PYTHONUNBUFFERED"] = "1"
    run_env.update({k: str(v) for k, v in (env or {}).items()})
    for var in TORCHRUN_VARS + ("MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        run_env.pop(var, None)  # a kernel that is itself a rank must not hand its identity to the job
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
    tail: deque = deque(maxlen=200)
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=run_env,
                            bufsize=1, errors="replace")
    try:
        for line in proc.stdout:
            tail.append(line)
            if echo:
                print(line, end="", flush=True)
        returncode = proc.wait()
    except BaseException:  # an interrupted kernel stops the job instead of leaving ranks behind
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    if returncode != 0:
        raise TorchrunError(failure_report(log_dir, returncode, tail, what))
