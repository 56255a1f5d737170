"""DINO: self-distillation with no labels (Caron et al., ICCV 2021, "Emerging Properties in Self-Supervised Vision
Transformers"; reference code facebookresearch/dino ``main_dino.py`` and ``vision_transformer.py``).

The student g_s sees every view (2 global + N local crops), the teacher g_t only the 2 global views. With
P_s(x) = softmax(g_s(x) / tau_s) and P_t(x) = softmax((g_t(x) - c) / tau_t), the loss (paper Eq. 3) is

    L = 1 / #pairs * sum_{x in globals} sum_{x' in views, x' != x} H(P_t(x), P_s(x')),   H(a, b) = -sum a log b

The center c is an EMA of the teacher outputs (paper Eq. 4): c <- m c + (1 - m) mean_i g_t(x_i), m = 0.9.
The teacher is an EMA of the student (momentum 0.996 -> 1, cosine); tau_t warms up 0.04 -> 0.07.
Chen & Krishnan (2022) pretrain ViT-S/16 with exactly this recipe; Ye et al. (2024) put CypherViT inside it.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from histokit.models.base import Encoder
from histokit.train.schedules import teacher_momentum, teacher_temperature

from .base import (SSLMethod, batch_mean_all_ranks, check_views, ema_update, forward_views, full_precision,
                   make_teacher)


class DINOHead(nn.Module):
    """Projection head of DINO (``vision_transformer.DINOHead``): an ``nlayers`` MLP (GELU, hidden 2048) to a
    256-d bottleneck, L2 normalisation, then a weight-normalised linear layer to ``out_dim`` (65,536 in the paper).
    With ``norm_last_layer`` the weight-norm magnitude g is fixed to 1 (not trained)."""

    def __init__(self, in_dim: int, out_dim: int = 65536, *, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 nlayers: int = 3, use_bn: bool = False, norm_last_layer: bool = True):
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"DINOHead nlayers must be >= 1, got nlayers={nlayers}")
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
            for _ in range(nlayers - 2):
                layers += [nn.BatchNorm1d(hidden_dim)] if use_bn else []
                layers += [nn.GELU(), nn.Linear(hidden_dim, hidden_dim)]
            layers += [nn.BatchNorm1d(hidden_dim)] if use_bn else []
            layers += [nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim)]
            self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        g = self.last_layer.parametrizations.weight.original0  # weight-norm magnitude ("weight_g" in DINO)
        with torch.no_grad():
            g.fill_(1.0)
        g.requires_grad_(not norm_last_layer)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = self.mlp(x.reshape(-1, shape[-1]))  # tokens (B, N, D) go through as rows (iBOT / EsViT dense head)
        with full_precision():  # the MLP follows autocast; the prototype logits are fp32
            x = F.normalize(x.float(), dim=-1, p=2)
            return self.last_layer(x).reshape(*shape[:-1], -1)


def cross_entropy_soft(teacher_probs: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """H(P_t, P_s) = -sum_k P_t[k] log softmax(student_logits)[k], per row."""
    return torch.sum(-teacher_probs * F.log_softmax(student_logits, dim=-1), dim=-1)


class DINOLoss(nn.Module):
    """DINO's loss (paper Eq. 3) with teacher centering and sharpening; the center is a buffer (paper Eq. 4).

    ``forward(student_out, teacher_out, teacher_temp)``: ``student_out`` is ``(V*B, K)`` — all V views stacked, the
    global views first — and ``teacher_out`` is ``(G*B, K)`` for the G global views. Teacher view i is never paired
    with student view i (the same crop). The center is updated with the batch mean of ``teacher_out`` *after* the
    loss is computed, averaged over ranks only when ``torch.distributed`` is initialised.
    """

    def __init__(self, out_dim: int, *, student_temp: float = 0.1, center_momentum: float = 0.9,
                 n_global_views: int = 2):
        super().__init__()
        if student_temp <= 0:
            raise ValueError(f"student_temp must be > 0, got student_temp={student_temp}")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum must be in [0, 1], got center_momentum={center_momentum}")
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.n_global_views = n_global_views
        self.register_buffer("center", torch.zeros(1, out_dim))

    @full_precision()
    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        if teacher_out.shape[0] % self.n_global_views:
            raise ValueError(f"teacher_out has {teacher_out.shape[0]} rows, not a multiple of "
                             f"n_global_views={self.n_global_views}")
        batch = teacher_out.shape[0] // self.n_global_views
        if student_out.shape[0] % batch:
            raise ValueError(f"student_out has {student_out.shape[0]} rows, not a multiple of the batch {batch}")
        student = (student_out.float() / self.student_temp).chunk(student_out.shape[0] // batch)
        teacher = F.softmax((teacher_out.float() - self.center) / teacher_temp, dim=-1).detach().chunk(
            self.n_global_views)
        total, n_terms = 0.0, 0
        for iq, q in enumerate(teacher):
            for v, s in enumerate(student):
                if v == iq:  # same crop seen by both networks
                    continue
                total = total + cross_entropy_soft(q, s).mean()
                n_terms += 1
        self.update_center(teacher_out)
        return total / n_terms

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """c <- m c + (1 - m) * mean over the batch of every rank (paper Eq. 4)."""
        batch_center = batch_mean_all_ranks(teacher_out.float())
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1.0 - self.center_momentum)


class DINO(SSLMethod):
    """DINO around any :class:`Encoder`: student = encoder + head, teacher = EMA copy of both.

    ``forward(views)``: ``views`` = ``n_global_views`` global crops followed by any number of local crops, each
    ``(B, 3, H, W)``. ``eval_encoder()`` returns the teacher backbone, the one DINO evaluates and releases.
    """

    def __init__(self, encoder: Encoder, *, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 use_bn_in_head: bool = False, norm_last_layer: bool = True, student_temp: float = 0.1,
                 warmup_teacher_temp: float = 0.04, teacher_temp: float = 0.07, warmup_teacher_temp_epochs: int = 30,
                 center_momentum: float = 0.9, momentum_teacher: float = 0.996, freeze_last_layer_epochs: int = 1,
                 n_global_views: int = 2):
        super().__init__()
        self.student_encoder = encoder
        self._train_mask_token_only_if_used()
        self.student_head = DINOHead(encoder.embed_dim, out_dim, hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim,
                                     use_bn=use_bn_in_head, norm_last_layer=norm_last_layer)
        self.teacher_encoder = make_teacher(encoder)
        self.teacher_head = make_teacher(self.student_head)
        self.loss_fn = DINOLoss(out_dim, student_temp=student_temp, center_momentum=center_momentum,
                                n_global_views=n_global_views)
        self.n_global_views = n_global_views
        self.warmup_teacher_temp, self.final_teacher_temp = warmup_teacher_temp, teacher_temp
        self.warmup_teacher_temp_epochs = warmup_teacher_temp_epochs
        self.momentum_base = momentum_teacher
        self.freeze_last_layer_epochs = freeze_last_layer_epochs
        # schedule state, set by on_step (values of step 0 until then)
        self.teacher_temp = warmup_teacher_temp
        self.momentum = momentum_teacher
        self.last_layer_frozen = freeze_last_layer_epochs > 0

    def eval_encoder(self) -> Encoder:
        return self.teacher_encoder

    def on_step(self, step: int, total_steps: int, steps_per_epoch: Optional[int] = None) -> None:
        epoch = step // (steps_per_epoch or 1)
        self.teacher_temp = teacher_temperature(epoch, self.warmup_teacher_temp_epochs,
                                                self.warmup_teacher_temp, self.final_teacher_temp)
        self.momentum = teacher_momentum(step, total_steps, self.momentum_base)
        self.last_layer_frozen = epoch < self.freeze_last_layer_epochs

    def before_optimizer_step(self) -> None:
        # DINO cancels the last layer's gradients during the first epoch(s) (utils.cancel_gradients_last_layer).
        if self.last_layer_frozen:
            for p in self.student_head.last_layer.parameters():
                p.grad = None

    def after_step(self) -> None:
        ema_update(self.teacher_encoder, self.student_encoder, self.momentum)
        ema_update(self.teacher_head, self.student_head, self.momentum)

    def forward(self, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        check_views(views, min_views=self.n_global_views, method="DINO")
        globals_ = views[: self.n_global_views]
        with torch.no_grad():
            t_pooled = torch.cat([o.pooled for o in forward_views(self.teacher_encoder, globals_)])
            teacher_out = self.teacher_head(t_pooled)
        s_pooled = torch.cat([o.pooled for o in forward_views(self.student_encoder, views)])
        student_out = self.student_head(s_pooled)
        loss = self.loss_fn(student_out, teacher_out, self.teacher_temp)
        return loss, {"loss": loss.detach(), "teacher_temp": self.teacher_temp, "momentum": self.momentum}
