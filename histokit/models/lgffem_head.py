"""GeM embedding head of LGFFEM — Nuñez-Fernández et al., Sensors 2025, Sec. 3.4, Eq. (7) and Fig. 2c.

One mini-head per outer node P_i (i = 1_2, 2_2, 3_2, 4_2): ``f_i = FC(L2(FC(GeM(P_i))))`` with C_in outputs; the
descriptor ``f_e`` stacks the four into 4·C_in (= 2048 for C_in = 512). Between GeM and the first FC the public code
(camilo-nunez/ffnir ``model/lgffem.py``) adds BatchNorm1d and Dropout(0.6); we keep them (the paper's Fig. 2c
bottleneck is not spelled out in the text) so released weights map one-to-one.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class GeM(nn.Module):
    """Generalized-mean pooling (Radenović, Tolias & Chum, TPAMI 2019): ``(mean_hw clamp(x, eps)^p)^(1/p)``.

    p = 1 is average pooling, p -> ∞ approaches max pooling; p is learnable (paper: p = 4.6, eps = 1e-6).
    timm has no GeM layer, hence this one.
    """

    def __init__(self, p: float = 4.6, eps: float = 1e-6, learnable: bool = True):
        super().__init__()
        if p <= 0:
            raise ValueError(f"GeM power p must be > 0, got p={p}")
        self.p = nn.Parameter(torch.tensor([float(p)]), requires_grad=learnable)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"GeM expects a (B, C, H, W) feature map, got shape {tuple(x.shape)}")
        p = self.p
        return F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(p), 1).pow(1.0 / p).flatten(1)


class GeMMiniHead(nn.Module):
    """Eq. (7): GeM -> BatchNorm1d -> Dropout -> FC -> L2 -> FC (C_in -> C_in)."""

    def __init__(self, channels: int, p: float = 4.6, eps: float = 1e-6, dropout: float = 0.6):
        super().__init__()
        self.gem = GeM(p, eps)
        self.bn = nn.BatchNorm1d(channels)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, channels)
        self.fc_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc(self.dropout(self.bn(self.gem(x))))
        return self.fc_out(F.normalize(z, p=2, dim=-1))


class GeMHead(nn.Module):
    """Four mini-heads, one per outer node, concatenated into the 4·C_in image descriptor f_e."""

    def __init__(self, channels: int, num_nodes: int = 4, p: float = 4.6, eps: float = 1e-6, dropout: float = 0.6):
        super().__init__()
        self.heads = nn.ModuleList([GeMMiniHead(channels, p, eps, dropout) for _ in range(num_nodes)])
        self.out_dim = channels * num_nodes

    def forward(self, nodes: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(nodes) != len(self.heads):
            raise ValueError(f"GeM head expects {len(self.heads)} node maps, got {len(nodes)}")
        return torch.cat([head(x) for head, x in zip(self.heads, nodes)], dim=1)
