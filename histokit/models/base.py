"""The one contract every backbone in the kit meets, so SSL methods, extraction and plots never special-case a model.

An :class:`Encoder` wraps a network and applies the pooling its paper prescribes:

* ``forward(x)`` -> ``(B, D)`` global embedding, *not* L2-normalised (retrieval normalises).
* ``forward_tokens(x, mask=None)`` -> :class:`TokenOutput` with the class token(s), the patch/region tokens and the
  pooled embedding. ``mask`` (``(B, N)`` bool, True = masked) replaces the masked patch embeddings with a learned
  mask token before the transformer blocks (iBOT); encoders that cannot mask raise ``NotImplementedError``.

Pooling per paper: EsViT (Habijan et al.) = mean of the final patch tokens; DINO ViT (Chen & Krishnan) = last-layer
[CLS]; CypherViT (Ye et al.) = mean of the final [cls] tokens; CNNs = global average pooling.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn


@dataclass
class TokenOutput:
    pooled: torch.Tensor                     # (B, D) the paper's global embedding
    patch_tokens: Optional[torch.Tensor]     # (B, N, D) final patch / region tokens (None for a CNN)
    cls_tokens: Optional[torch.Tensor]       # (B, G, D) final class token(s) (None where the model has none)
    grid_size: Optional[tuple[int, int]] = None  # (h, w) of the patch-token grid, for attention maps


class Encoder(nn.Module):
    """Base class; subclasses set ``embed_dim`` and implement ``forward_tokens``."""

    embed_dim: int
    patch_size: Optional[int] = None

    def forward_tokens(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> TokenOutput:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(x).pooled
