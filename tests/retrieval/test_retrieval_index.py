"""FAISS index: exact search against brute force, approximate recall, self-exclusion, verified save/load."""
import json

import faiss
import numpy as np
import pytest

from histokit.retrieval.features import l2_normalize
from histokit.retrieval.index import IndexFileError, build_index, load_index, recall_at_k, save_index, search


@pytest.fixture(scope="module")
def gallery():
    rng = np.random.default_rng(0)
    return l2_normalize(rng.normal(size=(2000, 32)).astype(np.float32))


def test_flat_ip_is_exact_cosine_against_brute_force(gallery):
    queries = gallery[:50] + 0.1
    scores, ids = search(build_index(gallery), queries, 10)
    sims = queries @ gallery.T
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(sims, expected, 1), rtol=1e-5, atol=1e-5)
    assert ids.dtype == np.int64


def test_flat_l2_against_brute_force(gallery):
    queries = gallery[:20] * 0.5
    _, ids = search(build_index(gallery, metric="l2"), queries, 5)
    d2 = ((queries[:, None] - gallery[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(ids, np.argsort(d2, axis=1)[:, :5])


@pytest.mark.parametrize("kind, kwargs, min_recall", [("ivf", dict(nlist=16, nprobe=8), 0.7), ("hnsw", {}, 0.9)])
def test_approximate_indexes_recall_against_exact(gallery, kind, kwargs, min_recall):
    queries = gallery[:200]
    _, exact = search(build_index(gallery), queries, 10)
    index = build_index(gallery, kind=kind, **kwargs)
    _, approx = search(index, queries, 10)
    r = recall_at_k(approx, exact, 10)
    assert min_recall <= r <= 1.0
    assert recall_at_k(exact, exact, 10) == 1.0


def test_ivf_default_nlist_respects_training_points(gallery):
    index = faiss.downcast_index(build_index(gallery, kind="ivf"))
    assert 1 <= index.nlist <= len(gallery) // 39 and index.nprobe == 8


def test_recall_at_k_counts_overlap():
    approx = np.array([[1, 2, 3], [4, 5, 6]])
    exact = np.array([[3, 2, 9], [7, 8, 9]])
    assert recall_at_k(approx, exact, 3) == pytest.approx((2 / 3 + 0) / 2)


def test_exclude_self_drops_own_id_and_keeps_k(gallery):
    index = build_index(gallery)
    _, ids = search(index, gallery[:100], 5, exclude_self=True)
    assert ids.shape == (100, 5)
    assert not (ids == np.arange(100)[:, None]).any()
    _, ids_plain = search(index, gallery[:100], 6)
    np.testing.assert_array_equal(ids, ids_plain[:, 1:])  # own image was rank 1; the rest shift up


def test_exclude_self_with_duplicates_never_returns_self():
    # Many identical vectors: the query may not be ranked first among its duplicates, but is never a hit.
    x = np.ones((12, 4), np.float32)
    x[8:] = [[1, 0, 0, 0]] * 4
    x = l2_normalize(x)
    _, ids = search(build_index(x), x, 3, exclude_self=True)
    assert not (ids == np.arange(12)[:, None]).any()
    assert ids.shape == (12, 3)


def test_exclude_self_with_explicit_query_ids(gallery):
    rows = np.array([5, 17, 300])
    _, ids = search(build_index(gallery), gallery[rows], 4, exclude_self=True, query_ids=rows)
    assert not (ids == rows[:, None]).any()


def test_search_errors_are_clear(gallery):
    index = build_index(gallery[:10])
    with pytest.raises(ValueError, match="dimension"):
        search(index, np.ones((2, 5), np.float32), 3)
    with pytest.raises(ValueError, match="k\\+1"):
        search(index, gallery[:10], 10, exclude_self=True)
    with pytest.raises(ValueError, match="kind"):
        build_index(gallery, kind="pq")
    with pytest.raises(ValueError, match="NaN"):
        build_index(np.full((3, 2), np.nan, np.float32))


def test_cuda_request_without_faiss_gpu_warns_and_falls_back(gallery):
    if faiss.get_num_gpus() > 0:
        pytest.skip("this FAISS build has GPUs")
    with pytest.warns(UserWarning, match="no GPU support"):
        index = build_index(gallery[:100], device="cuda")
    assert index.ntotal == 100


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_roundtrip_with_sidecar(tmp_path, gallery, kind):
    index = build_index(gallery[:500], kind=kind, nlist=8 if kind == "ivf" else None)
    meta = save_index(index, tmp_path / "gallery.faiss")
    assert meta["kind"] == kind and meta["metric"] == "ip" and meta["dim"] == 32 and meta["ntotal"] == 500
    assert json.loads((tmp_path / "gallery.faiss.json").read_text())["sha256"] == meta["sha256"]
    loaded = load_index(tmp_path / "gallery.faiss")
    np.testing.assert_array_equal(search(loaded, gallery[:7], 5)[1], search(index, gallery[:7], 5)[1])


def test_load_detects_tampering(tmp_path, gallery):
    path = tmp_path / "g.faiss"
    save_index(build_index(gallery[:50]), path)
    side = tmp_path / "g.faiss.json"
    meta = json.loads(side.read_text())

    side.write_text(json.dumps({**meta, "ntotal": 51}))
    with pytest.raises(IndexFileError, match="ntotal=51"):
        load_index(path)
    side.write_text(json.dumps({**meta, "dim": 16}))
    with pytest.raises(IndexFileError, match="dim=16"):
        load_index(path)
    side.write_text(json.dumps(meta))
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(IndexFileError, match="sha256"):
        load_index(path)
    side.unlink()
    with pytest.raises(IndexFileError, match="sidecar not found"):
        load_index(path)
    with pytest.raises(IndexFileError, match="not found"):
        load_index(tmp_path / "missing.faiss")
