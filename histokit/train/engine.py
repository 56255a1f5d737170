"""The one training engine: every SSL method and the supervised fine-tuning run through :func:`train`.

Per optimizer step (the order of facebookresearch/dino ``train_one_epoch``): set lr (linear warm-up + cosine) and
weight decay (constant, or DINO's cosine 0.04 -> 0.4) from the global step; ``method.on_step`` (teacher
temperature, EMA momentum); forward under bf16 autocast on CUDA; backward; optional gradient clipping;
``method.before_optimizer_step`` (DINO's frozen last layer); optimizer step; ``method.after_step`` (EMA teacher).

At every epoch end an atomic checkpoint (model, optimizer, scaler, epoch, step, RNG states, history) replaces the
previous one; ``resume=True`` continues from it so that an interrupted run ends with the same weights as an
uninterrupted one (deterministic on CPU). Single process (a notebook) needs no process group; under torchrun the
method is wrapped in DDP, samplers get ``set_epoch`` and only rank 0 writes.
"""
from __future__ import annotations

import math
import os
import random
import time
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import CheckpointError, capture_rng, checkpoint_path, load_checkpoint, restore_rng, save_checkpoint
from .schedules import cosine_with_warmup

OPTIMIZERS = ("adamw", "adam", "sgd")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _is_main() -> bool:
    return not _distributed() or dist.get_rank() == 0


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


def build_optimizer(name: str, groups: list[dict], *, momentum: float = 0.9) -> torch.optim.Optimizer:
    """AdamW (ViTs, DINO / EsViT / iBOT / MoCo v3 / MAE), Adam, or SGD with momentum; lr and wd are set per step."""
    key = name.lower()
    if key == "adamw":
        return torch.optim.AdamW(groups, lr=0.0, weight_decay=0.0)
    if key == "adam":
        return torch.optim.Adam(groups, lr=0.0, weight_decay=0.0)
    if key == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=momentum, weight_decay=0.0)
    raise ValueError(f"unknown optimizer={name!r}; choose one of {OPTIMIZERS}")


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors anywhere in nested lists / tuples / dicts go to ``device``; everything else is left as is."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    return batch


def _set_epoch(loader, epoch: int) -> None:
    """DistributedSampler (and any sampler / dataset with ``set_epoch``) reshuffles per epoch."""
    for obj in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None),
                getattr(loader, "dataset", None)):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)


def _resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _check_args(epochs: int, lr: float, warmup_epochs: int, log_every: int, grad_clip: Optional[float],
                steps_per_epoch: int) -> None:
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
    if steps_per_epoch < 1:
        raise ValueError("loader yields no batches (len(loader) == 0): dataset smaller than the batch with drop_last?")


def _hook(method: nn.Module, name: str) -> Callable:
    return getattr(method, name, None) or (lambda *a, **k: None)


