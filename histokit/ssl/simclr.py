"""SimCLR (Chen et al., ICML 2020, "A Simple Framework for Contrastive Learning of Visual Representations";
reference code google-research/simclr). Habijan et al. (2025) and Ye et al. (2024) use it as a baseline.

Two views of each of N images give 2N projections z = g(f(x)); with sim(u, v) = u^T v / (|u||v|) the NT-Xent loss
(paper Eq. 1) for a positive pair (i, j) is

    l(i, j) = -log  exp(sim(z_i, z_j) / tau) / sum_{k != i} exp(sim(z_i, z_k) / tau)

averaged over all 2N ordered positive pairs. g is the paper's projection head: one hidden layer with ReLU
(Linear(D, D) -> ReLU -> Linear(D, 128)); the representation f(x) before g is what is evaluated.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from histokit.models.base import Encoder

from .base import SSLMethod, check_views, full_precision


@full_precision()  # else autocast turns the .float() matmul below back into bf16
def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent over the 2N projections of one batch (paper Eq. 1): cross-entropy of each row's cosine similarities
    over the 2N - 1 others, the positive being the other view of the same image."""
    if temperature <= 0:
        raise ValueError(f"NT-Xent temperature must be > 0, got temperature={temperature}")
    if z1.shape != z2.shape:
        raise ValueError(f"NT-Xent needs two views of the same batch, got shapes {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.t() / temperature
    logits.fill_diagonal_(float("-inf"))  # k != i
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


class ProjectionHead(nn.Sequential):
    """SimCLR's g(.): Linear(D, hidden) -> ReLU -> Linear(hidden, out) with hidden = D, out = 128 in the paper."""

    def __init__(self, in_dim: int, hidden_dim: int | None = None, out_dim: int = 128):
        hidden_dim = hidden_dim or in_dim
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


class SimCLR(SSLMethod):
    """SimCLR around any :class:`Encoder`; ``temperature`` 0.5 (paper default for batch 256-4096) or 0.1.
    Under torchrun the negatives are the other images on the same rank (no cross-replica gather)."""

    def __init__(self, encoder: Encoder, *, temperature: float = 0.5, proj_hidden_dim: int | None = None,
                 proj_out_dim: int = 128):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"SimCLR temperature must be > 0, got temperature={temperature}")
        self.student_encoder = encoder
        self._train_mask_token_only_if_used()
        self.projection_head = ProjectionHead(encoder.embed_dim, proj_hidden_dim, proj_out_dim)
        self.temperature = temperature

    def forward(self, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        check_views(views, min_views=2, method="SimCLR")
        z = self.projection_head(self.student_encoder(torch.cat([views[0], views[1]])))
        z1, z2 = z.chunk(2)
        loss = nt_xent_loss(z1, z2, self.temperature)
        return loss, {"loss": loss.detach()}
