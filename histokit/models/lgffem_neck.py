"""Local-Global Feature Fusion Neck (LGFFN) of LGFFEM — Nuñez-Fernández, Farias & Solar, Sensors 2025, Sec. 3.3.

The neck is the paper's own contribution, so it is written here (small, one block per class) and checked in
``tests/models/test_lgffem_neck.py`` against the equations evaluated by hand on tiny tensors.

Paper -> code map (equation numbers of the Sensors article):

* Eq. (2)  G(X) = PW(GRN(δ(PW(DW3x3(X)))))                    -> :class:`GlobalAggregator` (gate branch)
* Eq. (3)  GA(X) = α·X ⊕ (1-α)·X ⊙ σ(G(X))                     -> :class:`GlobalAggregator`
* Eq. (4)  L(X) = PW(δ(PW(X)))                                 -> :class:`LocalAggregator` (gate branch)
* Eq. (5)  LA(X) = α·X ⊕ (1-α)·X ⊙ σ(L(X))                     -> :class:`LocalAggregator`
* Eq. (6)  P3_1, P2_1, P1_2, P2_2, P3_2, P4_2, each a fast normalized fusion Σ w_j·Branch_j / (Σ w_j + ε)
                                                               -> :class:`FastNormalizedFusion`, :class:`LGFFNLayer`

Where the paper is silent, the public code (github.com/camilo-nunez/ffnir, ``model/neck.py``) decides, and where the
two disagree the paper wins; every such point is listed here so a reader knows what a number was produced with:

1. ``δ`` is GELU and a channels-first LayerNorm sits after the depthwise conv of G (ConvNeXt-block order) and at the
   input of L, as in the code; Eq. (2)/(4) do not write a normalization.
2. GRN is ConvNeXt V2's Global Response Normalization (timm ``GlobalResponseNorm``, NCHW). The ffnir code ports the
   channels-last GRN to NCHW but keeps ``mean(dim=-1)``, which then averages over a size-1 axis, so its N(x) ≈ 1 and
   its "GRN" degenerates to ``(1+γ)x + β``. We implement the GRN the paper cites.
3. Hidden width of the two point-wise convs: the paper derives them from squeeze-and-excitation's W1 ∈ R^{C/r×C},
   W2 ∈ R^{C×C/r}, r ∈ {2, 4} (a *reduction*); the code *expands* instead (C·2 for LA, C·2 or C·4 for GA across
   its history). ``hidden_ratio`` exposes it; the default 0.5 (r = 2) follows the paper's text. Trainable parameters
   for the full model (C_in = 512, 3 layers, ConvNeXt V2-Base stages, GeM head): 1.81e7 at 0.5, 5.12e7 at the
   code's 2.0; the paper reports 1.45e7, which no setting of either reproduces exactly (the reduction reading is the
   closer one).
4. α is a trainable scalar per aggregator initialised at 0 (code; the paper gives no initial value), so at
   initialisation every aggregator is the pure gate X ⊙ σ(·).
5. Eq. (6)'s fast normalized fusion (w = ReLU(w), ε = 1e-4, as in BiFPN, Tan et al. 2020) is implemented; the stored
   versions of the ffnir code sum the branches with no weights.
6. ``Resize`` (unspecified in the paper) follows the code: up = channels-first LayerNorm then a depthwise 2x2
   transposed conv with stride 2; down = depthwise 3x3 conv with stride 2 then LayerNorm. Both are learnable, act
   before the aggregator (Eq. 6 applies LA/GA to Resize(·)), and need feature maps that halve exactly between
   stages, so input sides must be multiples of 32 for a stride-32 backbone.
7. The lateral projection of the backbone stages onto C_in channels ("lateral output", not detailed in the paper) is
   the code's ``DownsampleInput``: PW(C -> 2C, no bias) -> LayerNorm -> GELU -> PW(2C -> C_in). Only the first neck
   layer has it; later layers take the previous layer's outer nodes P1_2..P4_2 as their P1_0..P4_0.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from timm.layers import LayerNorm2d
from timm.layers.grn import GlobalResponseNorm
from torch import nn

OUTER_NODES = ("P1_2", "P2_2", "P3_2", "P4_2")
INNER_NODES = ("P3_1", "P2_1")


def _hidden(channels: int, ratio: float) -> int:
    hidden = int(round(channels * ratio))
    if hidden < 1:
        raise ValueError(f"hidden_ratio={ratio} gives no hidden channels for channels={channels}")
    return hidden


class _GatedAggregator(nn.Module):
    """Shared Eq. (3)/(5) gate: ``α·X + (1-α)·X ⊙ σ(gate(X))`` with trainable α (initialised at 0)."""

    gate: nn.Module

    def __init__(self) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * x + (1.0 - self.alpha) * x * torch.sigmoid(self.gate(x))


class GlobalAggregator(_GatedAggregator):
    """Global Feature Aggregator, Eq. (2)-(3): G(X) = PW(GRN(GELU(PW(LN(DW3x3(X)))))), GA = α·X ⊕ (1-α)·X ⊙ σ(G(X)).

    GRN (ConvNeXt V2) plays the role of SE's global squeeze g(X): it compares each channel's spatial L2 energy with
    the channel mean, which is what makes this aggregator "global".
    """

    def __init__(self, channels: int, hidden_ratio: float = 0.5):
        super().__init__()
        hidden = _hidden(channels, hidden_ratio)
        self.gate = nn.Sequential(OrderedDict(
            dwconv=nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
            norm=LayerNorm2d(channels),
            pwconv1=nn.Conv2d(channels, hidden, 1),
            act=nn.GELU(),
            grn=GlobalResponseNorm(hidden, channels_last=False),
            pwconv2=nn.Conv2d(hidden, channels, 1),
        ))


class LocalAggregator(_GatedAggregator):
    """Local Feature Aggregator, Eq. (4)-(5): L(X) = PW(GELU(PW(LN(X)))), LA = α·X ⊕ (1-α)·X ⊙ σ(L(X)).

    Point-wise only: each position is gated by its own channel vector (no spatial or global context).
    """

    def __init__(self, channels: int, hidden_ratio: float = 0.5):
        super().__init__()
        hidden = _hidden(channels, hidden_ratio)
        self.gate = nn.Sequential(OrderedDict(
            norm=LayerNorm2d(channels),
            pwconv1=nn.Conv2d(channels, hidden, 1),
            act=nn.GELU(),
            pwconv2=nn.Conv2d(hidden, channels, 1),
        ))


class Upsample2x(nn.Sequential):
    """Resize up one pyramid level (x2): LayerNorm -> depthwise 2x2 transposed conv, stride 2 (ffnir code)."""

    def __init__(self, channels: int):
        super().__init__(OrderedDict(
            norm=LayerNorm2d(channels),
            conv=nn.ConvTranspose2d(channels, channels, 2, stride=2, groups=channels),
        ))


class Downsample2x(nn.Sequential):
    """Resize down one pyramid level (/2): depthwise 3x3 conv, stride 2 -> LayerNorm (ffnir code)."""

    def __init__(self, channels: int):
        super().__init__(OrderedDict(
            conv=nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels, bias=False),
            norm=LayerNorm2d(channels),
        ))


class LateralProjection(nn.Sequential):
    """Backbone stage -> P*_0 with ``out_channels`` channels: PW(C->2C) -> LN -> GELU -> PW(2C->out) (ffnir code)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(OrderedDict(
            pwconv1=nn.Conv2d(in_channels, 2 * in_channels, 1, bias=False),
            norm=LayerNorm2d(2 * in_channels),
            act=nn.GELU(),
            pwconv2=nn.Conv2d(2 * in_channels, out_channels, 1),
        ))


