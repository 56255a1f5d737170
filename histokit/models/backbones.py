"""Backbone factory: timm models wrapped as :class:`~histokit.models.base.Encoder` with each paper's pooling.

Names follow timm's (``vit_small_patch16_224``, ``swin_tiny_patch4_window7_224``, ``resnet50``, ``densenet121``,
``convnextv2_base``); the kit adds tiny registered test variants (``*_test``) with the same code path and fewer
layers, so CI stays cheap (the timm convention), and smoke-profile variants (``vit_smoke``, ``swin_smoke``) that
the smoke recipes train. ``create_encoder(name, pooling=...)`` returns an Encoder; CypherViT
registers itself here too (``histokit.models.cyphervit``), and so does ``resnet50_trunc``, Chen & Krishnan's ImageNet
baseline (a ResNet-50 cut after its third stage, 1,024-d).
"""
from __future__ import annotations

import inspect
import math
from typing import Callable, Optional

import timm
import torch
from torch import nn

from .base import Encoder, TokenOutput

# name -> (timm name, extra timm kwargs). Test variants keep the family's code path with fewer/smaller layers.
TEST_VARIANTS: dict[str, tuple[str, dict]] = {
    "vit_test": ("vit_small_patch16_224", dict(depth=2, embed_dim=64, num_heads=4)),
    "swin_test": ("swin_tiny_patch4_window7_224", dict(depths=(1, 1, 1, 1), embed_dim=24, num_heads=(1, 2, 2, 4))),
    "resnet_test": ("resnet18", dict(layers=(1, 1, 1, 1))),
    "densenet_test": ("densenet121", dict(growth_rate=8, block_config=(1, 1, 1, 1))),
}

# Smoke-profile variants (timm style: the paper model's code path at a smaller width and depth), so the smoke
# profile trains in minutes on a laptop CPU; every smoke table footnote names the variant it used.
SMOKE_VARIANTS: dict[str, tuple[str, dict]] = {
    "vit_smoke": ("vit_small_patch16_224", dict(depth=6, embed_dim=192, num_heads=3)),
    "swin_smoke": ("swin_tiny_patch4_window7_224", dict(depths=(2, 2, 2, 2), embed_dim=48, num_heads=(2, 4, 8, 16))),
}

_CUSTOM: dict[str, Callable[..., Encoder]] = {}


def register_encoder(name: str):
    """Decorator registering a non-timm encoder constructor (e.g. CypherViT) under ``name``."""

    def wrap(fn: Callable[..., Encoder]) -> Callable[..., Encoder]:
        _CUSTOM[name] = fn
        return fn

    return wrap


def list_encoders() -> list[str]:
    return sorted(set(_CUSTOM) | set(TEST_VARIANTS) | set(SMOKE_VARIANTS))


POS_INTERPOLATIONS = ("timm", "dino")


