"""LGFFN neck (Nuñez-Fernández et al., Sensors 2025, Eq. 2-6) against the equations evaluated by hand on tiny tensors."""
import math

import pytest
import torch
from torch import nn

from histokit.models.lgffem_neck import (FastNormalizedFusion, GlobalAggregator, LGFFN, LGFFNLayer, LocalAggregator,
                                         OUTER_NODES)


def _layer_norm_channels(x, eps=1e-6):
    mu = x.mean(1, keepdim=True)
    var = x.var(1, unbiased=False, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps)


def _set(conv: nn.Conv2d, weight, bias=None):
    with torch.no_grad():
        conv.weight.copy_(torch.as_tensor(weight, dtype=torch.float32).view_as(conv.weight))
        if bias is not None:
            conv.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))


def test_local_aggregator_matches_eq_4_5_by_hand():
    torch.manual_seed(0)
    la = LocalAggregator(channels=2, hidden_ratio=1.0)
    w1, b1 = [[1.0, -2.0], [0.5, 1.5]], [0.1, -0.2]
    w2, b2 = [[2.0, 1.0], [-1.0, 0.5]], [0.0, 0.3]
    _set(la.gate.pwconv1, w1, b1)
    _set(la.gate.pwconv2, w2, b2)
    with torch.no_grad():
        la.alpha.fill_(0.25)
    x = torch.randn(1, 2, 3, 3)
    # Eq. (4): L(X) = PW(δ(PW(LN(X)))), written out per position with explicit matrices and erf-GELU.
    z = _layer_norm_channels(x)
    h = torch.einsum("oc,bchw->bohw", torch.tensor(w1), z) + torch.tensor(b1).view(1, 2, 1, 1)
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    g = torch.einsum("oc,bchw->bohw", torch.tensor(w2), h) + torch.tensor(b2).view(1, 2, 1, 1)
    expected = 0.25 * x + 0.75 * x * (1 / (1 + torch.exp(-g)))  # Eq. (5)
    torch.testing.assert_close(la(x), expected, rtol=1e-5, atol=1e-6)


def test_global_aggregator_matches_eq_2_3_by_hand():
    torch.manual_seed(1)
    ga = GlobalAggregator(channels=2, hidden_ratio=1.5)  # 3 hidden channels
    dw = torch.randn(2, 1, 3, 3)
    w1, b1 = torch.randn(3, 2), torch.randn(3)
    w2, b2 = torch.randn(2, 3), torch.randn(2)
    gamma, beta = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.1, 0.0, -0.3])
    with torch.no_grad():
        ga.gate.dwconv.weight.copy_(dw)
        _set(ga.gate.pwconv1, w1, b1)
        _set(ga.gate.pwconv2, w2, b2)
        ga.gate.grn.weight.copy_(gamma)
        ga.gate.grn.bias.copy_(beta)
        ga.alpha.fill_(-0.5)  # α is unconstrained: check both terms of Eq. (3)
    x = torch.randn(1, 2, 4, 4)
    # Depthwise 3x3 with zero padding, written as explicit sums over the 3x3 window.
    xp = torch.nn.functional.pad(x, (1, 1, 1, 1))
    d = torch.zeros_like(x)
    for c in range(2):
        for i in range(4):
            for j in range(4):
                d[0, c, i, j] = (xp[0, c, i:i + 3, j:j + 3] * dw[c, 0]).sum()
    z = _layer_norm_channels(d)
    h = torch.einsum("oc,bchw->bohw", w1, z) + b1.view(1, 3, 1, 1)
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    # GRN (ConvNeXt V2, Woo et al. 2023, Eq. 1-3): G = ||h||_2 over space, N = G / mean_c(G), out = γ·h·N + β + h.
    gx = h.pow(2).sum(dim=(2, 3), keepdim=True).sqrt()
    nx = gx / (gx.mean(dim=1, keepdim=True) + 1e-6)
    h = gamma.view(1, 3, 1, 1) * h * nx + beta.view(1, 3, 1, 1) + h
    g = torch.einsum("oc,bchw->bohw", w2, h) + b2.view(1, 2, 1, 1)
    expected = -0.5 * x + 1.5 * x * torch.sigmoid(g)
    torch.testing.assert_close(ga(x), expected, rtol=1e-4, atol=1e-5)


def test_aggregators_start_as_pure_gate():
    ga, la = GlobalAggregator(4), LocalAggregator(4)
    assert ga.alpha.item() == 0.0 and la.alpha.item() == 0.0
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(la(x), x * torch.sigmoid(la.gate(x)))


