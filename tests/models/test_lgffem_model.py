"""LGFFEM model: GeM head (Eq. 7), frozen backbone, 2048-d descriptor, kit registry and Encoder contract."""
import pytest
import torch
import torch.nn.functional as F

from histokit.models.backbones import create_encoder, list_encoders
from histokit.models.base import Encoder
from histokit.models.lgffem import LGFFEM
from histokit.models.lgffem_head import GeM, GeMMiniHead


def test_gem_is_average_pool_at_p1_and_tends_to_max_pool():
    x = torch.rand(2, 3, 5, 5) + 0.01
    torch.testing.assert_close(GeM(p=1.0)(x), F.adaptive_avg_pool2d(x, 1).flatten(1))
    mx = F.adaptive_max_pool2d(x, 1).flatten(1)
    gaps = [(mx - GeM(p=p)(x)).abs().max().item() for p in (4.6, 20.0, 200.0)]
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 0.03 * mx.max().item()
    # GeM p = 4.6 by hand: (mean x^p)^(1/p) over the 25 positions.
    torch.testing.assert_close(GeM(p=4.6)(x), x.pow(4.6).mean(dim=(2, 3)).pow(1 / 4.6))
    assert GeM().p.requires_grad and GeM().p.item() == pytest.approx(4.6)
    with pytest.raises(ValueError, match="p="):
        GeM(p=0)


def test_mini_head_is_fc_l2_fc_of_gem():
    torch.manual_seed(0)
    head = GeMMiniHead(4).eval()
    x = torch.rand(3, 4, 2, 2)
    g = x.clamp(min=1e-6).pow(4.6).mean(dim=(2, 3)).pow(1 / 4.6)
    bn = head.bn
    g = (g - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    z = g @ head.fc.weight.T + head.fc.bias
    z = z / z.norm(dim=1, keepdim=True)
    torch.testing.assert_close(head(x), z @ head.fc_out.weight.T + head.fc_out.bias)


@pytest.fixture(scope="module")
def paper_width_model():
    # The paper's neck/head widths (3 layers at C_in = 512 -> 2048-d) on the smallest ConvNeXt V2 backbone.
    torch.manual_seed(0)
    return LGFFEM("convnextv2_atto", channels=512, num_layers=3).eval()


def test_descriptor_is_2048_d_and_outer_nodes_accessible(paper_width_model):
    m = paper_width_model
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = m(x)
        layers = m.neck_outputs(x)
    assert out.shape == (2, 2048) and m.embed_dim == 2048
    assert len(layers) == 3
    assert [tuple(t.shape) for t in layers[-1].values()] == [(2, 512, 16 >> i, 16 >> i) for i in range(4)]
    assert list(layers[0]) == ["P1_2", "P2_2", "P3_2", "P4_2"]
    assert [list(d) for d in m.outer_node_modules()] == [list(layers[0])] * 3
    torch.testing.assert_close(m.forward_tokens(x).pooled, out)


def test_backbone_frozen_and_stays_in_eval_mode():
    m = create_encoder("lgffem_test")
    assert isinstance(m, Encoder)
    m.train()
    assert not m.backbone.training and m.neck.training and m.head.training
    assert not any(p.requires_grad for p in m.backbone.parameters())
    assert all(p.requires_grad for p in m.neck.parameters())
    m(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is None for p in m.backbone.parameters())
    assert m.neck.layers[0].nodes["P3_1"].weight.grad is not None
    assert m.backbone.feature_info.channels() == [40, 80, 160, 320]


def test_registry_and_contract():
    assert {"lgffem_base", "lgffem_test"} <= set(list_encoders())
    m = create_encoder("lgffem_test").eval()
    out = m.forward_tokens(torch.randn(1, 3, 64, 64))
    assert out.pooled.shape == (1, 128) and out.patch_tokens is None and out.cls_tokens is None
    with pytest.raises(NotImplementedError):
        m.forward_tokens(torch.randn(1, 3, 64, 64), mask=torch.zeros(1, 4, dtype=torch.bool))


def test_bad_inputs_raise_named_errors():
    m = create_encoder("lgffem_test").eval()
    with pytest.raises(ValueError, match="multiples of 32"):
        m(torch.randn(1, 3, 70, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        m(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="backbone_name"):
        LGFFEM("no_such_backbone_xyz")


def test_trainable_state_dict_round_trip():
    torch.manual_seed(0)
    a = create_encoder("lgffem_test").eval()
    b = create_encoder("lgffem_test").eval()
    b.backbone.load_state_dict(a.backbone.state_dict())
    sd = a.trainable_state_dict()
    assert sd and not any(k.startswith("backbone.") for k in sd)
    b.load_trainable_state_dict(sd)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(a(x), b(x))
    with pytest.raises(ValueError, match="missing"):
        b.load_trainable_state_dict({k: v for k, v in sd.items() if not k.startswith("head.")})


def test_lgffem_base_is_the_papers_configuration():
    with torch.device("meta"):  # shapes only: no memory, no download
        m = create_encoder("lgffem_base")
    assert m.backbone.feature_info.channels() == [128, 256, 512, 1024]
    # The ffnir code lists convnextv2_base.fcmae at 87,690,752 parameters: the same frozen backbone.
    assert sum(p.numel() for p in m.backbone.parameters()) == 87_690_752
    assert len(m.neck.layers) == 3 and m.embed_dim == 2048
    assert len(m.head.heads) == 4 and m.head.heads[0].gem.eps == 1e-6
    # Neck + head trainable parameters with the paper's r = 2 reduction (documented in lgffem_neck, note 3).
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 18_126_936
