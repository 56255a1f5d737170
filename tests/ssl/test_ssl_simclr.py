"""SimCLR: NT-Xent parity with pytorch-metric-learning's NTXentLoss (an independent implementation) and the head."""
import pytest
import torch
from pytorch_metric_learning.losses import NTXentLoss

from histokit.models.backbones import create_encoder
from histokit.ssl.simclr import ProjectionHead, SimCLR, nt_xent_loss


@pytest.mark.parametrize("temperature", [0.1, 0.5])
@pytest.mark.parametrize("n", [2, 7])
def test_nt_xent_parity_with_pytorch_metric_learning(temperature, n):
    g = torch.Generator().manual_seed(n)
    z1, z2 = torch.randn(n, 16, generator=g), torch.randn(n, 16, generator=g)
    labels = torch.cat([torch.arange(n), torch.arange(n)])  # the two views of image i share label i
    reference = NTXentLoss(temperature=temperature)(torch.cat([z1, z2]), labels)
    torch.testing.assert_close(nt_xent_loss(z1, z2, temperature), reference, rtol=1e-5, atol=1e-6)


def test_nt_xent_rejects_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        nt_xent_loss(torch.randn(2, 4), torch.randn(2, 4), 0.0)
    with pytest.raises(ValueError, match="two views"):
        nt_xent_loss(torch.randn(2, 4), torch.randn(3, 4))


def test_projection_head_is_one_hidden_layer_to_128():
    head = ProjectionHead(32)
    assert [type(m).__name__ for m in head] == ["Linear", "ReLU", "Linear"]
    assert head[0].out_features == 32 and head[2].out_features == 128


def test_simclr_forward_uses_projections_of_both_views():
    torch.manual_seed(0)
    method = SimCLR(create_encoder("resnet_test"), temperature=0.1)
    x1, x2 = torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)
    method.eval()  # BN in eval mode so the separate recomputation below sees the same statistics
    loss, logs = method([x1, x2])
    z1 = method.projection_head(method.student_encoder(x1))
    z2 = method.projection_head(method.student_encoder(x2))
    torch.testing.assert_close(loss, nt_xent_loss(z1, z2, 0.1))
    assert method.eval_encoder() is method.student_encoder