def test_fusion_node_by_hand_and_weights_normalized():
    node = FastNormalizedFusion(3, eps=1e-4, name="P2_2")
    with torch.no_grad():
        node.weight.copy_(torch.tensor([2.0, -1.0, 0.5]))  # the negative weight is ReLU'd away
    a, b, c = torch.full((1, 1, 2, 2), 1.0), torch.full((1, 1, 2, 2), 10.0), torch.full((1, 1, 2, 2), 4.0)
    expected = (2.0 * 1.0 + 0.0 * 10.0 + 0.5 * 4.0) / (2.0 + 0.0 + 0.5 + 1e-4)
    torch.testing.assert_close(node(a, b, c), torch.full((1, 1, 2, 2), expected))
    w = node.normalized_weights()
    assert (w >= 0).all()
    assert w.sum().item() == pytest.approx(1.0, abs=1e-4)
    assert w.sum().item() < 1.0  # ε keeps the denominator strictly larger
    fresh = FastNormalizedFusion(2)
    torch.testing.assert_close(fresh.normalized_weights(), torch.full((2,), 1 / (2 + 1e-4)))


def test_fusion_node_rejects_mismatched_inputs():
    node = FastNormalizedFusion(2, name="P3_1")
    with pytest.raises(ValueError, match="P3_1"):
        node(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="expects 2 inputs"):
        node(torch.zeros(1, 1, 2, 2))


def _pyramid(c=8, size=16, batch=1):
    return [torch.randn(batch, c, size >> i, size >> i, requires_grad=True) for i in range(4)]


def test_layer_shapes_and_node_dependencies_follow_eq_6():
    """Autograd reveals each node's inputs: an exact check of the Eq. (6) / BiFPN topology."""
    torch.manual_seed(0)
    layer = LGFFNLayer(8)
    inputs = _pyramid()
    captured = {}
    hooks = [m.register_forward_hook(lambda mod, i, o: captured.__setitem__(mod.name, o))
             for m in layer.nodes.values()]
    outs = layer(inputs)
    for h in hooks:
        h.remove()
    assert [tuple(o.shape) for o in outs] == [tuple(x.shape) for x in inputs]
    for name, out in zip(OUTER_NODES, outs):
        assert captured[name] is out
    # Which of P1_0..P4_0 reach each node (Eq. 6 unrolled).
    expected = {"P3_1": {3, 4}, "P2_1": {2, 3, 4}, "P1_2": {1, 2, 3, 4},
                "P2_2": {1, 2, 3, 4}, "P3_2": {1, 2, 3, 4}, "P4_2": {1, 2, 3, 4}}
    for name, sources in expected.items():
        grads = torch.autograd.grad(captured[name].sum(), inputs, retain_graph=True, allow_unused=True)
        reached = {i + 1 for i, g in enumerate(grads) if g is not None and g.abs().sum() > 0}
        assert reached == sources, name
    # Direct edges: P2_2 takes P1_2 (bottom-up) and P2_1 (lateral), P4_2 takes P3_2 but not P3_1 directly.
    direct = {"P2_2": "P1_2", "P3_2": "P2_2", "P4_2": "P3_2"}
    for node, src in direct.items():
        g = torch.autograd.grad(captured[node].sum(), captured[src], retain_graph=True)[0]
        assert g.abs().sum() > 0, f"{node} should depend on {src}"


def test_neck_stacks_layers_with_lateral_only_first():
    neck = LGFFN([3, 5, 7, 9], channels=8, num_layers=3)
    assert neck.layers[0].lateral is not None
    assert all(layer.lateral is None for layer in neck.layers[1:])
    feats = [torch.randn(2, c, 16 >> i, 16 >> i) for i, c in enumerate([3, 5, 7, 9])]
    outs = neck(feats)
    assert [tuple(o.shape) for o in outs] == [(2, 8, 16 >> i, 16 >> i) for i in range(4)]


def test_bad_configuration_errors_name_the_parameter():
    with pytest.raises(ValueError, match="num_layers"):
        LGFFN([3, 5, 7, 9], channels=8, num_layers=0)
    with pytest.raises(ValueError, match="in_channels"):
        LGFFNLayer(8, in_channels=[3, 5, 7])
    with pytest.raises(ValueError, match="hidden_ratio"):
        LocalAggregator(2, hidden_ratio=0.1)
