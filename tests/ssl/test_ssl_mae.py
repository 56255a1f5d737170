"""MAE: 75 % per-sample random masking, the encoder sees visible patches only, and the normalised-pixel loss counts
masked patches only (He et al. 2022, models_mae.py), checked by hand."""
import numpy as np
import pytest
import torch

from histokit.models.backbones import create_encoder
from histokit.ssl.mae import MAE, mae_loss, patchify, random_masking


def _tiny_mae(**kw):
    torch.manual_seed(0)
    return MAE(create_encoder("vit_test", img_size=64), decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2,
               **kw)


def test_random_masking_keeps_a_quarter_per_sample():
    ids_keep, mask, ids_restore = random_masking(16, 5, 0.75, generator=torch.Generator().manual_seed(0))
    assert ids_keep.shape == (5, 4)
    assert (mask.sum(1) == 12).all()
    for b in range(5):  # the kept ids are exactly the unmasked positions, and restore inverts the shuffle
        assert sorted(ids_keep[b].tolist()) == torch.nonzero(mask[b] == 0).flatten().tolist()
    assert (torch.sort(ids_restore, 1).values == torch.arange(16)).all()


def test_patchify_layout():
    img = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    p = patchify(img, 2)
    assert p.shape == (2, 4, 12)
    # patch 1 = rows 0-1, cols 2-3; pixel order (row, col, channel)
    np.testing.assert_array_equal(p[0, 1, :3].numpy(), img[0, :, 0, 2].numpy())
    with pytest.raises(ValueError, match="patch size"):
        patchify(torch.zeros(1, 3, 5, 4), 2)


def test_loss_is_normalised_pixel_mse_on_masked_patches_only():
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(2, 4, 6)).astype(np.float32)
    target = rng.normal(size=(2, 4, 6)).astype(np.float32)
    mask = np.array([[1, 0, 1, 0], [0, 0, 0, 1]], np.float32)
    norm = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, ddof=1, keepdims=True) + 1e-6)
    expected = (((pred - norm) ** 2).mean(-1) * mask).sum() / mask.sum()
    t = torch.from_numpy
    assert mae_loss(t(pred), t(target), t(mask)).item() == pytest.approx(expected, rel=1e-5)
    changed = pred.copy()
    changed[0, 1] += 5.0  # a visible patch: no effect
    assert mae_loss(t(changed), t(target), t(mask)).item() == pytest.approx(expected, rel=1e-5)
    changed[0, 0] += 5.0  # a masked patch
    assert mae_loss(t(changed), t(target), t(mask)).item() > expected + 1


def test_encoder_sees_only_visible_patches():
    method = _tiny_mae()
    imgs = torch.randn(2, 3, 64, 64)
    latent, mask, _ = method.forward_encoder(imgs, noise_generator=torch.Generator().manual_seed(3))
    assert latent.shape == (2, 1 + 4, 64)  # [CLS] + 25 % of 16 patches
    assert (mask.sum(1) == 12).all()
    # scramble the pixels of every masked patch: with the same noise the latent does not move
    grid_mask = mask.reshape(2, 4, 4).repeat_interleave(16, 1).repeat_interleave(16, 2).bool()
    scrambled = torch.where(grid_mask[:, None], torch.randn_like(imgs) * 10, imgs)
    latent2, _, _ = method.forward_encoder(scrambled, noise_generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(latent, latent2)


def test_mae_forward_and_fixed_sincos_encoder_position():
    method = _tiny_mae()
    assert not method.student_encoder.model.pos_embed.requires_grad
    loss, logs = method([torch.randn(2, 3, 64, 64)])
    assert torch.isfinite(loss) and logs["mask_ratio"] == pytest.approx(0.75)
    loss.backward()
    assert method.mask_token.grad is not None
    assert method.eval_encoder() is method.student_encoder


def test_mae_needs_a_vit():
    with pytest.raises(ValueError, match="VisionTransformer"):
        MAE(create_encoder("resnet_test"))
    with pytest.raises(ValueError, match="mask_ratio"):
        _tiny_mae(mask_ratio=1.0)
