"""DINO: loss against the paper's Eq. 3 evaluated by hand in NumPy, centering (Eq. 4, with and without a process
group), the head, the EMA teacher and the schedules that drive it."""
import numpy as np
import pytest
import torch

import histokit.ssl.base as ssl_base
from histokit.models.backbones import create_encoder
from histokit.ssl.dino import DINO, DINOHead, DINOLoss


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax(x, axis=-1):
    return np.log(_softmax(x, axis))


def test_dino_loss_matches_hand_computed_example():
    # 2 globals + 1 local, batch of 2, 4-dim logits, a non-zero center
    rng = np.random.default_rng(0)
    B, K = 2, 4
    student = rng.normal(size=(3 * B, K)).astype(np.float32)
    teacher = rng.normal(size=(2 * B, K)).astype(np.float32)
    center = np.array([[0.3, -0.1, 0.0, 0.2]], dtype=np.float32)
    tau_s, tau_t, m = 0.1, 0.05, 0.9

    # Eq. 3 by hand: teacher view i vs every student view v != i, averaged over the 2 * 3 - 2 = 4 pairs
    p_t = [_softmax((teacher[i * B:(i + 1) * B] - center) / tau_t) for i in range(2)]
    log_p_s = [_log_softmax(student[v * B:(v + 1) * B] / tau_s) for v in range(3)]
    terms = [(-(p_t[i] * log_p_s[v]).sum(-1)).mean() for i in range(2) for v in range(3) if v != i]
    assert len(terms) == 4
    expected = np.mean(terms)
    expected_center = m * center + (1 - m) * teacher.mean(0, keepdims=True)

    loss_fn = DINOLoss(K, student_temp=tau_s, center_momentum=m)
    loss_fn.center.copy_(torch.from_numpy(center))
    loss = loss_fn(torch.from_numpy(student), torch.from_numpy(teacher), teacher_temp=tau_t)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # Eq. 4: the center moves after (not before) the loss
    np.testing.assert_allclose(loss_fn.center.numpy(), expected_center, rtol=1e-6)


def test_dino_loss_rejects_mismatched_shapes():
    loss_fn = DINOLoss(4)
    with pytest.raises(ValueError, match="n_global_views"):
        loss_fn(torch.zeros(6, 4), torch.zeros(3, 4), 0.04)


def test_centering_all_reduces_only_with_a_process_group(monkeypatch):
    calls = []

    def fake_all_reduce(t):  # two ranks holding the same batch
        calls.append(t.shape)
        t.mul_(2)

    x = torch.arange(12.0).reshape(3, 4)
    monkeypatch.setattr(ssl_base.dist, "all_reduce", fake_all_reduce)
    # no process group (a notebook kernel): plain batch mean, no collective call
    torch.testing.assert_close(ssl_base.batch_mean_all_ranks(x), x.mean(0, keepdim=True))
    assert calls == []
    # with a group of 2 ranks: sum is all-reduced, divided by B x world size
    monkeypatch.setattr(ssl_base.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(ssl_base.dist, "get_world_size", lambda: 2)
    torch.testing.assert_close(ssl_base.batch_mean_all_ranks(x), x.mean(0, keepdim=True))
    assert calls == [torch.Size([1, 4])]


def test_dino_head_architecture_and_frozen_weight_norm():
    head = DINOHead(16, out_dim=32, hidden_dim=24, bottleneck_dim=8)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 24), (24, 24), (24, 8)]
    g = head.last_layer.parametrizations.weight.original0
    assert not g.requires_grad and torch.all(g == 1)
    out = head(torch.randn(5, 16))
    assert out.shape == (5, 32)
    # unit-norm bottleneck times unit-norm weight rows: every logit is a cosine
    assert out.abs().max() <= 1 + 1e-5
    # tokens (B, N, D) map row-wise (EsViT dense head / iBOT patch head)
    tokens = torch.randn(2, 3, 16)
    torch.testing.assert_close(head(tokens), head(tokens.reshape(6, 16)).reshape(2, 3, 32))


def _tiny_dino(**kw):
    torch.manual_seed(0)
    return DINO(create_encoder("vit_test", img_size=32), out_dim=64, hidden_dim=32, bottleneck_dim=16, **kw)


def test_teacher_is_a_frozen_copy_and_is_the_evaluated_encoder():
    method = _tiny_dino()
    assert method.eval_encoder() is method.teacher_encoder
    assert method.student_encoder is not method.teacher_encoder
    assert all(not p.requires_grad for p in method.teacher_encoder.parameters())
    for (n, ps), pt in zip(method.student_encoder.named_parameters(), method.teacher_encoder.parameters()):
        torch.testing.assert_close(ps, pt, msg=n)


def test_ema_update_and_schedules():
    method = _tiny_dino(warmup_teacher_temp_epochs=3)
    method.on_step(step=0, total_steps=10, steps_per_epoch=2)
    assert method.momentum == pytest.approx(0.996)
    assert method.teacher_temp == pytest.approx(0.04)
    assert method.last_layer_frozen
    method.on_step(step=5, total_steps=10, steps_per_epoch=2)  # epoch 2 = end of the 3-epoch warm-up
    assert method.teacher_temp == pytest.approx(0.07)
    assert method.momentum == pytest.approx(1 - 0.5 * 0.004 * (1 + np.cos(np.pi * 5 / 10)))
    assert not method.last_layer_frozen

    with torch.no_grad():
        for p in method.student_encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in method.teacher_encoder.parameters()]
    student = [p.clone() for p in method.student_encoder.parameters()]
    m = method.momentum
    method.after_step()
    for b, s, t in zip(before, student, method.teacher_encoder.parameters()):
        torch.testing.assert_close(t, m * b + (1 - m) * s)


def test_last_layer_gradients_cancelled_during_first_epoch():
    method = _tiny_dino(freeze_last_layer_epochs=1)
    views = [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32), torch.randn(2, 3, 16, 16)]
    method.on_step(0, 4, steps_per_epoch=2)
    loss, logs = method(views)
    loss.backward()
    v = method.student_head.last_layer.parametrizations.weight.original1
    assert v.grad is not None
    method.before_optimizer_step()
    assert v.grad is None
    assert set(logs) >= {"loss", "teacher_temp", "momentum"}


def test_dino_rejects_too_few_views():
    with pytest.raises(ValueError, match="at least 2 views"):
        _tiny_dino()([torch.randn(2, 3, 32, 32)])
