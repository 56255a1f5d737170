"""Retrieval metrics: docs/protocols.md's worked example, parity with torchmetrics / scikit-learn, a per-query loop,
self-exclusion in the leave-one-out protocol."""
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, ndcg_score
from torchmetrics.functional.retrieval import (
    retrieval_average_precision,
    retrieval_normalized_dcg,
    retrieval_precision,
)

from histokit.retrieval.index import build_index
from histokit.retrieval.metrics import (
    AP_NORMALIZATIONS,
    average_precision_at_k,
    count_relevant,
    evaluate_retrieval,
    ndcg_at_k,
    precision_at_k,
    relevance_matrix,
    retrieval_latency_ms,
    retrieval_scores,
    summarize,
)

# docs/protocols.md: relevance 1 0 1 0 0 in the top 5, R = 4.
EXAMPLE_REL = np.array([[1, 0, 1, 0, 0]], dtype=bool)
EXAMPLE_R = np.array([4])


@pytest.mark.parametrize(
    "normalization, expected", [("hits", 0.8333), ("R", 0.4167), ("min_k_R", 0.4167), ("k", 0.3333)]
)
def test_ap_worked_example_all_normalizations(normalization, expected):
    ap = average_precision_at_k(EXAMPLE_REL, EXAMPLE_R, 5, normalization)
    assert ap[0] == pytest.approx(expected, abs=5e-5)


def test_ap_min_k_r_differs_from_r_when_r_exceeds_k():
    # Hand case: 1 1 0 in the top 3, R = 10: sum P@i = 2; Z = 2 (hits), 10 (R), 3 (min(k, R)), 3 (k).
    rel = np.array([[1, 1, 0]], dtype=bool)
    got = {n: average_precision_at_k(rel, [10], 3, n)[0] for n in AP_NORMALIZATIONS}
    assert got == pytest.approx({"hits": 1.0, "R": 0.2, "min_k_R": 2 / 3, "k": 2 / 3})


def test_ndcg_worked_example():
    assert ndcg_at_k(EXAMPLE_REL, EXAMPLE_R, 5)[0] == pytest.approx(0.5856, abs=5e-5)


