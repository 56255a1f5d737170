"""CypherViT (Ye et al. 2024): shapes, Eq. (1)-(2) against a by-hand evaluation, the softmax axis, the [cls] token
hierarchy, gradient flow, attention maps, iBOT masking, and the registry."""
from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import to_tensor

import histokit.models  # noqa: F401  (registers the encoders)
from histokit.models import cyphervit as cyphervit_module
from histokit.models.backbones import create_encoder, list_encoders
from histokit.models.checkpoints import load_into
from histokit.models.cyphervit import CypherViT, SemanticClusteringBlock
from histokit.paths import BUNDLED_TILES_DIR

IMG = 64  # 4 x 4 patches of 16 px


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return create_encoder("cyphervit_test", img_size=IMG).eval()


def _real_tiles(n: int = 2, size: int = IMG) -> torch.Tensor:
    """A few bundled Kather 2016 H&E tiles, resized, normalised with mean = std = 0.5."""
    paths = sorted(BUNDLED_TILES_DIR.rglob("*.png"))[:n]
    assert len(paths) == n, f"bundled tiles missing under {BUNDLED_TILES_DIR}"
    return torch.stack([(to_tensor(Image.open(p).convert("RGB").resize((size, size))) - 0.5) / 0.5 for p in paths])


def test_output_shapes_and_pooling(model):
    x = _real_tiles()
    out = model.forward_tokens(x)
    assert out.pooled.shape == (2, 32) and out.cls_tokens.shape == (2, 4, 32)
    assert out.patch_tokens.shape == (2, 16, 32) and out.grid_size == (4, 4)
    # the embedding is the average pooling of the final [cls] tokens
    torch.testing.assert_close(out.pooled, out.cls_tokens.mean(1))
    torch.testing.assert_close(model(x), out.pooled)
    # DINO's local crops are smaller: the position embedding is resampled
    small = model.forward_tokens(torch.randn(2, 3, 96, 96))
    assert small.grid_size == (6, 6) and small.pooled.shape == (2, 32)


def test_cls_tokens_per_stage_decrease_and_final_count_is_a_parameter():
    for final in (4, 8):  # Table 4's two settings
        m = create_encoder("cyphervit_test", img_size=IMG, num_final_cls=final)
        assert [s.num_cls for s in m.stages] == [16, final]
        assert m.forward_tokens(torch.randn(1, 3, IMG, IMG)).cls_tokens.shape[1] == final
    three = CypherViT(img_size=IMG, embed_dim=16, depths=(1, 1, 1), num_heads=2, num_cls=(8, 4, 2))
    assert [a.shape[-1] for a in three.cluster_assignments(torch.randn(1, 3, IMG, IMG))] == [8, 4, 2]
    for bad in [(4, 4), (4, 8)]:
        with pytest.raises(ValueError, match="num_cls must decrease"):
            CypherViT(img_size=IMG, embed_dim=16, depths=(1, 1), num_heads=2, num_cls=bad)
    with pytest.raises(ValueError, match="one entry per stage"):
        CypherViT(img_size=IMG, embed_dim=16, depths=(1, 1), num_heads=2, num_cls=(4,))


def test_eq1_eq2_match_hand_evaluation():
    """Eq. (1) and Eq. (2) written out with explicit sums over i, j, u on a tiny tensor."""
    torch.manual_seed(1)
    dim, n_tokens, n_cls = 4, 5, 3
    block = SemanticClusteringBlock(dim, n_cls).double()
    with torch.no_grad():
        block.gamma.copy_(torch.tensor([0.5, -1.0, 2.0]))
    P, C = torch.randn(1, n_tokens, dim).double(), torch.randn(1, n_cls, dim).double()
    new_C, attn = block(P, C)

    with torch.no_grad():
        Wp_P = block.w_p(block.norm_tokens(P))[0]
        Wc_C = block.w_c(block.norm_cls(C))[0]
        Wv_P = block.w_v(block.norm_tokens(P))[0]
    s, gamma = dim ** -0.5, block.gamma.detach()
    expected_attn = torch.zeros(n_tokens, n_cls, dtype=torch.double)
    for i in range(n_tokens):
        denom = sum(math.exp(float(Wp_P[i] @ Wc_C[u]) * s + float(gamma[u])) for u in range(n_cls))
        for j in range(n_cls):
            expected_attn[i, j] = math.exp(float(Wp_P[i] @ Wc_C[j]) * s + float(gamma[j])) / denom
    torch.testing.assert_close(attn[0].detach(), expected_attn)
    for j in range(n_cls):
        weighted = sum(expected_attn[i, j] * Wv_P[i] for i in range(n_tokens)) / expected_attn[:, j].sum()
        with torch.no_grad():
            torch.testing.assert_close(new_C[0, j].detach(), C[0, j] + block.w(weighted))


