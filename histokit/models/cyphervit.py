"""CypherViT: the multi-[cls]-token hierarchical ViT of Ye, Kalra & Miri, "Cluster-based histopathology phenotype
representation learning by self-supervised multi-class-token hierarchical ViT", Scientific Reports (2024).

No public code exists; this follows the paper's Methods ("CypherViT architecture"), Eqs. (1)-(2), Figs. 3-4 and
the ``CYPHERViT(x)`` function of Algorithm 1. Where each part lives:

==============================================  ====================================================================
paper                                           code
==============================================  ====================================================================
Alg. 1 ``x = patch_embed(x)`` (+ position       :class:`CypherViT` ``patch_embed`` (timm ``PatchEmbed``), ``pos_embed``
encoding, "excluded from Fig. 4 ... indeed      (learned, resampled for other input sizes); iBOT ``mask`` swaps masked
part of the actual model")                      patch embeddings for a learned ``mask_token`` first
Alg. 1 ``initialize(multicls_token)``;          :class:`CypherStage` ``cls_tokens``: ``N_c`` learnable [cls] tokens
``{C_j^{s_k}}_{j=1..N_c}``, "N_c ... a          per stage, a fixed hyper-parameter (``num_cls``), fewer at each stage
predefined hyperparameter ... reduced" at       (checked: strictly decreasing); the last count is Table 4's
each stage                                      "# of [cls]" (4 or 8)
Alg. 1 ``cat_x = concat(x, multicls_token)``;   :meth:`CypherStage.forward`: ``M = [P, C]``, then ``depth`` timm
``MultiHeadAttnBlock(cat_x)``; Fig. 4           ``Block`` s (multi-head self-attention + MLP, ``W_q1, W_k1, W_v1``)
``(q1 k1^T) v1 = M1``
Alg. 1 ``x, multicls_token = split(cat_x)``     split ``M1`` back into ``P1`` (input tokens) and ``C1`` ([cls] tokens)
Eq. (1): ``Attn_ij = exp(W_p P_i . W_c C_j +    :meth:`SemanticClusteringBlock.assignment`: cls-to-patch similarity
gamma_j) / sum_u exp(W_p P_i . W_c C_u +        plus the learnable per-token bias ``gamma``; softmax over the [cls]
gamma_u)``                                      axis j (the denominator sums u = 1..N_c), so each patch distributes
                                                one unit of attention over the clusters
Eq. (2): ``C_j^{s_k+1} = C_j^{s_k} + W .        :meth:`SemanticClusteringBlock.forward`: attention-weighted mean of
sum_i Attn_ij W_v P_i / sum_i Attn_ij``         ``W_v P`` per [cls] token, projected by ``W``, added to ``C1``
Alg. 1 "returned x is learned multicls_token    :meth:`CypherViT.forward_tokens`: the stage's updated [cls] tokens
at stage s, then used as input for stage        are the next stage's ``x``; at stages k > 0 the clustering attends
s + 1"; Methods: at k > 0 the inputs are        from the new, fewer tokens ``C^{s_k}`` to ``C^{s_k-1}``
``C^{s_k-1}`` and ``C^{s_k}``
"average pooling layer to consolidate the       ``TokenOutput.pooled`` = mean of the final [cls] tokens (after the
outputs from the semantic-clustering block at   final LayerNorm); this is the embedding ``E_theta`` for DINO's head
the final stage"
Fig. 2 / Fig. 4 right: attention maps of each   :meth:`CypherViT.attention_maps`: Eq. (1) of every stage, composed
[cls] token, interpolated to the image          down to the patch grid (stage k > 0 assigns stage k-1 tokens, so
                                                ``A_0 @ A_1 @ ... @ A_k`` maps patches to stage-k tokens)
Eq. (3): DINO's multi-crop cross-entropy        not a backbone part: ``histokit.ssl.dino`` applies it to ``forward``
==============================================  ====================================================================

Choices the paper leaves open, made here and stated:

* Eq. (1) is a dot product; like Fig. 4's ``q k^T`` (written without softmax or scale) we read it as scaled
  dot-product attention: logits are multiplied by ``dim ** -0.5`` (``qk_scale`` to change). Inputs of ``W_p``,
  ``W_c``, ``W_v`` are LayerNorm-ed (pre-norm, as in every ViT block); the residual of Eq. (2) adds to the raw ``C1``.
* The stage layout of ``cyphervit_small`` is not given in the text (Fig. 3 is an image): ViT-S/16 width (384-d,
  6 heads, 12 blocks, as the paper's "same architecture (ViT-small)" comparison requires) split into two stages of
  6 blocks with 64 then ``num_final_cls`` (default 4, Table 4's best) [cls] tokens — the 64 -> 8 grouping hierarchy of
  GroupViT (Xu et al. 2022), the closest published multi-token hierarchical ViT. The stage-0 count is fixed
  (learned tokens, not derived from the input): a 96 px DINO local crop has 6 x 6 = 36 patches, fewer than the 64
  tokens: on a local crop the 64 stage-0 clusters share 36 units of patch mass (Eq. (1) gives each patch one unit
  over the tokens), under one patch per cluster on average. ``num_stage0_cls`` changes it; the cyphervit recipe runs
  32 (fewer than the 36 local-crop patches) as an extra Table 4 row.
* ``patch_tokens`` of the Encoder contract are the patch tokens after stage 0's blocks (the last stage where patches
  exist; later stages operate on [cls] tokens only), through the same final LayerNorm.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Optional, Sequence

import torch
from timm.layers import PatchEmbed, resample_abs_pos_embed, trunc_normal_
from timm.models.vision_transformer import Block, init_weights_vit_timm
from torch import nn

from .backbones import register_encoder
from .base import Encoder, TokenOutput


class SemanticClusteringBlock(nn.Module):
    """Semantic-clustering block of one stage: Eq. (1) assignment of input tokens to [cls] tokens, Eq. (2) update."""

    def __init__(self, dim: int, num_cls: int, *, qkv_bias: bool = True, qk_scale: Optional[float] = None,
                 norm_layer: Callable[..., nn.Module] = nn.LayerNorm):
        super().__init__()
        self.num_cls = num_cls
        self.scale = qk_scale if qk_scale is not None else dim ** -0.5
        self.norm_tokens = norm_layer(dim)
        self.norm_cls = norm_layer(dim)
        self.w_p = nn.Linear(dim, dim, bias=qkv_bias)   # W_p of Eq. (1)
        self.w_c = nn.Linear(dim, dim, bias=qkv_bias)   # W_c of Eq. (1)
        self.w_v = nn.Linear(dim, dim, bias=qkv_bias)   # W_v of Eq. (2)
        self.w = nn.Linear(dim, dim)                    # W of Eq. (2)
        self.gamma = nn.Parameter(torch.zeros(num_cls))  # gamma_j of Eq. (1): a learnable bias per [cls] token

    def assignment(self, tokens: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """Eq. (1): ``Attn[b, i, j]`` = softmax over the [cls] tokens j of ``W_p P_i . W_c C_j + gamma_j``.

        tokens ``(B, N, D)`` (patches at stage 0, previous [cls] tokens later), cls ``(B, N_c, D)`` ->
        ``(B, N, N_c)``, each row summing to 1 over j.
        """
        p = self.w_p(self.norm_tokens(tokens))
        c = self.w_c(self.norm_cls(cls))
        logits = (p @ c.transpose(1, 2)) * self.scale + self.gamma  # gamma_j broadcast over every token i
        return logits.softmax(dim=-1)  # the denominator of Eq. (1) sums over u = 1..N_c

    def forward(self, tokens: torch.Tensor, cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. (2): ``C_j <- C_j + W (sum_i Attn_ij W_v P_i / sum_i Attn_ij)``; returns (new cls, Attn)."""
        attn = self.assignment(tokens, cls)
        v = self.w_v(self.norm_tokens(tokens))
        weights = attn.transpose(1, 2)  # (B, N_c, N)
        # Attn_ij > 0 after a softmax, so the sum is positive; the clamp only guards a float16 underflow.
        cluster_mean = (weights @ v) / weights.sum(-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
        return cls + self.w(cluster_mean), attn


class CypherStage(nn.Module):
    """One stage s_k (Alg. 1 loop body): own [cls] tokens, multi-head self-attention blocks, semantic clustering."""

    def __init__(self, dim: int, depth: int, num_heads: int, num_cls: int, *, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, qk_scale: Optional[float] = None, drop_path: Sequence[float] = (),
                 norm_layer: Callable[..., nn.Module] = nn.LayerNorm):
        super().__init__()
        drop_path = list(drop_path) or [0.0] * depth
        self.cls_tokens = nn.Parameter(torch.zeros(1, num_cls, dim))  # {C_j^{s_k}}, Alg. 1 initialize()
        self.blocks = nn.Sequential(*[
            Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=drop_path[i],
                  norm_layer=norm_layer) for i in range(depth)])
        self.clustering = SemanticClusteringBlock(dim, num_cls, qkv_bias=qkv_bias, qk_scale=qk_scale,
                                                  norm_layer=norm_layer)

    @property
    def num_cls(self) -> int:
        return self.cls_tokens.shape[1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x ``(B, N, D)`` -> (this stage's updated [cls] tokens ``(B, N_c, D)``, Eq. (1) ``(B, N, N_c)``,
        the input tokens after the self-attention blocks ``(B, N, D)``)."""
        n = x.shape[1]
        cat_x = torch.cat([x, self.cls_tokens.expand(x.shape[0], -1, -1)], dim=1)  # concat(x, multicls_token)
        cat_x = self.blocks(cat_x)                                                  # MultiHeadAttnBlock(cat_x)
        x, cls = cat_x[:, :n], cat_x[:, n:]                                         # split(cat_x)
        cls, attn = self.clustering(x, cls)                                         # SemanticClusteringBlock
        return cls, attn, x


class CypherViT(Encoder):
    """Multi-[cls]-token hierarchical ViT; pooled embedding = mean of the final stage's [cls] tokens.

    Args:
        img_size, patch_size, in_chans: patch embedding (other input sizes work; ``pos_embed`` is resampled).
        embed_dim, num_heads, mlp_ratio, qkv_bias: width of every block (ViT-S: 384, 6, 4, True).
        depths: self-attention blocks per stage.
        num_cls: [cls] tokens per stage, strictly decreasing; ``num_cls[-1]`` is Table 4's "# of [cls]".
        qk_scale: scale of the Eq. (1) logits (default ``embed_dim ** -0.5``).
        drop_path_rate: stochastic depth, linearly increasing over all blocks.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 384,
                 depths: Sequence[int] = (6, 6), num_heads: int = 6, num_cls: Sequence[int] = (64, 4),
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale: Optional[float] = None,
                 drop_path_rate: float = 0.0):
        super().__init__()
        depths, num_cls = tuple(int(d) for d in depths), tuple(int(n) for n in num_cls)
        if not depths or len(depths) != len(num_cls):
            raise ValueError(f"depths and num_cls need one entry per stage, got depths={depths}, num_cls={num_cls}")
        if min(depths) < 1 or min(num_cls) < 1:
            raise ValueError(f"every stage needs >= 1 block and >= 1 [cls] token, got depths={depths}, "
                             f"num_cls={num_cls}")
        if any(a <= b for a, b in zip(num_cls, num_cls[1:])):
            raise ValueError(f"num_cls must decrease at every stage (Ye et al.: N_c 'is reduced' at each stage), "
                             f"got num_cls={num_cls}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.depths, self.num_cls = depths, num_cls
        norm_layer = partial(nn.LayerNorm, eps=1e-6)  # timm ViT's LayerNorm

        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=embed_dim, output_fmt="NHWC", strict_img_size=False)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))  # iBOT's [MASK] embedding
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        starts = [sum(depths[:k]) for k in range(len(depths))]
        self.stages = nn.ModuleList([
            CypherStage(embed_dim, d, num_heads, n, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                        drop_path=dpr[s:s + d], norm_layer=norm_layer)
            for d, n, s in zip(depths, num_cls, starts)])
        self.norm = norm_layer(embed_dim)

        self.apply(init_weights_vit_timm)
        for p in [self.pos_embed, self.mask_token] + [stage.cls_tokens for stage in self.stages]:
            # random, distinct [cls] tokens: identical ones would receive identical updates and never specialise
            trunc_normal_(p, std=0.02)

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        if (h, w) == tuple(self.patch_embed.grid_size):
            return self.pos_embed
        return resample_abs_pos_embed(self.pos_embed, new_size=[h, w], old_size=list(self.patch_embed.grid_size),
                                      num_prefix_tokens=0)

    def _run(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None):
        """Alg. 1 ``CYPHERViT(x)`` -> (final [cls] tokens, stage-0 patch tokens, per-stage Eq. (1), grid)."""
        if x.ndim != 4:
            raise ValueError(f"CypherViT expects images (B, C, H, W), got shape {tuple(x.shape)}")
        tokens = self.patch_embed(x)  # (B, h, w, D)
        B, h, w, D = tokens.shape
        tokens = tokens.reshape(B, h * w, D)
        if mask is not None:
            if mask.shape != (B, h * w) or mask.dtype != torch.bool:
                raise ValueError(f"mask must be a bool tensor of shape (B, N)={(B, h * w)}, "
                                 f"got {mask.dtype} {tuple(mask.shape)}")
            tokens = torch.where(mask.unsqueeze(-1), self.mask_token.to(tokens.dtype).expand_as(tokens), tokens)
        x = tokens + self._pos_embed(h, w)
        attns, patch_tokens = [], None
        for stage in self.stages:
            x, attn, inputs = stage(x)  # the stage's [cls] tokens become the next stage's input x
            patch_tokens = inputs if patch_tokens is None else patch_tokens
            attns.append(attn)
        return x, patch_tokens, attns, (h, w)

    def forward_tokens(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> TokenOutput:
        cls, patches, _, grid = self._run(x, mask)
        cls, patches = self.norm(cls), self.norm(patches)
        return TokenOutput(pooled=cls.mean(1), patch_tokens=patches, cls_tokens=cls, grid_size=grid)

    def cluster_assignments(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Eq. (1) of every stage as computed: stage 0 ``(B, N_patches, N_c0)``, stage k ``(B, N_c{k-1}, N_ck)``."""
        return self._run(x)[2]

    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Attention of every [cls] token over the patch grid, per stage: list of ``(B, N_ck, h, w)``.

        Stage 0 is Eq. (1) itself; stage k > 0 assigns stage k-1 tokens, so its patch-level map is the product
        ``A_0 @ ... @ A_k`` (each row-stochastic, so every patch still sums to 1 over the stage's tokens).
        Upsample to the image with ``torch.nn.functional.interpolate`` for overlays (Fig. 2).
        """
        _, _, attns, (h, w) = self._run(x)
        maps, composed = [], None
        for attn in attns:
            composed = attn if composed is None else composed @ attn
            maps.append(composed.transpose(1, 2).reshape(x.shape[0], -1, h, w))
        return maps


@register_encoder("cyphervit_small")
def cyphervit_small(img_size: int = 224, num_final_cls: int = 4, num_stage0_cls: int = 64, **kwargs) -> CypherViT:
    """ViT-S/16 scale: 384-d, 6 heads, 2 stages x 6 blocks, ``num_stage0_cls`` (64, an assumption: the paper gives
    no count) -> ``num_final_cls`` (4 or 8, Table 4) [cls] tokens. The same tokens serve every crop size: 196
    patches of a 224 px global crop, 36 of a 96 px DINO local crop (64 tokens then outnumber the patches; the
    cyphervit recipe's Table 4 ablation row trains 32)."""
    cfg = dict(patch_size=16, embed_dim=384, depths=(6, 6), num_heads=6, num_cls=(num_stage0_cls, num_final_cls))
    return CypherViT(img_size=img_size, **(cfg | kwargs))


@register_encoder("cyphervit_smoke")
def cyphervit_smoke(img_size: int = 64, num_final_cls: int = 4, num_stage0_cls: int = 16, **kwargs) -> CypherViT:
    """Smoke-profile variant: the same two clustering stages at 192-d, 3 heads, 3 blocks each, and 16 stage-0
    [cls] tokens, one per patch of a 64 px image (the paper's 64 tokens suit 196 patches at 224 px; at 64 px they
    would outnumber the patches four to one and make the smoke run attention-bound)."""
    cfg = dict(patch_size=16, embed_dim=192, depths=(3, 3), num_heads=3, num_cls=(num_stage0_cls, num_final_cls))
    return CypherViT(img_size=img_size, **(cfg | kwargs))


@register_encoder("cyphervit_test")
def cyphervit_test(img_size: int = 224, num_final_cls: int = 4, num_stage0_cls: int = 16, **kwargs) -> CypherViT:
    """Tiny variant for CI: same code path, 32-d, 2 heads, 2 stages x 1 block, 16 -> ``num_final_cls`` tokens."""
    cfg = dict(patch_size=16, embed_dim=32, depths=(1, 1), num_heads=2, num_cls=(num_stage0_cls, num_final_cls))
    return CypherViT(img_size=img_size, **(cfg | kwargs))
