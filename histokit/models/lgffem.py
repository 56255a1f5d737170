"""LGFFEM: Local-Global Feature Fusion Embedding Model — Nuñez-Fernández, Farias & Solar, Sensors 2025 (Fig. 1).

Frozen multi-scale ConvNeXt V2 backbone (timm ``features_only``, stages 0-3) -> LGFFN neck
(:mod:`histokit.models.lgffem_neck`, 3 layers at C_in = 512) -> GeM head (:mod:`histokit.models.lgffem_head`) on the
last layer's outer nodes -> 4·C_in = 2048-d descriptor (not L2-normalised; retrieval uses FAISS L2 on it, as the
paper does). Trained with Sub-center ArcFace (:mod:`histokit.models.lgffem_train`).

Registered encoders (``histokit.models.backbones.create_encoder``):

* ``lgffem_base`` — the paper's model: ``convnextv2_base.fcmae`` (stage widths 128/256/512/1024), 3 layers, C_in 512.
* ``lgffem_test`` — same code path on ``convnextv2_atto`` with 2 narrow neck layers (C_in 32 -> 128-d), for CI.
"""
from __future__ import annotations

from typing import Optional

import timm
import torch

from .backbones import register_encoder
from .base import Encoder, TokenOutput
from .lgffem_head import GeMHead
from .lgffem_neck import LGFFN, OUTER_NODES, FastNormalizedFusion

PAPER_BACKBONE = "convnextv2_base.fcmae"


class LGFFEM(Encoder):
    """Backbone (frozen, kept in eval mode) + LGFFN neck + GeM head; ``forward(x) -> (B, 4·channels)``.

    Args:
        backbone_name: timm model name with a 4-stage ``features_only`` pyramid (paper: ``convnextv2_base.fcmae``).
        pretrained: load timm hub weights for the backbone (needs network or a cache; False in tests).
        channels: neck width C_in (paper: 512). num_layers: LGFFN layers (paper: 3).
        hidden_ratio: aggregator hidden width / C_in (see :mod:`histokit.models.lgffem_neck`, note 3).
        gem_p, gem_eps, dropout: GeM head settings (paper: p = 4.6, eps = 1e-6; code: dropout 0.6).
    """

    def __init__(self, backbone_name: str = PAPER_BACKBONE, *, pretrained: bool = False, channels: int = 512,
                 num_layers: int = 3, hidden_ratio: float = 0.5, fusion_eps: float = 1e-4, gem_p: float = 4.6,
                 gem_eps: float = 1e-6, dropout: float = 0.6, **backbone_kwargs):
        super().__init__()
        try:
            self.backbone = timm.create_model(backbone_name, pretrained=pretrained, features_only=True,
                                              out_indices=(0, 1, 2, 3), **backbone_kwargs)
        except RuntimeError as err:  # timm raises RuntimeError for unknown names
            raise ValueError(f"LGFFEM backbone_name={backbone_name!r} is not a timm model: {err}") from err
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        stage_channels = self.backbone.feature_info.channels()
        reductions = self.backbone.feature_info.reduction()
        if any(b != 2 * a for a, b in zip(reductions, reductions[1:])):
            raise ValueError(f"LGFFEM needs a backbone whose stages halve the resolution, {backbone_name!r} has "
                             f"reductions {reductions}")
        self.stride = reductions[-1]
        self.neck = LGFFN(stage_channels, channels, num_layers, hidden_ratio=hidden_ratio, fusion_eps=fusion_eps)
        self.head = GeMHead(channels, len(OUTER_NODES), gem_p, gem_eps, dropout)
        self.embed_dim = self.head.out_dim

    def train(self, mode: bool = True) -> "LGFFEM":
        """Train neck and head; the frozen backbone always stays in eval mode (no dropout/stat updates)."""
        super().train(mode)
        self.backbone.eval()
        return self

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"LGFFEM expects images (B, 3, H, W), got shape {tuple(x.shape)}")
        if x.shape[-2] % self.stride or x.shape[-1] % self.stride:
            raise ValueError(f"LGFFEM image height and width must be multiples of {self.stride} (the neck fuses "
                             f"stages that halve exactly), got {tuple(x.shape[-2:])}")

    def backbone_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._check_input(x)
        with torch.no_grad():  # frozen: no graph through the backbone
            return list(self.backbone(x))

    def neck_outputs(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Outer nodes of every neck layer: ``[{"P1_2": (B,C,H1,W1), ..., "P4_2": ...} per layer]``."""
        feats = self.backbone_features(x)
        outputs = []
        for layer in self.neck.layers:
            feats = layer(feats)
            outputs.append(dict(zip(OUTER_NODES, feats)))
        return outputs

    def outer_node_modules(self) -> list[dict[str, FastNormalizedFusion]]:
        """Per neck layer, the fusion modules producing P1_2..P4_2 (hook targets for Grad-CAM++, Figs. 4-6)."""
        return [layer.outer_nodes() for layer in self.neck.layers]

    def forward_tokens(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> TokenOutput:
        if mask is not None:
            raise NotImplementedError("LGFFEM does not support token masking")
        nodes = self.neck(self.backbone_features(x))
        return TokenOutput(pooled=self.head(nodes), patch_tokens=None, cls_tokens=None)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Neck + head weights only (the backbone is frozen and reloadable from timm), as the ffnir checkpoints."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load :meth:`trainable_state_dict` output; any missing/unexpected neck or head key is an error."""
        result = self.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("backbone.")]
        if missing or result.unexpected_keys:
            raise ValueError(f"LGFFEM state dict mismatch: missing {missing[:5]}, unexpected "
                             f"{result.unexpected_keys[:5]}")


@register_encoder("lgffem_base")
def lgffem_base(img_size: int = 224, pretrained: bool = False, **kwargs) -> LGFFEM:
    """The paper's configuration: ConvNeXt V2-Base (FCMAE) backbone, 3 LGFFN layers at 512, 2048-d descriptor."""
    return LGFFEM(PAPER_BACKBONE, pretrained=pretrained, **kwargs)


@register_encoder("lgffem_test")
def lgffem_test(img_size: int = 64, pretrained: bool = False, **kwargs) -> LGFFEM:
    """Tiny CI variant: ConvNeXt V2-Atto backbone, 2 LGFFN layers at 32 channels (128-d); same code path."""
    cfg = dict(channels=32, num_layers=2)
    cfg.update(kwargs)
    return LGFFEM("convnextv2_atto", pretrained=pretrained, **cfg)


@register_encoder("lgffem_atto")
def lgffem_atto(img_size: int = 224, pretrained: bool = False, **kwargs) -> LGFFEM:
    """Smoke-profile LGFFEM: the paper's neck and head (3 LGFFN layers at 512, 4 GeM heads, 2048-d) on the smallest
    ConvNeXt V2 (Atto, FCMAE weights in timm); only the frozen backbone is smaller."""
    return LGFFEM("convnextv2_atto.fcmae", pretrained=pretrained, **kwargs)
