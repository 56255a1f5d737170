"""Name -> SSL method, and which views each method's loader must produce (timm-style registry).

``create_method("dino", encoder, out_dim=4096)`` builds the method; ``views_for("dino")`` says what the data side
must yield per image: ``n_global`` global crops of ``global_size`` px (scale range ``global_scale``) followed by
``n_local`` local crops of ``local_size`` px, augmented with the ``augmentation`` family the paper used.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import Callable

from histokit.models.base import Encoder

from .base import SSLMethod
from .dino import DINO
from .esvit import EsViT
from .ibot import iBOT
from .mae import MAE
from .moco import MoCoV3
from .simclr import SimCLR

METHODS: dict[str, Callable[..., SSLMethod]] = {
    "dino": DINO,
    "esvit": EsViT,
    "ibot": iBOT,
    "moco": MoCoV3,
    "simclr": SimCLR,
    "mae": MAE,
}


@dataclass(frozen=True)
class ViewSpec:
    """The views one image becomes for a method (defaults = each paper's ImageNet recipe at 224 px)."""

    n_global: int
    n_local: int
    global_size: int = 224
    local_size: int = 96
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    augmentation: str = "dino"  # dino | simclr | moco_v3 | mae: the paper's colour / blur / solarize recipe

    @property
    def n_views(self) -> int:
        return self.n_global + self.n_local

    @property
    def kind(self) -> str:
        """'multicrop' (globals + locals), 'two_views' or 'one_view': which transform the data side builds."""
        if self.n_local > 0:
            return "multicrop"
        return {1: "one_view", 2: "two_views"}.get(self.n_global, "multicrop")


_VIEWS: dict[str, ViewSpec] = {
    # DINO main_dino.py: 2 x 224 (0.4-1) + 8 x 96 (0.05-0.4); EsViT main_esvit.py: same defaults.
    "dino": ViewSpec(2, 8),
    "esvit": ViewSpec(2, 8),
    # iBOT main_ibot.py ViT-S/16: global scale 0.14-1, 10 local crops.
    "ibot": ViewSpec(2, 10, global_scale=(0.14, 1.0)),
    # MoCo v3 / SimCLR: two 224 px views, RandomResizedCrop scale 0.08-1.
    "moco": ViewSpec(2, 0, global_scale=(0.08, 1.0), augmentation="moco_v3"),
    "simclr": ViewSpec(2, 0, global_scale=(0.08, 1.0), augmentation="simclr"),
    # MAE main_pretrain.py: one view, RandomResizedCrop scale 0.2-1 + flip.
    "mae": ViewSpec(1, 0, global_scale=(0.2, 1.0), augmentation="mae"),
}


def list_methods() -> list[str]:
    return sorted(METHODS)


def _check_name(name: str) -> str:
    key = name.lower()
    if key not in METHODS:
        raise ValueError(f"unknown SSL method {name!r}; known: {list_methods()}")
    return key


def create_method(name: str, encoder: Encoder, **cfg) -> SSLMethod:
    """Build SSL method ``name`` around ``encoder``; ``cfg`` are the method's keyword arguments (paper defaults)."""
    key = _check_name(name)
    accepted = set(inspect.signature(METHODS[key]).parameters) - {"encoder"}
    unknown = set(cfg) - accepted
    if unknown:
        raise ValueError(f"unknown config key(s) {sorted(unknown)} for SSL method {key!r}; "
                         f"accepted: {sorted(accepted)}")
    return METHODS[key](encoder, **cfg)


def views_for(name: str, **overrides) -> ViewSpec:
    """The :class:`ViewSpec` of method ``name``, with fields replaced by ``overrides`` (e.g. ``n_local=6``)."""
    spec = _VIEWS[_check_name(name)]
    unknown = set(overrides) - set(spec.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown ViewSpec field(s) {sorted(unknown)} for method {name!r}")
    return replace(spec, **overrides)