class FastNormalizedFusion(nn.Module):
    """One fusion node of Eq. (6): ``Σ_j w_j·x_j / (Σ_j w_j + ε)`` with ``w = ReLU(w_raw)`` (BiFPN, Tan et al. 2020).

    The node is its own module so its output (the node's feature map) can be hooked, e.g. by Grad-CAM++.
    """

    def __init__(self, num_inputs: int, eps: float = 1e-4, name: str = "node"):
        super().__init__()
        if num_inputs < 2:
            raise ValueError(f"fusion node {name!r} needs at least 2 inputs, got num_inputs={num_inputs}")
        self.name = name
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_inputs))  # BiFPN initialises the fusion weights at 1

    def normalized_weights(self) -> torch.Tensor:
        w = torch.relu(self.weight)
        return w / (w.sum() + self.eps)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) != self.weight.numel():
            raise ValueError(f"fusion node {self.name!r} expects {self.weight.numel()} inputs, got {len(inputs)}")
        shapes = {tuple(t.shape) for t in inputs}
        if len(shapes) != 1:
            raise ValueError(f"fusion node {self.name!r}: inputs must share one shape, got {sorted(shapes)}; "
                             "image sides must be multiples of the backbone stride (32)")
        w = self.normalized_weights()
        return sum(w[j] * x for j, x in enumerate(inputs))