def train(method: nn.Module, loader, *, epochs: int, optimizer: str = "adamw", lr: float,
          weight_decay: float = 0.04, weight_decay_end: Optional[float] = None, warmup_epochs: int = 0,
          min_lr: float = 1e-6, momentum: float = 0.9, amp: bool = True, amp_dtype: str = "bfloat16",
          device: Optional[str | torch.device] = None, checkpoint_dir: Optional[str | os.PathLike] = None,
          resume: bool = True, grad_clip: Optional[float] = None, seed: int = 0, progress: bool = True,
          log_every: int = 1, epoch_end: Optional[Callable[[int], dict]] = None) -> list[dict]:
    """Train ``method`` (``forward(*method.batch_to_inputs(batch)) -> (loss, logs)``) for ``epochs`` epochs.

    lr: peak learning rate after ``warmup_epochs`` of linear warm-up from 0, then cosine to ``min_lr`` (DINO; scale
    it with the batch size in the recipe, lr = base * batch / 256). weight_decay: constant, or cosine to
    ``weight_decay_end`` (DINO: 0.04 -> 0.4); never applied to biases and norm weights. amp: bf16 autocast on CUDA
    (``amp_dtype="float16"`` adds a GradScaler); ignored on CPU. grad_clip: max global gradient norm.
    epoch_end(epoch) -> dict: called after each epoch (e.g. validation); its values join that epoch's last entry.

    Returns the history: one dict per ``log_every`` steps and per epoch end, with ``epoch`` (1-based), ``step``
    (optimizer steps done), ``loss`` (mean since the previous entry), ``lr``, ``wd``, ``seconds`` (training time so
    far) and the means of the method's logs.
    """
    try:
        steps_per_epoch = len(loader)
    except TypeError as err:
        raise ValueError("loader must have a length (a DataLoader over a map-style dataset)") from err
    _check_args(epochs, lr, warmup_epochs, log_every, grad_clip, steps_per_epoch)
    if amp_dtype not in ("bfloat16", "float16"):
        raise ValueError(f"amp_dtype must be 'bfloat16' or 'float16', got amp_dtype={amp_dtype!r}")
    device = _resolve_device(device)
    total_steps = epochs * steps_per_epoch
    warmup_steps = warmup_epochs * steps_per_epoch
    use_amp = amp and device.type == "cuda"
    dtype = torch.bfloat16 if amp_dtype == "bfloat16" else torch.float16

    seed_everything(seed)
    method.to(device)
    model: nn.Module = method
    if _distributed():
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)  # as DINO for BN networks; no-op otherwise
        # unused parameters exist by design (e.g. the ViT [MASK] token outside iBOT)
        model = nn.parallel.DistributedDataParallel(
            method, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    groups = param_groups(method)
    opt = build_optimizer(optimizer, groups, momentum=momentum)
    params = [p for g in groups for p in g["params"]]
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and dtype == torch.float16)
    generator = getattr(loader, "generator", None)
    run_config = {"epochs": epochs, "steps_per_epoch": steps_per_epoch, "optimizer": optimizer.lower(), "lr": lr,
                  "min_lr": min_lr, "weight_decay": weight_decay, "weight_decay_end": weight_decay_end,
                  "warmup_epochs": warmup_epochs, "seed": seed}

    history: list[dict] = []
    start_epoch = 0
    ckpt_file = checkpoint_path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_file is not None and resume and ckpt_file.exists():
        ckpt = load_checkpoint(ckpt_file)
        for key in ("epochs", "steps_per_epoch", "optimizer"):
            if ckpt["config"].get(key) != run_config[key]:
                raise CheckpointError(f"{ckpt_file} was written by a run with {key}={ckpt['config'].get(key)!r}, "
                                      f"this run has {key}={run_config[key]!r}: use another checkpoint_dir or "
                                      f"resume=False")
        method.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        history = list(ckpt["history"])
        start_epoch = int(ckpt["epoch"])
        restore_rng(ckpt["rng"], generator)

    on_step, before_opt, after_step = (_hook(method, n) for n in ("on_step", "before_optimizer_step", "after_step"))
    to_inputs = getattr(method, "batch_to_inputs", None) or (lambda b: (b,))
    seconds_before = history[-1]["seconds"] if history else 0.0
    t0 = time.perf_counter()

    for epoch in range(start_epoch, epochs):
        _set_epoch(loader, epoch)
        method.train()
        window: dict[str, list[float]] = {}
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}", disable=not (progress and _is_main()),
                   leave=False)
        for i, batch in enumerate(loader):
            if i >= steps_per_epoch:
                break
            step = epoch * steps_per_epoch + i
            lr_now = cosine_with_warmup(step, total_steps, lr, min_lr, warmup_steps, 0.0)
            wd_now = weight_decay if weight_decay_end is None else cosine_with_warmup(
                step, total_steps, weight_decay, weight_decay_end)
            for g in opt.param_groups:
                g["lr"] = lr_now
                g["weight_decay"] = wd_now if g["regularized"] else 0.0
            on_step(step, total_steps, steps_per_epoch=steps_per_epoch)

            inputs = to_inputs(move_to_device(batch, device))
            with torch.autocast(device.type, dtype=dtype, enabled=use_amp):
                loss, logs = model(*inputs)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss is {loss_value} at epoch {epoch + 1}, step {step}: training stopped "
                                         f"(the last epoch checkpoint is kept)")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if grad_clip is not None:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(params, grad_clip)
            before_opt()
            scaler.step(opt)
            scaler.update()
            after_step()

            for k, v in {**logs, "loss": loss_value}.items():
                window.setdefault(k, []).append(float(v))
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr_now:.2e}")
            last_of_epoch = i == steps_per_epoch - 1
            if (step + 1) % log_every == 0 or last_of_epoch:
                entry = {k: sum(v) / len(v) for k, v in window.items()}
                entry.update(epoch=epoch + 1, step=step + 1, lr=lr_now, wd=wd_now,
                             seconds=seconds_before + time.perf_counter() - t0)
                history.append(entry)
                window = {}
        bar.close()
        if epoch_end is not None:
            history[-1].update(epoch_end(epoch) or {})
        if ckpt_file is not None and _is_main():
            save_checkpoint(ckpt_file, {
                "model": method.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                "epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch, "rng": capture_rng(generator),
                "history": history, "config": run_config})
        if _distributed():
            dist.barrier()
    return history