def test_perfect_ranking_scores_one_and_no_relevant_scores_zero():
    rel = np.array([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=bool)
    r = np.array([3, 0])
    for n in ("hits", "R", "min_k_R"):
        assert average_precision_at_k(rel, r, 5, n).tolist() == [1.0, 0.0]
    assert ndcg_at_k(rel, r, 5).tolist() == [1.0, 0.0]
    assert precision_at_k(rel, 5).tolist() == [0.6, 0.0]


def _random_rankings(n_queries=40, n_gallery=50, n_classes=4, seed=0):
    rng = np.random.default_rng(seed)
    preds = rng.uniform(0.01, 1.0, size=(n_queries, n_gallery))  # positive: torchmetrics ignores preds <= 0
    gallery_labels = rng.integers(0, n_classes, n_gallery)
    query_labels = rng.integers(0, n_classes, n_queries)
    target = gallery_labels[None, :] == query_labels[:, None]
    ids = np.argsort(-preds, axis=1)
    return preds, target, gallery_labels, query_labels, ids


@pytest.mark.parametrize("k", [1, 5, 10])
def test_parity_with_torchmetrics_on_random_rankings(k):
    preds, target, gallery_labels, query_labels, ids = _random_rankings(seed=k)
    ours = retrieval_scores(gallery_labels, ids, query_labels, k, ap_normalization="hits")
    tm_ap = [retrieval_average_precision(torch.tensor(p), torch.tensor(t), top_k=k).item() for p, t in zip(preds, target)]
    tm_p = [retrieval_precision(torch.tensor(p), torch.tensor(t), top_k=k).item() for p, t in zip(preds, target)]
    tm_ndcg = [retrieval_normalized_dcg(torch.tensor(p), torch.tensor(t), top_k=k).item() for p, t in zip(preds, target)]
    np.testing.assert_allclose(ours[f"AP@{k}"], tm_ap, atol=1e-6)
    np.testing.assert_allclose(ours[f"P@{k}"], tm_p, atol=1e-6)
    np.testing.assert_allclose(ours[f"nDCG@{k}"], tm_ndcg, atol=1e-6)
    assert ours["n_relevant"].tolist() == target.sum(1).tolist()


def test_full_depth_ap_equals_sklearn_average_precision_and_ndcg_equals_sklearn():
    # At k = gallery size, AP normalized by R is the classical AP (scikit-learn, no ties in the scores).
    preds, target, gallery_labels, query_labels, ids = _random_rankings(seed=7)
    n = preds.shape[1]
    ours = retrieval_scores(gallery_labels, ids, query_labels, n, ap_normalization="R")
    keep = target.any(1)
    sk = [average_precision_score(t, p) for t, p in zip(target[keep], preds[keep])]
    np.testing.assert_allclose(ours[f"AP@{n}"][keep], sk, atol=1e-9)
    ours10 = retrieval_scores(gallery_labels, ids, query_labels, 10)
    sk_ndcg = [ndcg_score(t[None].astype(float), p[None], k=10) for t, p in zip(target[keep], preds[keep])]
    np.testing.assert_allclose(ours10["nDCG@10"][keep], sk_ndcg, atol=1e-9)


def _loop_metrics(rel_row, r, k, normalization):
    """The textbook per-query formulation, written independently of the vectorized code."""
    hits, precisions = 0, []
    for i in range(k):
        if rel_row[i]:
            hits += 1
            precisions.append(hits / (i + 1))
    z = {"hits": hits, "R": r, "min_k_R": min(k, r), "k": k}[normalization]
    ap = sum(precisions) / z if z else 0.0
    dcg = sum(1 / np.log2(i + 2) for i in range(k) if rel_row[i])
    idcg = sum(1 / np.log2(i + 2) for i in range(min(k, r)))
    return ap, hits / k, (dcg / idcg if idcg else 0.0)


@pytest.mark.parametrize("normalization", AP_NORMALIZATIONS)
def test_vectorized_matches_per_query_loop(normalization):
    preds, target, gallery_labels, query_labels, ids = _random_rankings(n_queries=60, seed=3)
    k = 10
    ours = retrieval_scores(gallery_labels, ids, query_labels, k, ap_normalization=normalization)
    for q in range(len(query_labels)):
        ap, p, nd = _loop_metrics(target[q][ids[q]], int(target[q].sum()), k, normalization)
        assert ours[f"AP@{k}"][q] == pytest.approx(ap)
        assert ours[f"P@{k}"][q] == pytest.approx(p)
        assert ours[f"nDCG@{k}"][q] == pytest.approx(nd)


def test_relevance_matrix_and_count_relevant():
    rel = relevance_matrix(np.array([[0, 1, 1], [2, 2, 0]]), np.array([1, 2]))
    assert rel.tolist() == [[False, True, True], [True, True, False]]
    assert count_relevant(np.array([0, 1, 1, 2, 2, 2]), np.array([2, 1, 5])).tolist() == [3, 2, 0]


def test_faiss_padding_ids_are_not_relevant():
    gallery_labels = np.array([0, 0, 1])
    ids = np.array([[0, -1, -1]])
    out = retrieval_scores(gallery_labels, ids, np.array([1]), 3)  # label of row -1 (=2) is 1: must not count
    assert out["hits@3"].tolist() == [0]


def test_bad_inputs_name_the_parameter():
    with pytest.raises(ValueError, match="normalization"):
        average_precision_at_k(EXAMPLE_REL, EXAMPLE_R, 5, "mean")
    with pytest.raises(ValueError, match="n_relevant"):
        average_precision_at_k(EXAMPLE_REL, None, 5, "R")
    with pytest.raises(ValueError, match=r"n_relevant\[0\]=1 is smaller"):
        ndcg_at_k(EXAMPLE_REL, [1], 5)
    with pytest.raises(ValueError, match="fewer than k=6"):
        precision_at_k(EXAMPLE_REL, 6)


def test_summarize_names_columns_like_the_paper():
    means = summarize({"AP@10": np.array([0.5, 1.0]), "P@10": np.array([0.2, 0.4]), "n_relevant": np.array([3, 4])})
    assert means == pytest.approx({"mAP@10": 0.75, "P@10": 0.3})


def test_evaluate_retrieval_same_set_never_hits_self_and_counts_r_without_self():
    # Three well-separated clusters of 5 near-identical points; every other member of a cluster is relevant.
    rng = np.random.default_rng(0)
    centers = np.eye(3, 8, dtype=np.float32) * 10
    labels = np.repeat(np.arange(3), 5)
    feats = centers[labels] + rng.normal(scale=0.01, size=(15, 8)).astype(np.float32)
    res = evaluate_retrieval(feats, labels, feats, labels, k=4, same_set=True)
    assert not (res.ids == np.arange(15)[:, None]).any()
    assert res.per_query["n_relevant"].tolist() == [4] * 15
    assert res.means == pytest.approx({"mAP@4": 1.0, "P@4": 1.0, "nDCG@4": 1.0})
    # Without exclusion the query finds itself first and R counts it: the naive protocol, also perfect here,
    # but its top-k ids contain the query.
    naive = evaluate_retrieval(feats, labels, feats, labels, k=4, same_set=False)
    assert (naive.ids[:, 0] == np.arange(15)).all()


def test_evaluate_retrieval_self_exclusion_changes_precision():
    # Singleton class: with itself excluded, the query has no relevant item at all.
    feats = np.array([[1, 0], [0.9, 0.1], [0.8, 0.2], [0, 1]], dtype=np.float32)
    labels = np.array([0, 1, 1, 2])
    res = evaluate_retrieval(feats, labels, feats, labels, k=2, same_set=True)
    assert res.per_query["n_relevant"].tolist() == [0, 1, 1, 0]
    assert res.per_query["P@2"].tolist() == [0.0, 0.5, 0.5, 0.0]
    assert res.ap_normalization == "min_k_R" and res.search_seconds >= 0


def test_evaluate_retrieval_rejects_mismatched_same_set():
    f = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="same_set"):
        evaluate_retrieval(f, np.arange(4), f[:3], np.arange(3), same_set=True)
    with pytest.raises(ValueError, match="gallery_labels"):
        evaluate_retrieval(f, np.arange(3), f, np.arange(4))


class _MeanPatchEncoder(torch.nn.Module):
    """Minimal encoder: a tiny timm ViT, mean of final patch tokens (Habijan et al.'s pooling)."""

    def __init__(self):
        super().__init__()
        import timm

        self.vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, img_size=32,
                                     depth=1, embed_dim=32, num_heads=2)

    def forward(self, x):
        return self.vit.forward_features(x)[:, self.vit.num_prefix_tokens:].mean(1)


def test_retrieval_latency_reports_its_conditions():
    enc = _MeanPatchEncoder()
    index = build_index(np.random.default_rng(0).normal(size=(50, 32)).astype(np.float32))
    out = retrieval_latency_ms(enc, index, 32, "cpu", repeats=3, warmup=1)
    assert out["latency_ms"] > 0 and out["extraction_ms"] > 0 and out["search_ms"] > 0
    assert out["latency_ms"] >= out["extraction_ms"]
    assert out["batch_size"] == 1 and out["decode_included"] is False and out["gallery_size"] == 50
