"""The one training engine: every SSL method, supervised fine-tuning and Sub-center ArcFace run through :func:`train`.

A method is a module whose ``forward(*method.batch_to_inputs(batch))`` returns ``(loss, logs)``; the engine owns
the loop, AMP, DDP, checkpoints / resume, progress and history. Optional hooks of the method: ``on_step``,
``before_optimizer_step``, ``after_step`` (EMA teachers), ``configure_optimizers(epochs) ->``
:class:`Optimization` (a method whose paper fixes its own optimizers and schedules, e.g. Sub-center ArcFace's two
AdamWs and per-epoch CosineAnnealingLR; otherwise the engine's optimizer and per-step schedules below),
``trainable_state_dict`` / ``load_trainable_state_dict`` (what the checkpoint holds, e.g. without a frozen
backbone), ``reseed_rng = False`` (a method that continues the caller's global random stream in rank 0).

Per optimizer step (the order of facebookresearch/dino ``train_one_epoch``): set lr (linear warm-up + cosine) and
weight decay (constant, or DINO's cosine 0.04 -> 0.4) from the global step; ``method.on_step`` (teacher
temperature, EMA momentum); forward under bf16 autocast on CUDA; backward; optional gradient clipping;
``method.before_optimizer_step`` (DINO's frozen last layer); optimizer step; ``method.after_step`` (EMA teacher).

At every epoch end an atomic checkpoint (model, optimizer, scaler, epoch, step, RNG states, history) replaces the
previous one; ``resume=True`` continues from it so that an interrupted run ends with the same weights as an
uninterrupted one (deterministic on CPU). Single process (a notebook) needs no process group; under torchrun
(``histokit.distributed``) the method is wrapped in DDP, a plain loader gets a ``DistributedSampler`` (``set_epoch``
each epoch), the logged loss is the mean over ranks, every rank's RNG state is checkpointed, the replicas (student,
EMA teacher, centers) are checked equal at each epoch end, and only rank 0 writes. The centers of DINO / EsViT /
iBOT average the teacher outputs over all ranks themselves (``histokit.ssl.base.batch_mean_all_ranks``).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch import nn
from ..progress import progress_bar

from histokit.data.loading import draw_skipped_base_seed, seed_everything, set_loader_epoch
from histokit.distributed.launch import assert_replicas_equal, rank, world_size
from histokit.distributed.sampler import distributed_loader
from histokit.io import atomic_write_json

from .checkpoint import CheckpointError, capture_rng, checkpoint_path, load_checkpoint, restore_rng, save_checkpoint
from .schedules import cosine_with_warmup

OPTIMIZERS = ("adamw", "adam", "sgd", "lars")
GRAD_CLIP_MODES = ("global", "per_param")
LR_REFERENCE_BATCH = 256  # the linear scaling rule's reference batch (Goyal et al. 2017; DINO main_dino.py)
TRAIN_CONFIG_NAME = "train_config.json"


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _is_main() -> bool:
    return not _distributed() or dist.get_rank() == 0


def batch_and_lr(batch_per_rank: Optional[int], world: int, lr: float, scale_lr: bool = False) -> dict[str, Any]:
    """The batch and peak learning rate a run states in its config.

    global batch = per-rank batch x world size. ``scale_lr=True`` applies the linear scaling rule DINO uses
    (``lr = base_lr x global_batch / 256``), so a recipe keeps one ``lr`` for any number of GPUs; ``False`` (the
    default) uses ``lr`` as given, whatever the world size.
    """
    global_batch = batch_per_rank * world if batch_per_rank is not None else None
    if scale_lr and global_batch is None:
        raise ValueError("scale_lr=True needs the per-rank batch size: give the loader a batch_size")
    peak = lr * global_batch / LR_REFERENCE_BATCH if scale_lr else lr
    rule = (f"linear: lr = base_lr x global_batch / {LR_REFERENCE_BATCH}" if scale_lr
            else "none: lr used as given")
    return {"batch_per_rank": batch_per_rank, "world_size": world, "global_batch": global_batch, "base_lr": lr,
            "lr": peak, "lr_scaling": rule}


class _LogWindow:
    """The logs of the steps since the last history entry, kept as detached device tensors: a step adds them
    without waiting for the GPU, and :meth:`sync` brings the window's means to the host in one transfer (one
    all-reduce under torchrun) every ``log_every`` steps and at each epoch end. Python numbers (schedules) are
    summed on the host."""

    def __init__(self, device: torch.device):
        # float64 as the host sums of floats were (MPS has no float64)
        self.device, self.dtype = device, torch.float32 if device.type == "mps" else torch.float64
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def add(self, logs: dict) -> None:
        for k, v in logs.items():
            v = v.detach().reshape(()).to(self.dtype) if isinstance(v, torch.Tensor) else float(v)
            self.sums[k] = self.sums[k] + v if k in self.sums else v
            self.counts[k] = self.counts.get(k, 0) + 1

    def sync(self) -> dict[str, float]:
        """The window's means, averaged over ranks (equal per-rank batches: the global-batch mean), which also makes
        every rank see the same loss, so a non-finite loss stops all ranks together instead of leaving the others
        in a collective."""
        keys = sorted(self.sums)
        t = torch.stack([torch.as_tensor(self.sums[k], dtype=self.dtype).to(self.device) for k in keys])
        t = t / torch.tensor([self.counts[k] for k in keys], dtype=self.dtype, device=self.device)
        if _distributed():
            dist.all_reduce(t)
            t = t / dist.get_world_size()
        self.sums, self.counts = {}, {}
        return dict(zip(keys, t.tolist()))  # the one host sync of the window


def _gather_rng(generator, device=None) -> list[dict]:
    """Every rank's RNG state (rank order), so a resumed torchrun job continues each rank's own random stream."""
    state = capture_rng(generator, device)
    if not _distributed():
        return [state]
    states: list = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def _restore_rank_rng(ckpt: dict, generator, device=None) -> None:
    states = ckpt.get("rng_per_rank")
    if states is not None and len(states) == world_size():
        restore_rng(states[rank()], generator, device)
    else:  # written by one process, or by another world size: every rank continues rank 0's stream
        restore_rng(ckpt["rng"], generator, device)


@dataclass
class Optimization:
    """A method's own optimization: its optimizers (zeroed and stepped in this order every step), schedulers
    stepped once at each epoch end (``torch.optim.lr_scheduler``), the parameters gradient clipping covers (global
    norm ``grad_clip``, None = no clipping) and what ``train_config.json`` records about it. :func:`train`'s
    optimizer, lr-schedule, weight-decay and grad_clip arguments then do not apply."""

    optimizers: list
    epoch_schedulers: list = field(default_factory=list)
    clip_params: list = field(default_factory=list)
    grad_clip: Optional[float] = None
    config: dict = field(default_factory=dict)


def _model_state(method: nn.Module) -> dict:
    return getattr(method, "trainable_state_dict", method.state_dict)()


def _load_model_state(method: nn.Module, state: dict) -> None:
    getattr(method, "load_trainable_state_dict", method.load_state_dict)(state)


def param_groups(module: nn.Module) -> list[dict[str, Any]]:
    """Trainable parameters split as DINO's ``get_params_groups``: biases and 1-D tensors (norms) get no weight
    decay."""
    regularized, not_regularized = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (not_regularized if name.endswith(".bias") or p.ndim <= 1 else regularized).append(p)
    if not regularized and not not_regularized:
        raise ValueError(f"{type(module).__name__} has no trainable parameters")
    return [{"params": regularized, "regularized": True}, {"params": not_regularized, "regularized": False}]


def build_optimizer(name: str, groups: list[dict], *, momentum: float = 0.9,
                    betas: Optional[tuple[float, float]] = None) -> torch.optim.Optimizer:
    """AdamW (ViTs, DINO / EsViT / iBOT / MoCo v3 / MAE), Adam, SGD with momentum, or LARS (SimCLR's and MoCo v3's
    ResNet optimizer: ``timm.optim.Lars``, trust coefficient 0.001, no adaptation of the groups without weight
    decay, i.e. biases and norms, as google-research/simclr excludes them); lr and wd are set per step.
    ``betas``: Adam(W)'s (beta1, beta2), torch's (0.9, 0.999) when None (MAE main_pretrain.py: (0.9, 0.95))."""
    key = name.lower()
    adam = {} if betas is None else {"betas": tuple(float(b) for b in betas)}
    if betas is not None and key not in ("adamw", "adam"):
        raise ValueError(f"betas={betas!r} is an Adam / AdamW setting; optimizer={name!r} has none")
    if key == "adamw":
        return torch.optim.AdamW(groups, lr=0.0, weight_decay=0.0, **adam)
    if key == "adam":
        return torch.optim.Adam(groups, lr=0.0, weight_decay=0.0, **adam)
    if key == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=momentum, weight_decay=0.0)
    if key == "lars":
        from timm.optim import Lars

        return Lars(groups, lr=0.0, momentum=momentum, weight_decay=0.0)
    raise ValueError(f"unknown optimizer={name!r}; choose one of {OPTIMIZERS}")


def clip_gradients(params: list[torch.Tensor], max_norm: float, mode: str = "global") -> None:
    """``global``: one norm over all gradients (``torch.nn.utils.clip_grad_norm_``); ``per_param``: each parameter
    tensor's gradient clipped to ``max_norm`` on its own, as facebookresearch/dino (and iBOT) ``utils.clip_gradients``
    does (``clip / (norm + 1e-6)`` when below 1)."""
    if mode == "global":
        nn.utils.clip_grad_norm_(params, max_norm)
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch.stack([g.detach().norm(2) for g in grads])
    coefs = (max_norm / (norms + 1e-6)).clamp(max=1.0)  # a factor of 1 where the norm is below max_norm
    torch._foreach_mul_(grads, list(coefs.unbind()))


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors anywhere in nested lists / tuples / dicts go to ``device``; everything else is left as is."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    return batch


def _resolve_device(device) -> torch.device:
    d = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d.type == "cuda" and d.index is None and _distributed():
        d = torch.device("cuda", torch.cuda.current_device())  # the GPU init_distributed bound this rank to
    return d


def _check_args(epochs: int, lr: float, warmup_epochs: int, log_every: int, grad_clip: Optional[float],
                steps_per_epoch: int, grad_clip_mode: str = "global") -> None:
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got epochs={epochs}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got lr={lr}")
    if not 0 <= warmup_epochs <= epochs:
        raise ValueError(f"warmup_epochs must be in [0, epochs={epochs}], got warmup_epochs={warmup_epochs}")
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1, got log_every={log_every}")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"grad_clip must be > 0 or None, got grad_clip={grad_clip}")
    if grad_clip_mode not in GRAD_CLIP_MODES:
        raise ValueError(f"grad_clip_mode must be one of {GRAD_CLIP_MODES}, got grad_clip_mode={grad_clip_mode!r}")
    if steps_per_epoch < 1:
        raise ValueError("loader yields no batches (len(loader) == 0): dataset smaller than the batch with drop_last?")


def _share_batchnorm_statistics(method: nn.Module) -> None:
    """Rank 0's running statistics of every BatchNorm that is not synchronised (gloo on CPU has no SyncBatchNorm):
    each rank's follow its own batches, and DDP's next forward replaces them with rank 0's (``broadcast_buffers``);
    done here at the epoch end, so the replica check and the checkpoint hold the statistics the run continues with.
    Any other buffer (DINO's center) is left alone, for the replica check to catch one that was not all-reduced."""
    for module in method.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, nn.SyncBatchNorm):
            for buffer in (module.running_mean, module.running_var, module.num_batches_tracked):
                if buffer is not None:
                    dist.broadcast(buffer, 0)


