"""EsViT: efficient self-supervised vision transformers (Li et al., ICLR 2022, "Efficient Self-supervised Vision
Transformers for Representation Learning"; reference code microsoft/esvit ``main_esvit.py``, ``DDINOLoss``).
Habijan et al. (EUSIPCO 2025) pretrain Swin-T with it for histopathology retrieval.

EsViT adds a region-level task to DINO's view-level task. For a teacher global view t and another student view s:

    L = 0.5 * H(P_t(z_t), P_s(z_s))                                           (view level = DINO, Eq. 3 of DINO)
      + 0.5 * 1/T_s * sum_i H(P_t(r_t[j*(i)]), P_s(r_s[i])),                   (region level, EsViT Eq. 5)
        j*(i) = argmax_j  cos(f_s[i], f_t[j])

where z is the pooled embedding through the view head, r the region (patch) tokens through a separate dense head
with its own center, and f the *backbone* region features used only for the matching. Pairs with s == t are
skipped and the total is averaged over pairs, as in DINO.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from histokit.models.base import Encoder

from .base import batch_mean_all_ranks, check_views, ema_update, forward_views, full_precision, make_teacher
from .dino import DINO, DINOHead


def match_regions(student_feats: torch.Tensor, teacher_feats: torch.Tensor) -> torch.Tensor:
    """Index (B, T_s) of the teacher region whose backbone feature is most cosine-similar to each student region
    (``region_sim_matrix.max(dim=2)[1]`` in main_esvit.py). Inputs are (B, T_s, D) and (B, T_t, D)."""
    # fp32: a bf16 similarity would round near-ties and change which region is matched
    sim = F.normalize(student_feats.float(), dim=-1) @ F.normalize(teacher_feats.float(), dim=-1).transpose(1, 2)
    return sim.argmax(dim=2)


def region_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, student_feats: torch.Tensor,
                teacher_feats: torch.Tensor) -> torch.Tensor:
    """Region-level cross-entropy for one (teacher view, student view) pair, per image: (B,).

    ``student_logits`` (B, T_s, K) are already divided by the student temperature, ``teacher_probs`` (B, T_t, K) are
    centered and sharpened; each student region is matched to its most similar teacher region (backbone features)."""
    return region_loss_from_log_probs(F.log_softmax(student_logits, dim=-1), teacher_probs, student_feats,
                                      teacher_feats)


def region_loss_from_log_probs(student_log_probs: torch.Tensor, teacher_probs: torch.Tensor,
                               student_feats: torch.Tensor, teacher_feats: torch.Tensor) -> torch.Tensor:
    """:func:`region_loss` from the student's log-softmax (B, T_s, K), computed once per student view.

    ``-sum_k P_t[match(s), k] log P_s[s, k]`` is read off the (B, T_s, T_t) matrix ``log P_s @ P_t^T`` at the matched
    teacher region: the same number as gathering the matched teacher rows, without a (B, T_s, K) copy per
    (teacher, student) pair — at K = 65,536 that copy, not the arithmetic, is what a step costs."""
    idx = match_regions(student_feats, teacher_feats)
    cross = torch.bmm(student_log_probs, teacher_probs.transpose(1, 2))
    return -torch.gather(cross, 2, idx.unsqueeze(-1)).squeeze(-1).mean(dim=-1)


class EsViTLoss(nn.Module):
    """View-level DINO loss + region-level loss, 0.5 each, with separate centers (``DDINOLoss`` of main_esvit.py).

    ``forward(s_view, s_region, s_feat, t_view, t_region, t_feat, teacher_temp)`` takes per-view lists: view logits
    (B, K), region logits (B, T, K) and backbone region features (B, T, D); teacher lists hold the global views only.
    """

    def __init__(self, out_dim: int, *, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("center_grid", torch.zeros(1, out_dim))

    @full_precision()
    def forward(self, s_view: Sequence[torch.Tensor], s_region: Sequence[torch.Tensor],
                s_feat: Sequence[torch.Tensor], t_view: Sequence[torch.Tensor], t_region: Sequence[torch.Tensor],
                t_feat: Sequence[torch.Tensor], teacher_temp: float) -> tuple[torch.Tensor, dict]:
        t_view_probs = [F.softmax((t.float() - self.center) / teacher_temp, dim=-1).detach() for t in t_view]
        t_region_probs = [F.softmax((t.float() - self.center_grid) / teacher_temp, dim=-1).detach() for t in t_region]
        # each student view's log-softmax once, shared by every teacher view it is compared with
        s_view_logp = [F.log_softmax(s.float() / self.student_temp, dim=-1) for s in s_view]
        s_region_logp = [F.log_softmax(s.float() / self.student_temp, dim=-1) for s in s_region]
        total = view_total = region_total = 0.0
        n_terms = 0
        for iq, (q_view, q_region) in enumerate(zip(t_view_probs, t_region_probs)):
            for v in range(len(s_view)):
                if v == iq:
                    continue
                view_term = torch.sum(-q_view * s_view_logp[v], dim=-1)
                region_term = region_loss_from_log_probs(s_region_logp[v], q_region, s_feat[v].detach(), t_feat[iq])
                total = total + (0.5 * view_term + 0.5 * region_term).mean()
                view_total = view_total + view_term.mean().detach()
                region_total = region_total + region_term.mean().detach()
                n_terms += 1
        self.update_centers(torch.cat(list(t_view)), torch.cat([t.flatten(0, 1) for t in t_region]))
        logs = {"view_loss": view_total / n_terms, "region_loss": region_total / n_terms}  # detached; the engine syncs
        return total / n_terms, logs

    @torch.no_grad()
    def update_centers(self, teacher_view: torch.Tensor, teacher_region: torch.Tensor) -> None:
        """Both centers: EMA of the batch mean (view rows; all region rows of all images), over ranks if any."""
        m = self.center_momentum
        self.center.mul_(m).add_(batch_mean_all_ranks(teacher_view.float()), alpha=1.0 - m)
        self.center_grid.mul_(m).add_(batch_mean_all_ranks(teacher_region.float()), alpha=1.0 - m)


class EsViT(DINO):
    """EsViT around any :class:`Encoder` with patch/region tokens (Swin in the paper; ViT, CypherViT, CNN maps work).

    View level: the encoder's pooled embedding (mean of the final Swin tokens) through ``student_head``; region
    level: every final token through ``student_dense_head``. Schedules, EMA and ``eval_encoder()`` (teacher) as DINO.
    Defaults follow the released Swin-T run (README: ``--teacher_temp 0.07 --warmup_teacher_temp_epochs 30
    --norm_last_layer false --use_dense_prediction True``).
    """

    def __init__(self, encoder: Encoder, *, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 use_bn_in_head: bool = False, norm_last_layer: bool = False, student_temp: float = 0.1,
                 warmup_teacher_temp: float = 0.04, teacher_temp: float = 0.07, warmup_teacher_temp_epochs: int = 30,
                 center_momentum: float = 0.9, momentum_teacher: float = 0.996, freeze_last_layer_epochs: int = 1,
                 n_global_views: int = 2):
        super().__init__(encoder, out_dim=out_dim, hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim,
                         use_bn_in_head=use_bn_in_head, norm_last_layer=norm_last_layer, student_temp=student_temp,
                         warmup_teacher_temp=warmup_teacher_temp, teacher_temp=teacher_temp,
                         warmup_teacher_temp_epochs=warmup_teacher_temp_epochs, center_momentum=center_momentum,
                         momentum_teacher=momentum_teacher, freeze_last_layer_epochs=freeze_last_layer_epochs,
                         n_global_views=n_global_views)
        self.student_dense_head = DINOHead(encoder.embed_dim, out_dim, hidden_dim=hidden_dim,
                                           bottleneck_dim=bottleneck_dim, use_bn=use_bn_in_head,
                                           norm_last_layer=norm_last_layer)
        self.teacher_dense_head = make_teacher(self.student_dense_head)
        self.loss_fn = EsViTLoss(out_dim, student_temp=student_temp, center_momentum=center_momentum)

    def before_optimizer_step(self) -> None:
        if self.last_layer_frozen:
            for head in (self.student_head, self.student_dense_head):
                for p in head.last_layer.parameters():
                    p.grad = None

    def after_step(self) -> None:
        super().after_step()
        ema_update(self.teacher_dense_head, self.student_dense_head, self.momentum)

    def _outputs(self, encoder: Encoder, head: nn.Module, dense_head: nn.Module, views: Sequence[torch.Tensor]):
        outs = forward_views(encoder, views)
        for i, o in enumerate(outs):
            if o.patch_tokens is None:
                raise ValueError(f"EsViT needs region tokens, but the encoder returned patch_tokens=None for view {i}")
        return ([head(o.pooled) for o in outs], [dense_head(o.patch_tokens) for o in outs],
                [o.patch_tokens for o in outs])

    def forward(self, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        check_views(views, min_views=self.n_global_views, method="EsViT")
        with torch.no_grad():
            t_view, t_region, t_feat = self._outputs(self.teacher_encoder, self.teacher_head,
                                                     self.teacher_dense_head, views[: self.n_global_views])
        s_view, s_region, s_feat = self._outputs(self.student_encoder, self.student_head, self.student_dense_head,
                                                 views)
        loss, logs = self.loss_fn(s_view, s_region, s_feat, t_view, t_region, t_feat, self.teacher_temp)
        return loss, {"loss": loss.detach(), **logs, "teacher_temp": self.teacher_temp, "momentum": self.momentum}