class LGFFNLayer(nn.Module):
    """One LGFFN layer (Eq. 6, Fig. 1): BiFPN node topology with GA/LA on every edge.

    Inputs P1_0..P4_0 (finest to coarsest, stride 4..32); top-down inner nodes P3_1, P2_1; outer nodes
    P1_2 (finest, closes the top-down path) then bottom-up P2_2, P3_2, P4_2::

        P3_1 = fuse(GA(P3_0), LA(Up(P4_0)))
        P2_1 = fuse(GA(P2_0), LA(Up(P3_1)))
        P1_2 = fuse(GA(P1_0), LA(Up(P2_1)))
        P2_2 = fuse(LA(P2_0), LA(P2_1), GA(Down(P1_2)))
        P3_2 = fuse(LA(P3_0), LA(P3_1), GA(Down(P2_2)))
        P4_2 = fuse(LA(P4_0), GA(Down(P3_2)))

    ``in_channels`` (the backbone's four stage widths) adds the lateral projections: first layer only.
    """

    def __init__(self, channels: int, in_channels: Sequence[int] | None = None, *, hidden_ratio: float = 0.5,
                 fusion_eps: float = 1e-4):
        super().__init__()
        c, r = channels, hidden_ratio
        if in_channels is not None:
            if len(in_channels) != 4:
                raise ValueError(f"in_channels must list the 4 backbone stage widths, got {list(in_channels)}")
            self.lateral = nn.ModuleList([LateralProjection(ci, c) for ci in in_channels])
        else:
            self.lateral = None
        # Edges: <node>_<aggregator>_<source>, e.g. p31_ga_p30 = GA applied to P3_0 on its way into P3_1.
        self.p31_ga_p30, self.p31_la_p40 = GlobalAggregator(c, r), LocalAggregator(c, r)
        self.p21_ga_p20, self.p21_la_p31 = GlobalAggregator(c, r), LocalAggregator(c, r)
        self.p12_ga_p10, self.p12_la_p21 = GlobalAggregator(c, r), LocalAggregator(c, r)
        self.p22_la_p20, self.p22_la_p21, self.p22_ga_p12 = LocalAggregator(c, r), LocalAggregator(c, r), GlobalAggregator(c, r)
        self.p32_la_p30, self.p32_la_p31, self.p32_ga_p22 = LocalAggregator(c, r), LocalAggregator(c, r), GlobalAggregator(c, r)
        self.p42_la_p40, self.p42_ga_p32 = LocalAggregator(c, r), GlobalAggregator(c, r)
        self.up_p40, self.up_p31, self.up_p21 = Upsample2x(c), Upsample2x(c), Upsample2x(c)
        self.down_p12, self.down_p22, self.down_p32 = Downsample2x(c), Downsample2x(c), Downsample2x(c)
        self.nodes = nn.ModuleDict({
            "P3_1": FastNormalizedFusion(2, fusion_eps, "P3_1"),
            "P2_1": FastNormalizedFusion(2, fusion_eps, "P2_1"),
            "P1_2": FastNormalizedFusion(2, fusion_eps, "P1_2"),
            "P2_2": FastNormalizedFusion(3, fusion_eps, "P2_2"),
            "P3_2": FastNormalizedFusion(3, fusion_eps, "P3_2"),
            "P4_2": FastNormalizedFusion(2, fusion_eps, "P4_2"),
        })

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(inputs) != 4:
            raise ValueError(f"an LGFFN layer takes 4 feature maps (P1_0..P4_0), got {len(inputs)}")
        if self.lateral is not None:
            inputs = [proj(x) for proj, x in zip(self.lateral, inputs)]
        p1_0, p2_0, p3_0, p4_0 = inputs
        n = self.nodes
        p3_1 = n["P3_1"](self.p31_ga_p30(p3_0), self.p31_la_p40(self.up_p40(p4_0)))
        p2_1 = n["P2_1"](self.p21_ga_p20(p2_0), self.p21_la_p31(self.up_p31(p3_1)))
        p1_2 = n["P1_2"](self.p12_ga_p10(p1_0), self.p12_la_p21(self.up_p21(p2_1)))
        p2_2 = n["P2_2"](self.p22_la_p20(p2_0), self.p22_la_p21(p2_1), self.p22_ga_p12(self.down_p12(p1_2)))
        p3_2 = n["P3_2"](self.p32_la_p30(p3_0), self.p32_la_p31(p3_1), self.p32_ga_p22(self.down_p22(p2_2)))
        p4_2 = n["P4_2"](self.p42_la_p40(p4_0), self.p42_ga_p32(self.down_p32(p3_2)))
        return [p1_2, p2_2, p3_2, p4_2]

    def outer_nodes(self) -> dict[str, FastNormalizedFusion]:
        """The modules whose outputs are P1_2..P4_2 (Grad-CAM++ targets, Figs. 4-6)."""
        return {name: self.nodes[name] for name in OUTER_NODES}


class LGFFN(nn.Module):
    """``num_layers`` stacked LGFFN layers at ``channels`` width (paper: 3 layers, C_in = 512)."""

    def __init__(self, in_channels: Sequence[int], channels: int = 512, num_layers: int = 3, *,
                 hidden_ratio: float = 0.5, fusion_eps: float = 1e-4):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.layers = nn.ModuleList([
            LGFFNLayer(channels, in_channels if i == 0 else None, hidden_ratio=hidden_ratio, fusion_eps=fusion_eps)
            for i in range(num_layers)
        ])

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        for layer in self.layers:
            features = layer(features)
        return features
