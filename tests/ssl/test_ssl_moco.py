"""MoCo v3: the symmetrised InfoNCE x 2T against the paper's Alg. 1 by hand, the MLP builders, the momentum encoder."""
import numpy as np
import pytest
import torch

from histokit.models.backbones import create_encoder
from histokit.ssl.moco import MoCoV3, build_mlp, contrastive_loss


def _ctr_numpy(q, k, T):
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    k = k / np.linalg.norm(k, axis=1, keepdims=True)
    logits = q @ k.T / T
    logits = logits - logits.max(1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -np.mean(np.diag(log_p)) * 2 * T


@pytest.mark.parametrize("T", [0.2, 1.0])
def test_contrastive_loss_matches_equation(T):
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(6, 8)).astype(np.float32), rng.normal(size=(6, 8)).astype(np.float32)
    got = contrastive_loss(torch.from_numpy(q), torch.from_numpy(k), T)
    assert got.item() == pytest.approx(_ctr_numpy(q, k, T), rel=1e-5)


def test_build_mlp_matches_moco_v3():
    mlp = build_mlp(3, 16, 32, 8)
    kinds = [type(m).__name__ for m in mlp]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert all(m.bias is None for m in mlp if isinstance(m, torch.nn.Linear))
    assert not mlp[-1].affine
    assert type(build_mlp(2, 8, 32, 8, last_bn=False)[-1]).__name__ == "Linear"


def test_moco_forward_is_symmetrised_loss_with_momentum_keys():
    torch.manual_seed(0)
    method = MoCoV3(create_encoder("vit_test", img_size=32), dim=8, mlp_dim=16, temperature=0.2)
    assert len([m for m in method.projector if isinstance(m, torch.nn.Linear)]) == 3  # ViT: 3-layer projector
    x1, x2 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    torch.manual_seed(1)
    loss, _ = method([x1, x2])
    # recompute by hand from the same networks (train-mode BN: same batches -> same outputs)
    q1 = method.predictor(method.projector(method.student_encoder(x1)))
    q2 = method.predictor(method.projector(method.student_encoder(x2)))
    k1 = method.momentum_projector(method.momentum_encoder(x1))
    k2 = method.momentum_projector(method.momentum_encoder(x2))
    expected = _ctr_numpy(q1.detach().numpy(), k2.detach().numpy(), 0.2) + \
        _ctr_numpy(q2.detach().numpy(), k1.detach().numpy(), 0.2)
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    assert all(not p.requires_grad for p in method.momentum_encoder.parameters())
    assert method.eval_encoder() is method.student_encoder
    method.on_step(0, 10)
    assert method.momentum == pytest.approx(0.99)
    cnn = MoCoV3(create_encoder("resnet_test"), dim=8, mlp_dim=16)
    assert len([m for m in cnn.projector if isinstance(m, torch.nn.Linear)]) == 2  # CNN: 2-layer projector


def test_moco_rejects_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        MoCoV3(create_encoder("vit_test", img_size=32), temperature=0.0)