def _hook(method: nn.Module, name: str) -> Callable:
    return getattr(method, name, None) or (lambda *a, **k: None)


def train(method: nn.Module, loader, *, epochs: int, optimizer: str = "adamw", lr: float,
          weight_decay: float = 0.04, weight_decay_end: Optional[float] = None, warmup_epochs: int = 0,
          min_lr: float = 1e-6, momentum: float = 0.9, amp: bool = True, amp_dtype: str = "bfloat16",
          device: Optional[str | torch.device] = None, checkpoint_dir: Optional[str | os.PathLike] = None,
          resume: bool = True, grad_clip: Optional[float] = None, grad_clip_mode: str = "global",
          betas: Optional[tuple[float, float]] = None, seed: int = 0, progress: bool = True, log_every: int = 1, epoch_end: Optional[Callable[[int], dict]] = None,
          scale_lr: bool = False, max_steps: Optional[int] = None, label: str = "") -> list[dict]:
    """Train ``method`` (``forward(*method.batch_to_inputs(batch)) -> (loss, logs)``) for ``epochs`` epochs.

    lr: peak learning rate after ``warmup_epochs`` of linear warm-up from 0, then cosine to ``min_lr`` (DINO).
    scale_lr: ``True`` makes ``lr`` a base rate scaled to ``lr x global_batch / 256`` (global batch = the loader's
    batch size x world size), DINO's rule; default off, ``lr`` used as given. weight_decay: constant, or cosine to
    ``weight_decay_end`` (DINO: 0.04 -> 0.4); never applied to biases and norm weights. amp: bf16 autocast on CUDA
    (``amp_dtype="float16"`` adds a GradScaler); ignored on CPU. grad_clip: max gradient norm, of all gradients
    together (``grad_clip_mode="global"``) or of each parameter tensor (``"per_param"``, DINO's / iBOT's
    ``clip_gradients``). betas: Adam(W)'s betas (None: torch's). optimizer "lars": timm's LARS (SimCLR).
    epoch_end(epoch) -> dict: called after each epoch (e.g. validation); its values join that epoch's last entry.
    max_steps: stop after this many optimizer steps (a rehearsal of a full recipe); the schedules keep the length of
    the whole run, so each step taken has the learning rate, weight decay and temperatures the full run would give it.
    label: the run's name, shown on its progress bar.
    log_every: steps per history entry. The logs stay on the device in between: the loop waits for the device only
    to read them (once per entry, and at each epoch end), and checks the loss is finite then.

    Returns the history: one dict per ``log_every`` steps and per epoch end, with ``epoch`` (1-based), ``step``
    (optimizer steps done), ``loss`` (mean since the previous entry), ``lr``, ``wd``, ``seconds`` (training time so
    far) and the means of the method's logs. With ``checkpoint_dir`` the run's config (epochs, global batch, world
    size, base and effective lr, the scaling rule, sampler) is also written to ``<checkpoint_dir>/train_config.json``.

    Under torchrun (a process group exists): DDP; a loader with a plain random / sequential sampler is rebuilt over
    a ``DistributedSampler`` (seeded with ``seed``), so every rank reads its own 1 / world of each epoch;
    ``seed + rank`` seeds each rank's RNG.
    """
    loader = distributed_loader(loader, seed=seed)
    try:
        steps_per_epoch = len(loader)
    except TypeError as err:
        raise ValueError("loader must have a length (a DataLoader over a map-style dataset)") from err
    _check_args(epochs, lr, warmup_epochs, log_every, grad_clip, steps_per_epoch, grad_clip_mode)
    if amp_dtype not in ("bfloat16", "float16"):
        raise ValueError(f"amp_dtype must be 'bfloat16' or 'float16', got amp_dtype={amp_dtype!r}")
    device = _resolve_device(device)
    total_steps = epochs * steps_per_epoch
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 or None, got max_steps={max_steps}")
    stop_at = total_steps if max_steps is None else min(total_steps, int(max_steps))
    warmup_steps = warmup_epochs * steps_per_epoch
    use_amp = amp and device.type == "cuda"
    dtype = torch.bfloat16 if amp_dtype == "bfloat16" else torch.float16

    if getattr(method, "reseed_rng", True) or rank() > 0:
        seed_everything(seed + rank())  # ranks draw different masks / drop-paths; rank 0 (a single process) = seed
    method.to(device)
    model: nn.Module = method
    if _distributed():
        if device.type == "cuda":  # as DINO for BN networks; SyncBatchNorm has no CPU kernel (gloo: per-rank BN)
            method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
        # a static graph needs no per-step search for unused parameters: SSL methods say whether theirs is static;
        # any other module (e.g. a classifier around an encoder with a [MASK] token) keeps the search
        model = nn.parallel.DistributedDataParallel(
            method, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=getattr(method, "find_unused_parameters", True))
    own = getattr(method, "configure_optimizers", None)
    plan: Optional[Optimization] = own(epochs=epochs) if own is not None else None
    if plan is not None:  # the method's optimizers and per-epoch schedules; the engine's per-step ones are off
        optimizers, params, grad_clip = list(plan.optimizers), list(plan.clip_params), plan.grad_clip
    else:
        groups = param_groups(method)
        optimizers = [build_optimizer(optimizer, groups, momentum=momentum, betas=betas)]
        params = [p for g in groups for p in g["params"]]
    opt = optimizers[0]
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and dtype == torch.float16)
    generator = getattr(loader, "generator", None)
    scaling = batch_and_lr(getattr(loader, "batch_size", None), world_size(), lr, scale_lr)
    lr = scaling["lr"]
    sampler = getattr(loader, "sampler", None)
    run_config = {"epochs": epochs, "steps_per_epoch": steps_per_epoch, "optimizer": optimizer.lower(), **scaling,
                  "min_lr": min_lr, "weight_decay": weight_decay, "weight_decay_end": weight_decay_end,
                  "warmup_epochs": warmup_epochs, "grad_clip": grad_clip,
                  "grad_clip_mode": grad_clip_mode if grad_clip is not None else None,
                  "betas": list(betas) if betas is not None else None, "seed": seed, "max_steps": max_steps,
                  "sampler": type(sampler).__name__ if sampler is not None else None}
    if plan is not None:
        run_config.update(plan.config, grad_clip=grad_clip, grad_clip_mode="global" if grad_clip else None)

    history: list[dict] = []
    start_epoch = 0
    ckpt_file = checkpoint_path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_file is not None and resume and ckpt_file.exists():
        ckpt = load_checkpoint(ckpt_file)
        # global_batch: absent from checkpoints written before it was recorded
        for key in ("epochs", "steps_per_epoch", "optimizer", "global_batch"):
            if (key in ckpt["config"] or key != "global_batch") and ckpt["config"].get(key) != run_config[key]:
                raise CheckpointError(f"{ckpt_file} was written by a run with {key}={ckpt['config'].get(key)!r}, "
                                      f"this run has {key}={run_config[key]!r}: use another checkpoint_dir or "
                                      f"resume=False")
        _load_model_state(method, ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        for o, state in zip(optimizers[1:], ckpt.get("extra_optimizers", [])):
            o.load_state_dict(state)
        for s, state in zip(plan.epoch_schedulers if plan else [], ckpt.get("schedulers", [])):
            s.load_state_dict(state)
        scaler.load_state_dict(ckpt["scaler"])
        history = list(ckpt["history"])
        start_epoch = int(ckpt["epoch"])
        _restore_rank_rng(ckpt, generator, device)
    if ckpt_file is not None and _is_main():
        atomic_write_json(ckpt_file.parent / TRAIN_CONFIG_NAME, run_config)

    on_step, before_opt, after_step = (_hook(method, n) for n in ("on_step", "before_optimizer_step", "after_step"))
    to_inputs = getattr(method, "batch_to_inputs", None) or (lambda b: (b,))
    seconds_before = history[-1]["seconds"] if history else 0.0
    t0 = time.perf_counter()

    for epoch in range(start_epoch, epochs):
        if epoch * steps_per_epoch >= stop_at:
            break
        set_loader_epoch(loader, epoch)  # a DistributedSampler's order, a PerSampleSeed's augmentation
        draw_skipped_base_seed(loader)  # the global stream (dropout, drop-path, MAE noise) whatever the workers
        method.train()
        window = _LogWindow(device)
        bar = progress_bar(total=steps_per_epoch, desc=f"{label + ' ' if label else ''}epoch {epoch + 1}/{epochs}",
                           disable=not (progress and _is_main()), leave=False)
        for i, batch in enumerate(loader):
            if i >= steps_per_epoch:
                break
            step = epoch * steps_per_epoch + i
            if plan is None:
                lr_now = cosine_with_warmup(step, total_steps, lr, min_lr, warmup_steps, 0.0)
                wd_now = weight_decay if weight_decay_end is None else cosine_with_warmup(
                    step, total_steps, weight_decay, weight_decay_end)
                for g in opt.param_groups:
                    g["lr"] = lr_now
                    g["weight_decay"] = wd_now if g["regularized"] else 0.0
            else:
                lr_now, wd_now = opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"]
            on_step(step, total_steps, steps_per_epoch=steps_per_epoch)

            inputs = to_inputs(move_to_device(batch, device))
            with torch.autocast(device.type, dtype=dtype, enabled=use_amp):
                loss, logs = model(*inputs)
            window.add({**logs, "loss": loss})
            for o in optimizers:
                o.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if grad_clip is not None:
                for o in optimizers:
                    scaler.unscale_(o)
                clip_gradients(params, grad_clip, grad_clip_mode)
            before_opt()
            for o in optimizers:
                scaler.step(o)
            scaler.update()
            after_step()

            bar.update(1)
            last_of_epoch = i == steps_per_epoch - 1 or step + 1 >= stop_at
            if (step + 1) % log_every == 0 or last_of_epoch:
                first = step + 1 - window.counts["loss"]
                entry = window.sync()
                # checked here, not per step (a per-step check is a host sync): a non-finite loss stops the run at
                # most log_every - 1 steps late, before any checkpoint holds its weights
                if not math.isfinite(entry["loss"]):
                    raise FloatingPointError(
                        f"loss is {entry['loss']} at epoch {epoch + 1}, steps {first}-{step} (checked every "
                        f"log_every={log_every} steps): training stopped (the last epoch checkpoint is kept)")
                entry.update(epoch=epoch + 1, step=step + 1, lr=lr_now, wd=wd_now,
                             seconds=seconds_before + time.perf_counter() - t0)
                history.append(entry)
                bar.set_postfix(loss=f"{entry['loss']:.4f}", lr=f"{lr_now:.2e}")  # the last synced loss
            if step + 1 >= stop_at:
                break
        bar.close()
        for s in plan.epoch_schedulers if plan else []:
            s.step()
        if epoch_end is not None:
            history[-1].update(epoch_end(epoch) or {})
        if _distributed():
            _share_batchnorm_statistics(method)
        assert_replicas_equal(method, what=type(method).__name__)  # no-op in a single process
        rng_states = _gather_rng(generator, device) if ckpt_file is not None else None  # a collective: every rank
        if ckpt_file is not None and _is_main():
            save_checkpoint(ckpt_file, {
                "model": _model_state(method), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                "extra_optimizers": [o.state_dict() for o in optimizers[1:]],
                "schedulers": [s.state_dict() for s in plan.epoch_schedulers] if plan else [],
                "epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch, "rng": rng_states[0],
                "rng_per_rank": rng_states, "history": history, "config": run_config})
        if _distributed():
            dist.barrier()
    return history
