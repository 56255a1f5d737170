"""MoCo v3 (Chen, Xie & He, ICCV 2021, "An Empirical Study of Training Self-Supervised Vision Transformers";
reference code facebookresearch/moco-v3 ``moco/builder.py``). Ye et al. (2024, Table 3) train CypherViT with it.

Two views x1, x2; the base encoder f_q = backbone + projector + predictor gives queries q, the momentum encoder
f_k = EMA(backbone + projector) gives keys k. The loss (paper Alg. 1) is the symmetrised InfoNCE

    L = ctr(q1, k2) + ctr(q2, k1),   ctr(q, k) = CE(q_hat k_hat^T / tau, labels = diag) * 2 tau

with L2-normalised q_hat, k_hat, the other keys of the batch (all ranks) as negatives, tau = 0.2 for ViTs, and the
key momentum going 0.99 -> 1 with a cosine.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from histokit.models.base import Encoder
from histokit.train.schedules import teacher_momentum

from .base import SSLMethod, check_views, ema_update, full_precision, make_teacher


def build_mlp(num_layers: int, input_dim: int, mlp_dim: int, output_dim: int, last_bn: bool = True) -> nn.Sequential:
    """MoCo v3's ``_build_mlp``: bias-free Linear + BN + ReLU between layers, and a final BN without affine."""
    layers: list[nn.Module] = []
    for i in range(num_layers):
        dim1 = input_dim if i == 0 else mlp_dim
        dim2 = output_dim if i == num_layers - 1 else mlp_dim
        layers.append(nn.Linear(dim1, dim2, bias=False))
        if i < num_layers - 1:
            layers += [nn.BatchNorm1d(dim2), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(dim2, affine=False))
    return nn.Sequential(*layers)


def _gather_keys(k: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Keys of every rank (no gradient, as ``concat_all_gather``) and this rank's offset; identity without a group."""
    if not (dist.is_available() and dist.is_initialized()):
        return k, 0
    parts = [torch.empty_like(k) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, k.contiguous())
    return torch.cat(parts), k.shape[0] * dist.get_rank()


@full_precision()  # else autocast turns the .float() matmul below back into bf16
def contrastive_loss(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """ctr(q, k) = CE(normalize(q) normalize(k)^T / T, positives on the diagonal) * 2T (MoCo v3 builder.py)."""
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.float(), dim=1)
    k_all, offset = _gather_keys(k)
    logits = q @ k_all.t() / temperature
    labels = torch.arange(q.shape[0], device=q.device) + offset
    return F.cross_entropy(logits, labels) * (2 * temperature)


class MoCoV3(SSLMethod):
    """MoCo v3 around any :class:`Encoder`. Projector: 3 layers for transformers, 2 for CNNs (as in the paper);
    predictor: 2 layers; hidden 4096, output 256. ``eval_encoder()`` is the base (query) backbone."""

    def __init__(self, encoder: Encoder, *, dim: int = 256, mlp_dim: int = 4096, temperature: float = 0.2,
                 momentum: float = 0.99, momentum_cosine: bool = True, projector_layers: Optional[int] = None):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"MoCo v3 temperature must be > 0, got temperature={temperature}")
        if projector_layers is None:  # transformers (they have a patch_size) get 3 layers, CNNs 2
            projector_layers = 3 if encoder.patch_size is not None else 2
        self.student_encoder = encoder
        self._train_mask_token_only_if_used()
        self.projector = build_mlp(projector_layers, encoder.embed_dim, mlp_dim, dim)
        self.predictor = build_mlp(2, dim, mlp_dim, dim, last_bn=False)
        self.momentum_encoder = make_teacher(encoder)
        self.momentum_projector = make_teacher(self.projector)
        self.temperature = temperature
        self.momentum_base = momentum
        self.momentum_cosine = momentum_cosine
        self.momentum = momentum

    def on_step(self, step: int, total_steps: int, steps_per_epoch: Optional[int] = None) -> None:
        self.momentum = teacher_momentum(step, total_steps, self.momentum_base) if self.momentum_cosine \
            else self.momentum_base

    def after_step(self) -> None:
        ema_update(self.momentum_encoder, self.student_encoder, self.momentum)
        ema_update(self.momentum_projector, self.projector, self.momentum)

    def forward(self, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        check_views(views, min_views=2, method="MoCo v3")
        x1, x2 = views[0], views[1]
        q1 = self.predictor(self.projector(self.student_encoder(x1)))
        q2 = self.predictor(self.projector(self.student_encoder(x2)))
        with torch.no_grad():
            k1 = self.momentum_projector(self.momentum_encoder(x1))
            k2 = self.momentum_projector(self.momentum_encoder(x2))
        loss = contrastive_loss(q1, k2, self.temperature) + contrastive_loss(q2, k1, self.temperature)
        return loss, {"loss": loss.detach(), "momentum": self.momentum}
