"""Mixed precision: under bf16 autocast the prototype logits, temperatures, softmaxes and every SSL loss stay fp32.

CUDA runs the engine's forward under bf16 autocast; CPU autocast applies the same op lists to matmuls, so the bf16
path is exercised here on the CPU: same seeded method, same batch, with and without ``torch.autocast("cpu")``.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from histokit.models.backbones import create_encoder
from histokit.ssl import create_method
from histokit.ssl.base import full_precision
from histokit.ssl.dino import DINOHead

HEAD = dict(out_dim=4096, hidden_dim=64, bottleneck_dim=32)
# name -> (encoder, method config, view size, local crops?, bound on |loss_bf16 - loss_fp32| / |loss_fp32|).
# The backbone still runs in bf16, so the bound is what its rounding leaves: the contrastive losses are more
# sensitive to it (features on a sphere at temperature 0.1 / 0.2) than the distillation losses.
CASES = {
    "dino": ("vit_test", HEAD, 32, True, 2e-3),
    "esvit": ("swin_test", HEAD, 64, True, 2e-3),
    "ibot": ("vit_test", HEAD, 32, True, 2e-3),
    "moco": ("vit_test", dict(dim=32, mlp_dim=64), 32, False, 1e-2),
    "simclr": ("resnet_test", dict(temperature=0.1), 32, False, 1e-2),
    "mae": ("vit_test", dict(decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2), 32, False, 2e-3),
}


def _method_and_views(name):
    encoder, cfg, size, local, _ = CASES[name]
    torch.manual_seed(0)
    method = create_method(name, create_encoder(encoder, img_size=size), **cfg)
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(8, 3, size, size, generator=g) for _ in range(2)]
    if local:
        views += [torch.randn(8, 3, size // 2, size // 2, generator=g) for _ in range(2)]
    return method, views


def _loss(method, views, amp: bool):
    torch.manual_seed(5)  # the same iBOT masks / MAE noise in both runs
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        return method(views)[0]


@pytest.mark.parametrize("name", sorted(CASES))
def test_bf16_autocast_loss_is_close_to_fp32(name):
    method, views = _method_and_views(name)
    loss32 = _loss(copy.deepcopy(method), views, amp=False)
    amp_method = copy.deepcopy(method)
    loss16 = _loss(amp_method, views, amp=True)
    assert loss16.dtype == torch.float32
    rel = abs(loss16.item() - loss32.item()) / abs(loss32.item())
    assert rel < CASES[name][-1], f"{name}: bf16 loss {loss16.item():.6f} vs fp32 {loss32.item():.6f} (rel {rel:.2e})"
    loss16.backward()  # the fp32 islands inside a bf16 graph still backpropagate
    grads = [p.grad for p in amp_method.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ["dino", "esvit", "ibot"])
def test_prototype_logits_are_fp32_under_autocast(name):
    method, views = _method_and_views(name)
    heads = [m for m in method.modules() if isinstance(m, DINOHead)]
    assert len(heads) == (4 if name == "esvit" else 2)  # student + teacher (+ dense pair)
    seen = []
    for head in heads:
        head.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    loss = _loss(method, views, amp=True)
    assert seen and set(seen) == {torch.float32}, seen
    assert loss.dtype == torch.float32


@pytest.mark.parametrize("name", ["moco", "simclr"])
def test_contrastive_logits_are_fp32_under_autocast(name, monkeypatch):
    # the losses cast q, k to fp32, but an autocast matmul would turn q @ k^T back into bf16
    seen = []
    real = F.cross_entropy

    def spy(logits, *args, **kwargs):
        seen.append(logits.dtype)
        return real(logits, *args, **kwargs)

    monkeypatch.setattr(F, "cross_entropy", spy)
    method, views = _method_and_views(name)
    loss = _loss(method, views, amp=True)
    assert seen and set(seen) == {torch.float32}, seen
    assert loss.dtype == torch.float32


def test_full_precision_switches_autocast_off_inside_only():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
        with full_precision():
            assert not torch.is_autocast_enabled("cpu")
            assert (a @ b).dtype == torch.float32
        assert torch.is_autocast_enabled("cpu")
    with full_precision():  # no autocast around: nothing to switch off
        assert (a @ b).dtype == torch.float32