def test_eq1_softmax_is_over_cls_tokens_not_patches(model):
    attn = model.cluster_assignments(_real_tiles())
    assert attn[0].shape == (2, 16, 16) and attn[1].shape == (2, 16, 4)  # (B, inputs, [cls] tokens)
    for a in attn:
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:2]))  # each patch: one unit over clusters
        assert not torch.allclose(a.sum(1), torch.ones(a.shape[0], a.shape[2]), atol=1e-3)


def test_gradients_reach_every_cls_token_and_gamma(model):
    model.train()
    out = model.forward_tokens(torch.randn(2, 3, IMG, IMG))
    (out.pooled * torch.randn_like(out.pooled)).sum().backward()
    for k, stage in enumerate(model.stages):
        per_token = stage.cls_tokens.grad[0].norm(dim=-1)
        assert (per_token > 0).all(), f"stage {k}: a [cls] token receives no gradient"
        # gamma_j shifts every logit of token j: under the paper's softmax over j it matters; over the patch
        # axis it would cancel and its gradient would be exactly zero
        assert (stage.clustering.gamma.grad.abs() > 1e-7).all(), f"stage {k}: gamma gets no gradient"
    assert model.pos_embed.grad.abs().sum() > 0


def test_attention_maps_per_stage(model):
    x = _real_tiles()
    maps = model.attention_maps(x)
    assert [m.shape for m in maps] == [(2, 16, 4, 4), (2, 4, 4, 4)]
    a0, a1 = model.cluster_assignments(x)
    torch.testing.assert_close(maps[0], a0.transpose(1, 2).reshape(2, 16, 4, 4))
    torch.testing.assert_close(maps[1], (a0 @ a1).transpose(1, 2).reshape(2, 4, 4, 4))
    for m in maps:  # composed maps stay a distribution over the stage's tokens at every patch
        torch.testing.assert_close(m.sum(1), torch.ones(2, 4, 4))


def test_ibot_mask_replaces_patches_with_learned_token(model):
    x = _real_tiles()
    none = torch.zeros(2, 16, dtype=torch.bool)
    torch.testing.assert_close(model(x), model.forward_tokens(x, mask=none).pooled)
    some = none.clone()
    some[:, :8] = True
    assert not torch.allclose(model(x), model.forward_tokens(x, mask=some).pooled)
    # with every patch masked, the image content is gone: two different images give the same output
    everything = torch.ones(2, 16, dtype=torch.bool)
    out = model.forward_tokens(x, mask=everything).pooled
    torch.testing.assert_close(out[0], out[1])
    # out.sum() through the final LayerNorm is identically zero at init (weight 1, bias 0), so its true gradient is
    # zero: a fixed random projection of the output is a loss that genuinely depends on the [MASK] token
    projection = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    (out * projection).sum().backward()
    assert model.mask_token.grad.abs().sum() > 1e-6
    with pytest.raises(ValueError, match="mask must be a bool tensor of shape"):
        model.forward_tokens(x, mask=torch.zeros(2, 15, dtype=torch.bool))


def test_registry_and_small_config():
    assert {"cyphervit_small", "cyphervit_test"} <= set(list_encoders())
    m = create_encoder("cyphervit_small")
    assert m.embed_dim == 384 and m.patch_size == 16 and sum(m.depths) == 12
    assert m.stages[0].blocks[0].attn.num_heads == 6 and [s.num_cls for s in m.stages] == [64, 4]
    assert [s.num_cls for s in create_encoder("cyphervit_small", num_final_cls=8).stages] == [64, 8]


def test_state_dict_round_trip_through_load_into(model):
    x = torch.randn(1, 3, IMG, IMG)
    fresh = create_encoder("cyphervit_test", img_size=IMG).eval()
    report = load_into(fresh, model.state_dict())
    assert report.missing == [] and report.unexpected == []
    torch.testing.assert_close(fresh(x), model(x))


def test_module_docstring_maps_code_to_the_paper():
    doc = cyphervit_module.__doc__
    for ref in ["Eq. (1)", "Eq. (2)", "Eq. (3)", "Alg. 1", "concat(x, multicls_token)", "split(cat_x)",
                "MultiHeadAttnBlock", "initialize(multicls_token)", "average pooling", "Table 4", "gamma"]:
        assert ref in doc, f"module docstring does not map {ref!r}"
    assert "softmax over the [cls]" in doc