class ViTEncoder(Encoder):
    """timm VisionTransformer; pooling ``cls`` (DINO, Chen & Krishnan) or ``avg_patch``. Supports iBOT masking.

    Inputs of another size than the position embedding's grid get resized position embeddings: ``pos_interpolation``
    ``"timm"`` (default: timm's ``resample_abs_pos_embed``, bicubic with antialiasing to the exact grid) or ``"dino"``
    (DINO's ``VisionTransformer.interpolate_pos_encoding``, as in Chen & Krishnan's ``nn_encoder_arch``: bicubic
    ``F.interpolate`` with ``scale_factor = (grid + 0.1) / sqrt(N)``, no antialiasing — e.g. 512 px BreastPathQ tiles
    on a 224 px model). At the native grid both are the plain position embedding."""

    def __init__(self, model: nn.Module, pooling: str = "cls", pos_interpolation: str = "timm"):
        super().__init__()
        if pooling not in ("cls", "avg_patch"):
            raise ValueError(f"ViT pooling must be 'cls' or 'avg_patch', got pooling={pooling!r}")
        if pos_interpolation not in POS_INTERPOLATIONS:
            raise ValueError(f"pos_interpolation must be one of {POS_INTERPOLATIONS}, got {pos_interpolation!r}")
        if pos_interpolation == "dino" and (getattr(model, "no_embed_class", False) or model.num_prefix_tokens != 1
                                            or model.cls_token is None):
            raise ValueError("pos_interpolation='dino' needs DINO's layout: one [CLS] token with its own position "
                             "embedding and no register tokens")
        self.model = model
        self.pooling = pooling
        self.pos_interpolation = pos_interpolation
        self.embed_dim = model.embed_dim
        self.patch_size = model.patch_embed.patch_size[0]
        self.num_prefix_tokens = model.num_prefix_tokens
        # iBOT's learned [MASK] embedding, substituted for masked patch embeddings before the blocks.
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward_tokens(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> TokenOutput:
        m = self.model
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        tokens = m.patch_embed(x)
        if tokens.ndim == 4:  # dynamic_img_size keeps NHWC
            tokens = tokens.flatten(1, 2)
        if mask is not None:
            if mask.shape != tokens.shape[:2]:
                raise ValueError(f"mask must be (B, N)={tuple(tokens.shape[:2])}, got {tuple(mask.shape)}")
            tokens = torch.where(mask.unsqueeze(-1), self.mask_token.to(tokens.dtype).expand_as(tokens), tokens)
        if self.pos_interpolation == "dino":
            tokens = self._dino_pos_embed(tokens, grid)
        else:
            tokens = tokens.reshape(x.shape[0], grid[0], grid[1], -1) if m.dynamic_img_size else tokens
            tokens = m._pos_embed(tokens)
        tokens = m.patch_drop(tokens)
        tokens = m.norm_pre(tokens)
        tokens = m.blocks(tokens)
        tokens = m.norm(tokens)
        cls = tokens[:, :1]
        patches = tokens[:, self.num_prefix_tokens:]
        pooled = cls[:, 0] if self.pooling == "cls" else patches.mean(1)
        return TokenOutput(pooled=pooled, patch_tokens=patches, cls_tokens=cls, grid_size=grid)

    def dino_position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """(1, 1 + h * w, D): DINO's ``interpolate_pos_encoding`` of the position embedding for a ``grid`` of patches."""
        pos = self.model.pos_embed
        side = int(math.sqrt(pos.shape[1] - 1))
        if tuple(grid) == (side, side):
            return pos
        patch = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patch = nn.functional.interpolate(patch, scale_factor=((grid[0] + 0.1) / side, (grid[1] + 0.1) / side),
                                          mode="bicubic")
        if tuple(patch.shape[-2:]) != tuple(grid):
            raise ValueError(f"DINO position interpolation gave a {tuple(patch.shape[-2:])} grid, expected {grid}")
        return torch.cat([pos[:, :1], patch.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])], dim=1)

    def _dino_pos_embed(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        m = self.model
        tokens = torch.cat([m.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return m.pos_drop(tokens + self.dino_position_embedding(grid).to(tokens.dtype))

    def last_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Last block's attention of [CLS] to the patches, per head: (B, heads, h, w) — DINO's attention maps."""
        m = self.model
        captured = {}
        attn = m.blocks[-1].attn

        def hook(module, inputs, output):
            (inp,) = inputs
            B, N, C = inp.shape
            qkv = module.qkv(inp).reshape(B, N, 3, module.num_heads, C // module.num_heads).permute(2, 0, 3, 1, 4)
            q, k = module.q_norm(qkv[0]), module.k_norm(qkv[1])
            captured["a"] = ((q * module.scale) @ k.transpose(-2, -1)).softmax(-1)

        handle = attn.register_forward_hook(hook)
        try:
            out = self.forward_tokens(x)
        finally:
            handle.remove()
        h, w = out.grid_size
        return captured["a"][:, :, 0, self.num_prefix_tokens:].reshape(x.shape[0], -1, h, w)


class SwinEncoder(Encoder):
    """timm Swin Transformer (EsViT's backbone). Pooling ``avg_patch``: mean of the final-stage tokens, as in
    Habijan et al. (average pooling of the final patch tokens, then L2 normalization in retrieval)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.embed_dim = model.num_features
        self.patch_size = 32  # final-stage stride

    def forward_tokens(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> TokenOutput:
        if mask is not None:
            raise NotImplementedError("Swin encoder does not support token masking")
        feats = self.model.forward_features(x)  # (B, h, w, C), already layer-normed
        B, h, w, C = feats.shape
        patches = feats.reshape(B, h * w, C)
        return TokenOutput(pooled=patches.mean(1), patch_tokens=patches, cls_tokens=None, grid_size=(h, w))


class CNNEncoder(Encoder):
    """timm CNN with global average pooling (ResNet-50, DenseNet-121 baselines); final feature map as 'patches'."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.embed_dim = model.num_features

    def forward_tokens(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> TokenOutput:
        if mask is not None:
            raise NotImplementedError("CNN encoder does not support token masking")
        fmap = self.model.forward_features(x)  # (B, C, h, w)
        B, C, h, w = fmap.shape
        patches = fmap.flatten(2).transpose(1, 2)
        return TokenOutput(pooled=patches.mean(1), patch_tokens=patches, cls_tokens=None, grid_size=(h, w))


class TruncatedResNetEncoder(CNNEncoder):
    """A ResNet up to its third stage (``layer3``), global average pooling: Chen & Krishnan's
    ``resnet50_trunc_baseline`` (``Richarizardd/Self-Supervised-ViT-Path``, ``nn_encoder_arch/resnet_trunc.py``:
    conv1 - bn1 - relu - maxpool - layer1 - layer2 - layer3 - AdaptiveAvgPool2d(1), no layer4, no fc), 1,024-d for a
    ResNet-50. ``layer4`` is removed from the timm model, so its weights are neither kept nor expected."""

    def __init__(self, model: nn.Module):
        model.layer4 = nn.Identity()
        super().__init__(model)
        self.embed_dim = model.num_features = next(f["num_chs"] for f in model.feature_info if f["module"] == "layer3")

    def forward_tokens(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> TokenOutput:
        if mask is not None:
            raise NotImplementedError("CNN encoder does not support token masking")
        m = self.model
        fmap = m.maxpool(m.act1(m.bn1(m.conv1(x))))
        fmap = m.layer3(m.layer2(m.layer1(fmap)))      # (B, 1024, h, w): stride 16
        B, C, h, w = fmap.shape
        patches = fmap.flatten(2).transpose(1, 2)
        return TokenOutput(pooled=patches.mean(1), patch_tokens=patches, cls_tokens=None, grid_size=(h, w))


# The reference loads torchvision's ImageNet ResNet-50 (model_zoo URL resnet50-19c8e357.pth, the pre-0.13 name of
# torchvision's V1 weights) non-strictly into the truncated network; timm's ``resnet50.tv_in1k`` is torchvision's
# V1 file (resnet50-0676ba61.pth) on the Hugging Face hub, fetched by timm (safetensors) like every hub weight here.
RESNET50_TRUNC_WEIGHTS = "resnet50.tv_in1k"
# kit encoders built on another timm model's hub weights: encoder name -> the timm name those weights are under
HUB_WEIGHTS: dict[str, str] = {"resnet50_trunc": RESNET50_TRUNC_WEIGHTS}


def hub_weights_name(name: str) -> str:
    """The timm model name whose hub weights ``create_encoder(name, pretrained=True)`` loads (``name`` itself for a
    timm model), e.g. to look them up in the Hugging Face cache or to fetch them ahead of an offline run."""
    return HUB_WEIGHTS.get(name, name)


@register_encoder("resnet50_trunc")
def resnet50_trunc(img_size: int = 224, pretrained: bool = False, **kwargs) -> Encoder:
    """Chen & Krishnan's ImageNet baseline: torchvision-layout ResNet-50 truncated after ``layer3`` (1,024-d).
    ``pretrained`` asks timm for torchvision's ImageNet weights (:data:`RESNET50_TRUNC_WEIGHTS`); ``img_size`` is
    accepted for the factory's signature (a CNN takes any size)."""
    model = timm.create_model(RESNET50_TRUNC_WEIGHTS, pretrained=pretrained, num_classes=0, **kwargs)
    return TruncatedResNetEncoder(model)


def create_encoder(name: str, *, pretrained: bool = False, img_size: int = 224, pooling: Optional[str] = None,
                   **kwargs) -> Encoder:
    """Build an Encoder by name.

    ``pretrained=True`` asks timm for its hub weights (ImageNet / FCMAE); it needs network or a populated cache.
    ``pooling`` applies to ViTs only ('cls' default, 'avg_patch'), and so does the keyword ``pos_interpolation``
    ('timm' default, 'dino': see :class:`ViTEncoder`).
    """
    if name in _CUSTOM:
        build = _CUSTOM[name]
        if "pretrained" in inspect.signature(build).parameters:
            return build(img_size=img_size, pretrained=pretrained, **kwargs)
        if pretrained:  # never hand back an untrained model when weights were asked for
            raise ValueError(f"encoder {name!r} has no hub weights; train it with the kit or load a checkpoint")
        return build(img_size=img_size, **kwargs)
    timm_name, extra = {**TEST_VARIANTS, **SMOKE_VARIANTS}.get(name, (name, {}))
    if pretrained and (name in TEST_VARIANTS or name in SMOKE_VARIANTS):
        raise ValueError(f"encoder {name!r} is a smaller variant of {timm_name}: it has no hub weights")
    if timm_name not in timm.list_models() and timm_name.split(".")[0] not in timm.list_models():
        raise ValueError(f"unknown encoder {name!r}; known: kit {list_encoders()} or any timm model name")
    family = timm_name.split("_")[0]
    model_kwargs = dict(extra, **kwargs)
    if family in ("vit", "deit"):
        pos_interpolation = model_kwargs.pop("pos_interpolation", "timm")
        model = timm.create_model(timm_name, pretrained=pretrained, num_classes=0, img_size=img_size,
                                  dynamic_img_size=True, **model_kwargs)
        return ViTEncoder(model, pooling=pooling or "cls", pos_interpolation=pos_interpolation)
    if family == "swin":
        # strict_img_size=False: multi-crop feeds local views smaller than img_size through the same Swin.
        model = timm.create_model(timm_name, pretrained=pretrained, num_classes=0, img_size=img_size,
                                  strict_img_size=False, **model_kwargs)
        return SwinEncoder(model)
    model = timm.create_model(timm_name, pretrained=pretrained, num_classes=0, **model_kwargs)
    return CNNEncoder(model)
