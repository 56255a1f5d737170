"""iBOT: image BERT pre-training with online tokenizer (Zhou et al., ICLR 2022; reference code bytedance/ibot
``main_ibot.py`` (iBOTLoss) and ``loader.py`` (ImageFolderMask)).

The student sees the global views with some patch embeddings replaced by a learned [MASK] token; the teacher sees
them intact. With a head shared by [CLS] and patch tokens (``--shared_head``), the loss is

    L = lambda1 * L_[CLS] + lambda2 * L_MIM
    L_[CLS] = mean over pairs (teacher global u, student view v != u) of H(P_t^cls(u), P_s^cls(v))   (= DINO)
    L_MIM   = mean over global views u of  sum_i m_i H(P_t^patch(u)_i, P_s^patch(u~)_i) / sum_i m_i     (paper Eq. 2)

where u~ is the masked view and m the mask; patch outputs have their own center and teacher temperature.
Masks are block-wise (BEiT) or random, with a ratio drawn per image; by default half the images are not masked and
the others get a ratio in U(0.1, 0.5) (iBOT ViT-S/16: ``--pred_ratio 0 0.3 --pred_ratio_var 0 0.2``).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from histokit.models.base import Encoder
from histokit.train.schedules import teacher_temperature

from .base import batch_mean_all_ranks, check_views, forward_views, full_precision, views_from_batch
from .dino import DINO, cross_entropy_soft


def _randint(low: int, high: int, generator: Optional[torch.Generator]) -> int:
    """Uniform integer in [low, high] inclusive (Python's random.randint), from the torch RNG."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def _uniform(low: float, high: float, generator: Optional[torch.Generator]) -> float:
    return float(low + (high - low) * torch.rand((), generator=generator))


def block_mask(grid: tuple[int, int], num_masked: float, *, aspect_ratio: tuple[float, float] = (0.3, 1 / 0.3),
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Block-wise mask of about ``num_masked`` patches on an (H, W) grid, BEiT's MaskingGenerator as iBOT uses it:
    place rectangles of area U(min_area, remaining) and log-uniform aspect ratio until the target is reached or no
    rectangle adds a patch in 10 tries; ``min_area = (min(H, W) // 3)^2``. Returns (H, W) bool, True = masked."""
    H, W = grid
    mask = torch.zeros(H, W, dtype=torch.bool)
    log_ar = (math.log(aspect_ratio[0]), math.log(aspect_ratio[1]))
    count = 0
    while count < num_masked:
        max_patches = num_masked - count
        delta = 0
        for _ in range(10):
            low = (min(H, W) // 3) ** 2
            area = _uniform(low, max_patches, generator)
            ar = math.exp(_uniform(*log_ar, generator))
            h, w = int(round(math.sqrt(area * ar))), int(round(math.sqrt(area / ar)))
            if w < W and h < H:
                top, left = _randint(0, H - h, generator), _randint(0, W - w, generator)
                block = mask[top: top + h, left: left + w]
                new = h * w - int(block.sum())
                if 0 < new <= max_patches:
                    block.fill_(True)
                    delta = new
            if delta > 0:
                break
        if delta == 0:
            break
        count += delta
    return mask


def random_mask(grid: tuple[int, int], num_masked: float, *,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``int(num_masked)`` patches chosen uniformly at random (iBOT ``--pred_shape rand``). (H, W) bool."""
    H, W = grid
    n = int(num_masked)
    perm = torch.randperm(H * W, generator=generator)
    mask = torch.zeros(H * W, dtype=torch.bool)
    mask[perm[:n]] = True
    return mask.reshape(H, W)


def sample_masks(batch: int, grid: tuple[int, int], *, shape: str = "block",
                 ratio_choices: Sequence[tuple[float, float]] = ((0.0, 0.0), (0.1, 0.5)),
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(B, H*W) masks, one per image: pick one of ``ratio_choices`` uniformly (iBOT's list of ``pred_ratio``), draw the
    ratio uniformly in that (low, high) range, then mask that fraction of the grid with ``shape`` 'block' or 'rand'."""
    if shape not in ("block", "rand"):
        raise ValueError(f"mask shape must be 'block' or 'rand', got shape={shape!r}")
    for lo, hi in ratio_choices:
        if not 0.0 <= lo <= hi < 1.0:
            raise ValueError(f"mask ratio range must satisfy 0 <= low <= high < 1, got {(lo, hi)}")
    masks = []
    for _ in range(batch):
        lo, hi = ratio_choices[_randint(0, len(ratio_choices) - 1, generator)]
        ratio = _uniform(lo, hi, generator) if hi > lo else lo
        target = ratio * grid[0] * grid[1]
        m = block_mask(grid, target, generator=generator) if shape == "block" else random_mask(grid, target,
                                                                                                generator=generator)
        masks.append(m.flatten())
    return torch.stack(masks)


class MaskedViews:
    """``image -> {"views": transform(image), "masks": [(H*W,) bool per global view]}``: iBOT's masks made with the
    views, in the DataLoader workers, as the reference's ``ImageFolderMask`` does, instead of ~B x 2 block masks per
    step in the training process. Each image's mask is :func:`sample_masks` of one image, the distribution
    :meth:`iBOT.make_masks` gives it, from the global RNG (which ``PerSampleSeed`` seeds per item). A module-level
    class, so a spawned worker can unpickle it."""

    def __init__(self, transform, patch_size: int, *, n_global_views: int = 2, shape: str = "block",
                 ratio_choices: Sequence[tuple[float, float]] = ((0.0, 0.0), (0.1, 0.5))):
        self.transform, self.patch_size, self.n_global_views = transform, int(patch_size), int(n_global_views)
        self.shape, self.ratio_choices = shape, tuple(tuple(r) for r in ratio_choices)

    def __call__(self, image) -> dict:
        views = self.transform(image)
        p = self.patch_size
        masks = [sample_masks(1, (v.shape[-2] // p, v.shape[-1] // p), shape=self.shape,
                              ratio_choices=self.ratio_choices)[0] for v in views[: self.n_global_views]]
        return {"views": views, "masks": masks}


class iBOTLoss(nn.Module):
    """[CLS] self-distillation + masked-patch self-distillation with separate centers (iBOTLoss in main_ibot.py).

    ``forward(s_cls, s_patch, t_cls, t_patch, masks, teacher_temp, teacher_patch_temp)``: per-view lists; ``s_cls``
    covers every student view (globals first), ``s_patch``/``masks`` the global views (B, N, K) / (B, N),
    ``t_cls``/``t_patch`` the teacher's global views.
    """

    def __init__(self, out_dim: int, patch_out_dim: int, *, student_temp: float = 0.1, center_momentum: float = 0.9,
                 center_momentum2: float = 0.9, lambda1: float = 1.0, lambda2: float = 1.0):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum, self.center_momentum2 = center_momentum, center_momentum2
        self.lambda1, self.lambda2 = lambda1, lambda2
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("center2", torch.zeros(1, 1, patch_out_dim))

    @full_precision()
    def forward(self, s_cls: Sequence[torch.Tensor], s_patch: Sequence[torch.Tensor], t_cls: Sequence[torch.Tensor],
                t_patch: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], teacher_temp: float,
                teacher_patch_temp: float) -> tuple[torch.Tensor, dict]:
        t_cls_p = [F.softmax((t.float() - self.center) / teacher_temp, dim=-1).detach() for t in t_cls]
        t_patch_p = [F.softmax((t.float() - self.center2) / teacher_patch_temp, dim=-1).detach() for t in t_patch]
        cls_total, n_cls, mim_total, n_mim = 0.0, 0, 0.0, 0
        for q in range(len(t_cls_p)):
            for v in range(len(s_cls)):
                if v == q:  # same view: masked-patch prediction on the masked tokens only
                    per_token = cross_entropy_soft(t_patch_p[q], s_patch[v].float() / self.student_temp)
                    m = masks[v].float()
                    mim_total = mim_total + (torch.sum(per_token * m, -1) / m.sum(-1).clamp(min=1.0)).mean()
                    n_mim += 1
                else:
                    cls_total = cls_total + cross_entropy_soft(t_cls_p[q], s_cls[v].float() / self.student_temp).mean()
                    n_cls += 1
        loss_cls = cls_total / n_cls * self.lambda1
        loss_mim = mim_total / n_mim * self.lambda2
        self.update_centers(torch.cat(list(t_cls)), torch.cat(list(t_patch)))
        return loss_cls + loss_mim, {"cls_loss": loss_cls.detach(), "mim_loss": loss_mim.detach()}

    @torch.no_grad()
    def update_centers(self, teacher_cls: torch.Tensor, teacher_patch: torch.Tensor) -> None:
        """[CLS] center: batch mean; patch center: batch mean of the per-image patch means (iBOT update_center)."""
        self.center.mul_(self.center_momentum).add_(batch_mean_all_ranks(teacher_cls.float()),
                                                    alpha=1.0 - self.center_momentum)
        patch_mean = batch_mean_all_ranks(teacher_patch.float().mean(1)).unsqueeze(0)
        self.center2.mul_(self.center_momentum2).add_(patch_mean, alpha=1.0 - self.center_momentum2)


class iBOT(DINO):
    """iBOT around an :class:`Encoder` that supports ``forward_tokens(x, mask=...)`` (ViT, CypherViT).

    One head (``student_head``) maps both the pooled [CLS] embedding and the patch tokens (shared head, as iBOT's
    ViT-S/B runs); the teacher is its EMA; ``eval_encoder()`` returns the teacher backbone.
    """

    uses_mask_token = True

    def __init__(self, encoder: Encoder, *, out_dim: int = 8192, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 use_bn_in_head: bool = False, norm_last_layer: bool = False, student_temp: float = 0.1,
                 warmup_teacher_temp: float = 0.04, teacher_temp: float = 0.07,
                 warmup_teacher_patch_temp: float = 0.04, teacher_patch_temp: float = 0.07,
                 warmup_teacher_temp_epochs: int = 30, center_momentum: float = 0.9, momentum_teacher: float = 0.996,
                 freeze_last_layer_epochs: int = 1, n_global_views: int = 2, lambda1: float = 1.0,
                 lambda2: float = 1.0, mask_shape: str = "block",
                 mask_ratio_choices: Sequence[tuple[float, float]] = ((0.0, 0.0), (0.1, 0.5))):
        if not encoder.patch_size:
            raise ValueError(f"iBOT needs a patch-token encoder with a patch_size; {type(encoder).__name__} has none")
        super().__init__(encoder, out_dim=out_dim, hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim,
                         use_bn_in_head=use_bn_in_head, norm_last_layer=norm_last_layer, student_temp=student_temp,
                         warmup_teacher_temp=warmup_teacher_temp, teacher_temp=teacher_temp,
                         warmup_teacher_temp_epochs=warmup_teacher_temp_epochs, center_momentum=center_momentum,
                         momentum_teacher=momentum_teacher, freeze_last_layer_epochs=freeze_last_layer_epochs,
                         n_global_views=n_global_views)
        self.loss_fn = iBOTLoss(out_dim, out_dim, student_temp=student_temp, center_momentum=center_momentum,
                                lambda1=lambda1, lambda2=lambda2)
        self.warmup_teacher_patch_temp, self.final_teacher_patch_temp = warmup_teacher_patch_temp, teacher_patch_temp
        self.teacher_patch_temp = warmup_teacher_patch_temp
        self.mask_shape = mask_shape
        self.mask_ratio_choices = tuple(tuple(r) for r in mask_ratio_choices)
        sample_masks(1, (2, 2), shape=mask_shape, ratio_choices=self.mask_ratio_choices)  # validate arguments now

    def on_step(self, step: int, total_steps: int, steps_per_epoch: Optional[int] = None) -> None:
        super().on_step(step, total_steps, steps_per_epoch)
        epoch = step // (steps_per_epoch or 1)
        self.teacher_patch_temp = teacher_temperature(epoch, self.warmup_teacher_temp_epochs,
                                                      self.warmup_teacher_patch_temp, self.final_teacher_patch_temp)

    def views_with_masks(self, transform) -> MaskedViews:
        """``transform`` followed by this method's masks: the dataset transform that makes the masks in the loader's
        workers (:meth:`batch_to_inputs` passes them to ``forward``)."""
        return MaskedViews(transform, self.student_encoder.patch_size, n_global_views=self.n_global_views,
                           shape=self.mask_shape, ratio_choices=self.mask_ratio_choices)

    def batch_to_inputs(self, batch) -> tuple:
        """``(views, masks)`` when the loader made the masks (:class:`MaskedViews`); ``(views,)`` otherwise, and
        ``forward`` draws them."""
        item = batch[0] if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], dict) else batch
        if isinstance(item, dict) and "masks" in item:
            return views_from_batch(item["views"]), list(item["masks"])
        return (views_from_batch(batch),)

    def make_masks(self, views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """One (B, N) mask per global view, on the view's patch grid (when the loader brought none)."""
        p = self.student_encoder.patch_size
        out = []
        for v in views[: self.n_global_views]:
            grid = (v.shape[-2] // p, v.shape[-1] // p)
            out.append(sample_masks(v.shape[0], grid, shape=self.mask_shape,
                                    ratio_choices=self.mask_ratio_choices).to(v.device))
        return out

    def forward(self, views: Sequence[torch.Tensor],
                masks: Optional[Sequence[torch.Tensor]] = None) -> tuple[torch.Tensor, dict]:
        check_views(views, min_views=self.n_global_views, method="iBOT")
        globals_ = views[: self.n_global_views]
        masks = list(masks) if masks is not None else self.make_masks(views)
        with torch.no_grad():
            t_outs = forward_views(self.teacher_encoder, globals_)
            t_cls = [self.teacher_head(o.pooled) for o in t_outs]
            t_patch = [self.teacher_head(o.patch_tokens) for o in t_outs]
        s_global = forward_views(self.student_encoder, globals_, masks=masks)
        s_local = forward_views(self.student_encoder, views[self.n_global_views:])
        s_cls = [self.student_head(o.pooled) for o in s_global + s_local]
        s_patch = [self.student_head(o.patch_tokens) for o in s_global]
        loss, logs = self.loss_fn(s_cls, s_patch, t_cls, t_patch, masks, self.teacher_temp, self.teacher_patch_temp)
        return loss, {"loss": loss.detach(), **logs, "mask_ratio": torch.cat(masks).float().mean(),
                      "teacher_temp": self.teacher_temp, "momentum": self.momentum}
