"""EsViT: region matching by backbone cosine similarity, the region loss and the 0.5 / 0.5 view + region loss with
separate centers, each against a hand computation (Li et al. 2022, main_esvit.py DDINOLoss)."""
import numpy as np
import pytest
import torch

from histokit.models.backbones import create_encoder
from histokit.ssl.esvit import EsViT, EsViTLoss, match_regions, region_loss


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _cos_argmax(s, t):
    sn = s / np.linalg.norm(s, axis=-1, keepdims=True)
    tn = t / np.linalg.norm(t, axis=-1, keepdims=True)
    return (sn @ tn.T).argmax(-1)


# 3 teacher regions; the largest-magnitude one would win a dot product for every student region, cosine picks
# the direction: student 0 -> teacher 1, student 1 -> teacher 2, student 2 -> teacher 0.
TEACHER_FEATS = np.array([[3.0, 3.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
STUDENT_FEATS = np.array([[1.0, 0.1], [0.1, 1.0], [1.0, 1.1]], dtype=np.float32)


def test_region_matching_picks_argmax_cosine_not_dot_product():
    idx = match_regions(torch.from_numpy(STUDENT_FEATS)[None], torch.from_numpy(TEACHER_FEATS)[None])
    assert idx.tolist() == [[1, 2, 0]]
    assert (STUDENT_FEATS @ TEACHER_FEATS.T).argmax(-1).tolist() == [0, 0, 0]  # the dot product would differ


def test_region_loss_hand_computed():
    rng = np.random.default_rng(1)
    s_logits = rng.normal(size=(1, 3, 4)).astype(np.float32)
    t_probs = _softmax(rng.normal(size=(1, 3, 4))).astype(np.float32)
    matched = t_probs[0, [1, 2, 0]]
    log_p = np.log(_softmax(s_logits[0]))
    expected = (-(matched * log_p).sum(-1)).mean()
    got = region_loss(torch.from_numpy(s_logits), torch.from_numpy(t_probs), torch.from_numpy(STUDENT_FEATS)[None],
                      torch.from_numpy(TEACHER_FEATS)[None])
    assert got.shape == (1,)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_esvit_loss_is_half_view_half_region_with_separate_centers():
    rng = np.random.default_rng(2)
    K, D, tau_s, tau_t, m = 4, 2, 0.1, 0.05, 0.9
    n_regions = [3, 3, 2]  # 2 global views with 3 regions, 1 local view with 2
    s_view = [rng.normal(size=(1, K)).astype(np.float32) for _ in range(3)]
    s_region = [rng.normal(size=(1, n, K)).astype(np.float32) for n in n_regions]
    s_feat = [rng.normal(size=(1, n, D)).astype(np.float32) for n in n_regions]
    t_view = [rng.normal(size=(1, K)).astype(np.float32) for _ in range(2)]
    t_region = [rng.normal(size=(1, 3, K)).astype(np.float32) for _ in range(2)]
    t_feat = [rng.normal(size=(1, 3, D)).astype(np.float32) for _ in range(2)]
    c_view = np.array([[0.1, 0.0, -0.2, 0.3]], dtype=np.float32)
    c_grid = np.array([[-0.3, 0.2, 0.0, 0.1]], dtype=np.float32)

    terms = []
    for i in range(2):
        q_view = _softmax((t_view[i] - c_view) / tau_t)
        q_region = _softmax((t_region[i][0] - c_grid) / tau_t)
        for v in range(3):
            if v == i:
                continue
            h_view = -(q_view * np.log(_softmax(s_view[v] / tau_s))).sum()
            j = _cos_argmax(s_feat[v][0], t_feat[i][0])
            h_region = (-(q_region[j] * np.log(_softmax(s_region[v][0] / tau_s))).sum(-1)).mean()
            terms.append(0.5 * h_view + 0.5 * h_region)
    expected = np.mean(terms)

    loss_fn = EsViTLoss(K, student_temp=tau_s, center_momentum=m)
    loss_fn.center.copy_(torch.from_numpy(c_view))
    loss_fn.center_grid.copy_(torch.from_numpy(c_grid))
    t = lambda xs: [torch.from_numpy(x) for x in xs]  # noqa: E731
    loss, logs = loss_fn(t(s_view), t(s_region), t(s_feat), t(t_view), t(t_region), t(t_feat), tau_t)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert set(logs) == {"view_loss", "region_loss"}
    np.testing.assert_allclose(loss_fn.center.numpy(), m * c_view + (1 - m) * np.concatenate(t_view).mean(0),
                               rtol=1e-6)
    all_regions = np.concatenate([r[0] for r in t_region])  # every region row of every teacher view
    np.testing.assert_allclose(loss_fn.center_grid.numpy(), m * c_grid + (1 - m) * all_regions.mean(0), rtol=1e-6)


def test_esvit_on_swin_has_dense_heads_and_evaluates_teacher():
    torch.manual_seed(0)
    method = EsViT(create_encoder("swin_test", img_size=64), out_dim=32, hidden_dim=32, bottleneck_dim=16)
    assert method.eval_encoder() is method.teacher_encoder
    assert method.student_dense_head is not method.student_head
    views = [torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64), torch.randn(2, 3, 32, 32)]
    loss, logs = method(views)
    assert torch.isfinite(loss) and {"view_loss", "region_loss"} <= set(logs)
    loss.backward()
    assert method.student_dense_head.mlp[0].weight.grad is not None
    before = method.teacher_dense_head.mlp[0].weight.clone()
    with torch.no_grad():
        method.student_dense_head.mlp[0].weight.add_(1.0)
    method.after_step()
    assert not torch.equal(before, method.teacher_dense_head.mlp[0].weight)


def _loss_per_pair(loss_fn, s_view, s_region, s_feat, t_view, t_region, t_feat, teacher_temp):
    """EsViTLoss before each student view's log-softmax was shared (037b74d): per teacher-student pair an fp32 copy,
    a log-softmax and a gather of the matched teacher rows (benchmarks/bench_esvit_region_loss.py measures both)."""
    import torch.nn.functional as F

    from histokit.ssl.dino import cross_entropy_soft

    total, n = 0.0, 0
    for iq in range(len(t_view)):
        q_view = F.softmax((t_view[iq] - loss_fn.center) / teacher_temp, dim=-1)
        q_region = F.softmax((t_region[iq] - loss_fn.center_grid) / teacher_temp, dim=-1)
        for v in range(len(s_view)):
            if v == iq:
                continue
            idx = match_regions(s_feat[v], t_feat[iq])
            matched = torch.gather(q_region, 1, idx.unsqueeze(-1).expand(-1, -1, q_region.shape[-1]))
            view_term = cross_entropy_soft(q_view, s_view[v].float() / loss_fn.student_temp)
            region_term = cross_entropy_soft(matched, s_region[v].float() / loss_fn.student_temp).mean(-1)
            total, n = total + (0.5 * view_term + 0.5 * region_term).mean(), n + 1
    return total / n


def test_shared_log_softmax_gives_the_per_pair_loss_and_gradients():
    g = torch.Generator().manual_seed(3)
    B, K, D, regions = 3, 50, 8, [4, 4, 2, 2]  # 2 global views of 4 regions, 2 local of 2
    s_view = [torch.randn(B, K, generator=g).requires_grad_() for _ in regions]
    s_region = [torch.randn(B, t, K, generator=g).requires_grad_() for t in regions]
    s_feat = [torch.randn(B, t, D, generator=g) for t in regions]
    t_view = [torch.randn(B, K, generator=g) for _ in range(2)]
    t_region = [torch.randn(B, 4, K, generator=g) for _ in range(2)]
    t_feat = [torch.randn(B, 4, D, generator=g) for _ in range(2)]
    loss_fn = EsViTLoss(K)
    loss_fn.center.normal_(generator=g), loss_fn.center_grid.normal_(generator=g)
    want = _loss_per_pair(loss_fn, s_view, s_region, s_feat, t_view, t_region, t_feat, 0.04)
    want_grads = torch.autograd.grad(want, s_view + s_region)
    got = loss_fn(s_view, s_region, s_feat, t_view, t_region, t_feat, 0.04)[0]
    got_grads = torch.autograd.grad(got, s_view + s_region)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)  # float32 summation order only
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
