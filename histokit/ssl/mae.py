"""MAE: masked autoencoders (He et al., CVPR 2022, "Masked Autoencoders Are Scalable Vision Learners"; reference
code facebookresearch/mae ``models_mae.py``). Ye et al. (2024, Table 3) pretrain the vanilla ViT with it.

Per image, a random 75 % of the patches is dropped (per-sample shuffle by uniform noise); the ViT encoder runs on the
visible patches (+ [CLS]) only; a lightweight decoder (512-d, 8 blocks, 16 heads) gets the encoded tokens plus a
shared learned mask token at every masked position, with fixed 2-D sin-cos position embeddings, and predicts the
pixels of every patch. The loss is the MSE on the *masked* patches only, against per-patch normalised pixels
(``norm_pix_loss``): target = (x - mean) / sqrt(var + 1e-6) over each patch's pixels.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from timm.layers import resample_abs_pos_embed
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

from histokit.models.base import Encoder

from .base import SSLMethod, check_views, full_precision


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C), patches in row-major order (``models_mae.patchify``)."""
    B, C, H, W = imgs.shape
    p = patch_size
    if H % p or W % p:
        raise ValueError(f"image size {(H, W)} is not a multiple of the patch size {p}")
    x = imgs.reshape(B, C, H // p, p, W // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(B, (H // p) * (W // p), p * p * C)


def random_masking(n_tokens: int, batch: int, mask_ratio: float, device=None,
                   generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random subset (``models_mae.random_masking``): returns ``ids_keep`` (B, L_keep), ``mask`` (B, N)
    with 1 = removed, and ``ids_restore`` (B, N) that unshuffles; L_keep = int(N (1 - mask_ratio))."""
    len_keep = int(n_tokens * (1 - mask_ratio))
    noise = torch.rand(batch, n_tokens, generator=generator).to(device)
    ids_shuffle = torch.argsort(noise, dim=1)  # ascend: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(batch, n_tokens, device=device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_shuffle[:, :len_keep], mask, ids_restore


@full_precision()
def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix_loss: bool = True) -> torch.Tensor:
    """Mean squared error per patch, averaged over masked patches only (``models_mae.forward_loss``)."""
    target = target.float()
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)  # unbiased, as torch's default in the reference
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


def sincos_pos_embed(grid: tuple[int, int], dim: int, device=None) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (1, H*W, dim) (MAE ``get_2d_sincos_pos_embed``, via timm)."""
    return build_sincos2d_pos_embed(list(grid), dim=dim, device=device).unsqueeze(0)


class MAE(SSLMethod):
    """MAE around a timm ``VisionTransformer`` wrapped as :class:`Encoder` (``encoder.model``); ViT only.

    ``fixed_encoder_pos_embed`` (MAE's choice, Appendix A.1) overwrites the encoder's position embedding with
    2-D sin-cos (zero for the [CLS] position) and freezes it; False keeps timm's learned one. The decoder's is
    always fixed sin-cos. ``forward(views)`` uses ``views[0]``. ``eval_encoder()`` is the encoder.
    """

    def __init__(self, encoder: Encoder, *, mask_ratio: float = 0.75, decoder_embed_dim: int = 512,
                 decoder_depth: int = 8, decoder_num_heads: int = 16, mlp_ratio: float = 4.0,
                 norm_pix_loss: bool = True, fixed_encoder_pos_embed: bool = True):
        super().__init__()
        model = getattr(encoder, "model", None)
        if model is None or not all(hasattr(model, a) for a in ("patch_embed", "blocks", "pos_embed", "cls_token")):
            raise ValueError(f"MAE needs a timm VisionTransformer encoder (encoder.model with patch_embed, blocks, "
                             f"pos_embed, cls_token); got {type(encoder).__name__}")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"MAE mask_ratio must be in (0, 1), got mask_ratio={mask_ratio}")
        if decoder_embed_dim % 4:
            raise ValueError(f"decoder_embed_dim must be divisible by 4 (2-D sin-cos), got {decoder_embed_dim}")
        self.student_encoder = encoder
        self._train_mask_token_only_if_used()
        self.patch_size = model.patch_embed.patch_size[0]
        self.in_chans = model.patch_embed.proj.in_channels
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.fixed_encoder_pos_embed = fixed_encoder_pos_embed
        if fixed_encoder_pos_embed:
            n_prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
            with torch.no_grad():
                model.pos_embed.zero_()
                model.pos_embed[:, n_prefix:] = sincos_pos_embed(model.patch_embed.grid_size, encoder.embed_dim)
            model.pos_embed.requires_grad_(False)
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True) for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, self.patch_size ** 2 * self.in_chans)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in [self.decoder_embed, self.decoder_pred, *self.decoder_blocks.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _pos_embed(self, grid: tuple[int, int]) -> tuple[Optional[torch.Tensor], torch.Tensor]:
        """The encoder's learned position embedding at ``grid``: (prefix part or None, patch part)."""
        m = self.student_encoder.model
        n_prefix = 0 if getattr(m, "no_embed_class", False) else m.num_prefix_tokens
        if self.fixed_encoder_pos_embed:  # exact sin-cos at any grid instead of an interpolated one
            prefix = m.pos_embed[:, :n_prefix] if n_prefix else None
            return prefix, sincos_pos_embed(grid, m.pos_embed.shape[-1], m.pos_embed.device).to(m.pos_embed.dtype)
        pos = m.pos_embed
        old_grid = m.patch_embed.grid_size
        if tuple(grid) != tuple(old_grid):
            pos = resample_abs_pos_embed(pos, new_size=list(grid), old_size=list(old_grid), num_prefix_tokens=n_prefix)
        return (pos[:, :n_prefix] if n_prefix else None), pos[:, n_prefix:]

    def forward_encoder(self, imgs: torch.Tensor, noise_generator: Optional[torch.Generator] = None):
        """Encode the visible patches: returns latent (B, prefix + L_keep, D), mask (B, N), ids_restore (B, N)."""
        m = self.student_encoder.model
        p = self.patch_size
        grid = (imgs.shape[-2] // p, imgs.shape[-1] // p)
        x = m.patch_embed(imgs)
        if x.ndim == 4:  # dynamic_img_size keeps NHWC
            x = x.flatten(1, 2)
        prefix_pos, patch_pos = self._pos_embed(grid)
        x = x + patch_pos
        ids_keep, mask, ids_restore = random_masking(x.shape[1], x.shape[0], self.mask_ratio, x.device,
                                                     noise_generator)
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        prefix = [m.cls_token.expand(x.shape[0], -1, -1)]
        if getattr(m, "reg_token", None) is not None:
            prefix.append(m.reg_token.expand(x.shape[0], -1, -1))
        prefix = torch.cat(prefix, dim=1)
        if prefix_pos is not None:
            prefix = prefix + prefix_pos
        x = torch.cat([prefix, x], dim=1)
        x = m.norm_pre(x)
        x = m.blocks(x)
        x = m.norm(x)
        return x, mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Predict every patch's pixels: (B, N, p*p*C)."""
        n_prefix = self.student_encoder.model.num_prefix_tokens
        x = self.decoder_embed(latent)
        B, N = ids_restore.shape
        n_visible = x.shape[1] - n_prefix
        mask_tokens = self.mask_token.to(x.dtype).expand(B, N - n_visible, -1)
        tokens = torch.cat([x[:, n_prefix:], mask_tokens], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # unshuffle
        pos = sincos_pos_embed(grid, x.shape[-1], device=x.device).to(x.dtype)
        x = torch.cat([x[:, :n_prefix], tokens + pos], dim=1)  # prefix tokens get a zero position (as MAE's cls)
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        return self.decoder_pred(x)[:, n_prefix:]

    def forward(self, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        check_views(views, min_views=1, method="MAE")
        imgs = views[0]
        grid = (imgs.shape[-2] // self.patch_size, imgs.shape[-1] // self.patch_size)
        latent, mask, ids_restore = self.forward_encoder(imgs)
        pred = self.forward_decoder(latent, ids_restore, grid)
        loss = mae_loss(pred, patchify(imgs, self.patch_size), mask, self.norm_pix_loss)
        return loss, {"loss": loss.detach(), "mask_ratio": mask.detach().mean()}
