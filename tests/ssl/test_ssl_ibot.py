"""iBOT: block-wise and random masks (shapes, counts), the loss against the paper's equations by hand (MIM on masked
tokens only, [CLS] pairs as DINO), separate centers, and the masked student forward."""
import numpy as np
import pytest
import torch

from histokit.models.backbones import create_encoder
from histokit.ssl.ibot import block_mask, iBOT, iBOTLoss, random_mask, sample_masks


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("seed", range(5))
def test_block_mask_is_blocks_up_to_the_target(seed):
    g = torch.Generator().manual_seed(seed)
    target = 0.4 * 14 * 14
    mask = block_mask((14, 14), target, generator=g)
    assert mask.shape == (14, 14) and mask.dtype == torch.bool
    # BEiT's generator never exceeds the target and, on a 14 x 14 grid, gets most of the way there
    assert 0.5 * target <= mask.sum() <= target


def test_random_mask_exact_count_and_sample_masks_shapes():
    g = torch.Generator().manual_seed(0)
    assert int(random_mask((4, 6), 10.7, generator=g).sum()) == 10
    masks = sample_masks(64, (4, 4), shape="rand", ratio_choices=((0.5, 0.5),), generator=g)
    assert masks.shape == (64, 16) and masks.dtype == torch.bool
    assert (masks.sum(1) == 8).all()
    # the iBOT ViT-S default: half the images unmasked, the others 10-50 %
    masks = sample_masks(400, (8, 8), generator=g)
    ratios = masks.float().mean(1)
    assert 0.35 < (ratios == 0).float().mean() < 0.65
    assert ratios.max() <= 0.5


def test_sample_masks_rejects_bad_arguments():
    with pytest.raises(ValueError, match="shape"):
        sample_masks(2, (4, 4), shape="grid")
    with pytest.raises(ValueError, match="mask ratio"):
        sample_masks(2, (4, 4), ratio_choices=((0.5, 1.0),))


def test_ibot_loss_hand_computed_and_masked_tokens_only():
    rng = np.random.default_rng(0)
    B, N, K, tau_s, tau_t, tau_tp = 2, 4, 5, 0.1, 0.05, 0.06
    s_cls = [rng.normal(size=(B, K)).astype(np.float32) for _ in range(3)]  # 2 globals + 1 local
    s_patch = [rng.normal(size=(B, N, K)).astype(np.float32) for _ in range(2)]
    t_cls = [rng.normal(size=(B, K)).astype(np.float32) for _ in range(2)]
    t_patch = [rng.normal(size=(B, N, K)).astype(np.float32) for _ in range(2)]
    masks = [np.array([[1, 0, 1, 0], [0, 0, 0, 0]], bool), np.array([[0, 1, 1, 1], [1, 0, 0, 0]], bool)]

    cls_terms, mim_terms = [], []
    for q in range(2):
        pt_cls = _softmax(t_cls[q] / tau_t)
        pt_patch = _softmax(t_patch[q] / tau_tp)
        for v in range(3):
            if v == q:
                h = -(pt_patch * np.log(_softmax(s_patch[v] / tau_s))).sum(-1)  # (B, N)
                per_image = (h * masks[v]).sum(-1) / np.maximum(masks[v].sum(-1), 1)
                mim_terms.append(per_image.mean())
            else:
                cls_terms.append((-(pt_cls * np.log(_softmax(s_cls[v] / tau_s))).sum(-1)).mean())
    expected = np.mean(cls_terms) + np.mean(mim_terms)

    t = lambda xs: [torch.from_numpy(x) for x in xs]  # noqa: E731
    loss_fn = iBOTLoss(K, K, student_temp=tau_s)
    loss, logs = loss_fn(t(s_cls), t(s_patch), t(t_cls), t(t_patch), t(masks), tau_t, tau_tp)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert logs["mim_loss"] == pytest.approx(np.mean(mim_terms), rel=1e-5)
    # patch center = mean over images of the per-image patch means
    expected_c2 = 0.1 * np.concatenate(t_patch).mean(1).mean(0)
    np.testing.assert_allclose(loss_fn.center2.numpy()[0, 0], expected_c2, rtol=1e-5)

    # changing the student's logits on unmasked tokens leaves the loss unchanged; on a masked token it does not
    s_patch_changed = [p.copy() for p in s_patch]
    s_patch_changed[0][0, 1, 0] += 3.0  # image 0, token 1 of view 0: not masked
    fresh = iBOTLoss(K, K, student_temp=tau_s)
    same, _ = fresh(t(s_cls), t(s_patch_changed), t(t_cls), t(t_patch), t(masks), tau_t, tau_tp)
    assert same.item() == pytest.approx(expected, rel=1e-5)
    s_patch_changed[0][0, 0, 0] += 3.0  # token 0: masked
    fresh = iBOTLoss(K, K, student_temp=tau_s)
    changed, _ = fresh(t(s_cls), t(s_patch_changed), t(t_cls), t(t_patch), t(masks), tau_t, tau_tp)
    assert changed.item() != pytest.approx(expected, rel=1e-5)


def test_ibot_masks_follow_the_patch_grid_and_reach_the_student():
    torch.manual_seed(0)
    method = iBOT(create_encoder("vit_test", img_size=64), out_dim=32, hidden_dim=32, bottleneck_dim=16,
                  mask_ratio_choices=((0.3, 0.5),))
    views = [torch.randn(3, 3, 64, 64), torch.randn(3, 3, 64, 64), torch.randn(3, 3, 32, 32)]
    masks = method.make_masks(views)
    assert len(masks) == 2 and all(m.shape == (3, 16) and m.dtype == torch.bool for m in masks)
    assert all((m.sum(1) > 0).all() for m in masks)
    loss, logs = method(views, masks=masks)
    assert torch.isfinite(loss) and {"cls_loss", "mim_loss", "mask_ratio"} <= set(logs)
    loss.backward()
    # the learned [MASK] embedding is used (and trained) by the student only
    assert method.student_encoder.mask_token.grad is not None
    assert method.eval_encoder() is method.teacher_encoder


def test_ibot_needs_a_maskable_patch_encoder():
    with pytest.raises(ValueError, match="patch_size"):
        iBOT(create_encoder("resnet_test"), out_dim=16, hidden_dim=16, bottleneck_dim=8)
