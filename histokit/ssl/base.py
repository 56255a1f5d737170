"""What every SSL method shares: the method interface the training engine drives, the EMA teacher update,
cross-rank averaging that also works with no process group, and the multi-crop forward.

A *method* is an ``nn.Module`` holding everything that trains (student, heads, predictor) and everything that is
carried along (EMA teacher, centers). The engine calls, per optimizer step::

    method.on_step(step, total_steps, steps_per_epoch=...)   # schedules: EMA momentum, teacher temperature
    loss, logs = method(*method.batch_to_inputs(batch))      # forward(views) -> (scalar loss, dict of floats)
    loss.backward(); method.before_optimizer_step(); optimizer.step()
    method.after_step()                                       # EMA teacher update

``student_encoder`` is the backbone being trained; ``eval_encoder()`` is the backbone the paper evaluates (the EMA
teacher for DINO / EsViT / iBOT, the student otherwise).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from histokit.models.base import Encoder, TokenOutput


class SSLMethod(nn.Module):
    """Base class: defaults for the hooks the engine calls (all no-ops) and ``eval_encoder() = student_encoder``."""

    student_encoder: Encoder
    # DDP searches every step's graph for unused parameters only when a method says it leaves some: the kit's methods
    # reach every trainable parameter each step (the [MASK] embedding they don't use is frozen, below).
    find_unused_parameters = False
    uses_mask_token = False  # iBOT trains the encoder's [MASK] embedding

    def _train_mask_token_only_if_used(self) -> None:
        """ViT and CypherViT carry iBOT's [MASK] embedding for every method; outside iBOT it gets no gradient, so it
        stays out of DDP's reducer and the optimizer (it is still in the state dict, unchanged, as before)."""
        token = getattr(self.student_encoder, "mask_token", None)
        if isinstance(token, nn.Parameter):
            token.requires_grad_(self.uses_mask_token)

    def eval_encoder(self) -> Encoder:
        return self.student_encoder

    def on_step(self, step: int, total_steps: int, steps_per_epoch: Optional[int] = None) -> None:
        """Set per-step schedules. ``steps_per_epoch`` converts epoch-based settings (teacher-temperature warm-up,
        frozen last layer); when omitted one step counts as one epoch."""

    def before_optimizer_step(self) -> None:
        """Called after backward (and gradient clipping), before ``optimizer.step()``."""

    def after_step(self) -> None:
        """Called after ``optimizer.step()`` (EMA teacher update)."""

    def batch_to_inputs(self, batch) -> tuple:
        """Turn one loader batch into the positional arguments of ``forward`` (here: ``(views,)``)."""
        return (views_from_batch(batch),)


@contextlib.contextmanager
def full_precision():
    """Autocast off (CUDA and CPU) inside: for the prototype layer, the temperatures, softmaxes and losses, which a bf16
    forward would otherwise compute in bf16 (8-bit mantissa: at a teacher temperature of 0.04 a logit's rounding step
    of ~2^-8 becomes ~0.1 in the exponent). Callers cast their inputs ``.float()``; also usable as a decorator."""
    with contextlib.ExitStack() as stack:
        for device_type in ("cuda", "cpu"):
            if torch.is_autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def views_from_batch(batch) -> list[torch.Tensor]:
    """Accept the batch shapes a loader yields: a tensor (one view), a list of view tensors, or ``(views, labels)`` /
    ``(view, labels)``; labels (tensors with ndim <= 1, or anything after the views) are dropped."""
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, dict):
        for key in ("views", "image", "images"):
            if key in batch:
                return views_from_batch(batch[key])
        raise ValueError(f"batch dict has none of the keys 'views', 'image', 'images': {sorted(batch)}")
    if isinstance(batch, (list, tuple)) and batch:
        first = batch[0]
        if isinstance(first, (list, tuple)):  # (views, labels, ...)
            return views_from_batch(list(first))
        views = [b for b in batch if isinstance(b, torch.Tensor) and b.ndim == 4]
        if views and isinstance(first, torch.Tensor) and first.ndim == 4:
            return views
    raise ValueError(f"cannot find image views (4-D tensors) in a batch of type {type(batch).__name__}")


def make_teacher(module: nn.Module) -> nn.Module:
    """A frozen copy for EMA: same weights, no gradients, stochastic depth off (DINO builds its teacher without
    drop-path, main_dino.py)."""
    teacher = copy.deepcopy(module)
    for p in teacher.parameters():
        p.requires_grad_(False)
    for m in teacher.modules():
        if hasattr(m, "drop_prob"):  # timm DropPath
            m.drop_prob = 0.0
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """theta_t <- m * theta_t + (1 - m) * theta_s over matching parameters (DINO Alg. 1; MoCo v3 momentum encoder)."""
    t_params = list(teacher.parameters())
    s_params = list(student.parameters())
    if len(t_params) != len(s_params):
        raise ValueError(f"teacher has {len(t_params)} parameters, student {len(s_params)}: not the same network")
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, [p.detach() for p in s_params], alpha=1.0 - momentum)


def distributed_sum(t: torch.Tensor) -> torch.Tensor:
    """All-reduce sum across ranks when a process group exists; unchanged otherwise (notebook kernels)."""
    if dist.is_available() and dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t)
    return t


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def batch_mean_all_ranks(x: torch.Tensor) -> torch.Tensor:
    """Mean over dim 0 of the rows of every rank (DINO's ``update_center``: sum, all-reduce, divide by B x world)."""
    return distributed_sum(x.sum(dim=0, keepdim=True)) / (x.shape[0] * world_size())


def forward_views(encoder: Encoder, views: Sequence[torch.Tensor],
                  masks: Optional[Sequence[Optional[torch.Tensor]]] = None) -> list[TokenOutput]:
    """Run consecutive views of the same resolution as one batch (DINO's MultiCropWrapper) and split back per view.

    ``masks[i]`` (``(B, N)`` bool or None) is passed to ``forward_tokens`` for view i; views are grouped only while
    their shapes and mask presence agree.
    """
    masks = list(masks) if masks is not None else [None] * len(views)
    if len(masks) != len(views):
        raise ValueError(f"got {len(masks)} masks for {len(views)} views")
    outs: list[TokenOutput] = []
    start = 0
    while start < len(views):
        end = start + 1
        while (end < len(views) and views[end].shape == views[start].shape
               and (masks[end] is None) == (masks[start] is None)):
            end += 1
        x = torch.cat(list(views[start:end]))
        mask = torch.cat(list(masks[start:end])) if masks[start] is not None else None
        out = encoder.forward_tokens(x, mask=mask) if mask is not None else encoder.forward_tokens(x)
        n = end - start
        for i, pooled in enumerate(out.pooled.chunk(n)):
            outs.append(TokenOutput(
                pooled=pooled,
                patch_tokens=out.patch_tokens.chunk(n)[i] if out.patch_tokens is not None else None,
                cls_tokens=out.cls_tokens.chunk(n)[i] if out.cls_tokens is not None else None,
                grid_size=out.grid_size,
            ))
        start = end
    return outs


def check_views(views: Sequence[torch.Tensor], *, min_views: int, method: str) -> None:
    if not isinstance(views, (list, tuple)) or len(views) < min_views:
        n = len(views) if isinstance(views, (list, tuple)) else type(views).__name__
        raise ValueError(f"{method} needs a list of at least {min_views} views, got {n}")
    batch = views[0].shape[0]
    for i, v in enumerate(views):
        if v.ndim != 4 or v.shape[0] != batch:
            raise ValueError(f"{method}: view {i} has shape {tuple(v.shape)}; every view must be (B={batch}, C, H, W)")
