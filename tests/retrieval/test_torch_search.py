"""Issue 15 item 4: search on the run's device. The torch exact search (the GPU path without faiss-gpu) runs on the
CPU here and is compared with FAISS; the device routing of build_index is tested with FAISS's GPU functions and
torch's CUDA probe monkeypatched; timing rows say where extraction and search ran."""
import warnings

import faiss
import numpy as np
import pytest
import torch

from histokit.retrieval import index as index_mod
from histokit.retrieval.index import build_index, describe_search, load_index, save_index, search
from histokit.retrieval.torch_search import TorchFlatIndex
from histokit.stages.data import write_indexes


def _unit(rows, dim, seed):
    x = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("n_queries", [1, 7, 64])  # FAISS switches to its BLAS path at 20 queries
def test_torch_search_returns_faiss_ids_and_scores_on_random_data(metric, n_queries):
    gallery, queries, k = _unit(2000, 32, 0), _unit(n_queries, 32, 1), 10
    ref_scores, ref_ids = build_index(gallery, metric=metric).search(queries, k + 1)
    # No near-ties in this data (seeded): float rounding between two matmuls cannot swap a pair of hits.
    assert np.abs(np.diff(ref_scores, axis=1)).min() > 1e-5
    scores, ids = search(build_index(gallery, metric=metric, backend="torch"), queries, k)
    np.testing.assert_array_equal(ids, ref_ids[:, :k])
    np.testing.assert_allclose(scores, ref_scores[:, :k], atol=1e-5)
    assert scores.dtype == np.float32 and ids.dtype == np.int64


def test_torch_search_breaks_exact_ties_by_lowest_id_and_agrees_with_faiss_scores():
    """Integer vectors: every score is exact in float32, so ties are real and equal in both implementations."""
    rng = np.random.default_rng(0)
    gallery = rng.integers(-1, 2, size=(500, 8)).astype(np.float32)
    queries = rng.integers(-1, 2, size=(30, 8)).astype(np.float32)
    k = 25
    exact = queries @ gallery.T
    rank = np.broadcast_to(np.arange(len(gallery)), exact.shape)
    for metric, key in (("ip", -exact), ("l2", ((queries[:, None] - gallery[None]) ** 2).sum(-1))):
        expected = np.lexsort((rank, key), axis=1)[:, :k]  # best score first, then lowest id
        scores, ids = build_index(gallery, metric=metric, backend="torch").search(queries, k)
        np.testing.assert_array_equal(ids, expected)
        ref_scores, ref_ids = build_index(gallery, metric=metric).search(queries, k)
        np.testing.assert_array_equal(scores, ref_scores)  # the same scores at every rank
        if metric == "l2":  # FAISS 1.15.1's IndexFlatL2 orders ties lowest id first too (torch_search docstring)
            np.testing.assert_array_equal(ids, ref_ids)
        else:  # IndexFlatIP orders ties otherwise; ids above the k-th score are the same set
            for row in range(len(queries)):
                above = scores[row] > scores[row, -1]
                assert set(ids[row, above]) == set(ref_ids[row, above])
        assert not np.array_equal(ids, ref_ids) or metric == "l2"  # the data does hold ties FAISS orders otherwise


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_torch_search_pads_like_faiss_past_the_gallery(metric):
    gallery = _unit(4, 8, 2)
    ref = build_index(gallery, metric=metric).search(gallery[:2], 6)
    got = build_index(gallery, metric=metric, backend="torch").search(gallery[:2], 6)
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_allclose(got[0], ref[0], atol=1e-6)


def test_torch_index_excludes_self_saves_as_a_faiss_index_and_blocks_large_galleries(tmp_path, monkeypatch):
    gallery = _unit(300, 16, 3)
    monkeypatch.setattr("histokit.retrieval.torch_search._BLOCK_ELEMENTS", 1000)  # 3 query rows per matmul
    torch_index = build_index(gallery, backend="torch")
    ref = search(build_index(gallery), gallery[:20], 5, exclude_self=True)
    got = search(torch_index, gallery[:20], 5, exclude_self=True)
    np.testing.assert_array_equal(got[1], ref[1])
    meta = save_index(torch_index, tmp_path / "g.faiss")
    assert meta["kind"] == "flat" and meta["metric"] == "ip" and meta["ntotal"] == 300
    loaded = load_index(tmp_path / "g.faiss")
    assert type(loaded).__name__ == "IndexFlatIP"
    np.testing.assert_array_equal(search(loaded, gallery[:20], 5)[1], search(torch_index, gallery[:20], 5)[1])


def test_torch_backend_refuses_approximate_kinds():
    with pytest.raises(ValueError, match="kind must be 'flat'"):
        build_index(_unit(100, 8, 0), kind="hnsw", backend="torch")
    with pytest.raises(ValueError, match="backend must be one of"):
        build_index(_unit(100, 8, 0), backend="gpu")


class _FakeGpuIndex:
    """What to_gpu returns, without a GPU."""

    def __init__(self, index, device):
        self.d, self.ntotal, self._histokit_device = index.d, index.ntotal, device


@pytest.fixture
def routing(monkeypatch):
    """FAISS GPU build and torch CUDA probes under the test's control; records what build_index reached for."""
    calls = []
    state = {"faiss_gpu": False, "torch_cuda": False}
    monkeypatch.setattr(index_mod, "_gpu_available", lambda: state["faiss_gpu"])
    monkeypatch.setattr(index_mod, "_torch_cuda_available", lambda: state["torch_cuda"])
    monkeypatch.setattr(index_mod, "to_gpu", lambda index, device: calls.append(("faiss-gpu", device))
                        or _FakeGpuIndex(index, "cuda:0" if device == "cuda:0" else "cuda"))
    real = index_mod._torch_index
    # the torch index is built on the CPU (no CUDA here) but records the device it was asked for
    monkeypatch.setattr(index_mod, "_torch_index", lambda x, metric, device: calls.append(("torch", device))
                        or real(x, metric, "cpu"))
    return state, calls


def test_cuda_routes_to_faiss_gpu_when_faiss_sees_a_gpu(routing):
    state, calls = routing
    state.update(faiss_gpu=True, torch_cuda=True)
    index = build_index(_unit(100, 8, 0), device="cuda:0")
    assert calls == [("faiss-gpu", "cuda:0")]
    assert describe_search(index) == {"search_backend": "faiss-gpu", "search_device": "cuda:0"}


def test_cuda_without_faiss_gpu_routes_flat_search_to_torch(routing):
    state, calls = routing
    state.update(faiss_gpu=False, torch_cuda=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the torch search is the intended GPU path: no warning
        index = build_index(_unit(100, 8, 0), device="cuda")
    assert calls == [("torch", "cuda")] and isinstance(index, TorchFlatIndex)
    # approximate kinds and backend="faiss" keep CPU FAISS, and say so
    with pytest.warns(UserWarning, match="has no GPU support; the index stays on the CPU"):
        ivf = build_index(_unit(400, 8, 0), kind="ivf", nlist=4, device="cuda")
    with pytest.warns(UserWarning, match="the index stays on the CPU"):
        flat = build_index(_unit(100, 8, 0), device="cuda", backend="faiss")
    assert calls == [("torch", "cuda")]
    assert describe_search(ivf) == describe_search(flat) == {"search_backend": "faiss-cpu", "search_device": "cpu"}


def test_cuda_with_neither_stays_on_cpu_faiss_and_says_why(routing):
    state, calls = routing
    with pytest.warns(UserWarning, match="torch sees no CUDA device either"):
        index = build_index(_unit(100, 8, 0), device="cuda")
    assert calls == [] and type(index).__name__ == "IndexFlatIP"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_index(_unit(100, 8, 0), device="cpu")
    assert calls == []


def test_latency_records_extraction_and_search_devices():
    from histokit.models.backbones import create_encoder
    from histokit.retrieval.metrics import retrieval_latency_ms

    torch.manual_seed(0)
    encoder = create_encoder("vit_test", img_size=32)
    gallery = _unit(50, encoder.embed_dim, 0)
    for index, backend in ((build_index(gallery), "faiss-cpu"), (build_index(gallery, backend="torch"), "torch")):
        out = retrieval_latency_ms(encoder, index, 32, device="cpu", repeats=1, warmup=0, k=5)
        assert (out["extraction_device"], out["search_device"], out["search_backend"]) == ("cpu", "cpu", backend)


def test_evaluate_retrieval_builds_its_index_on_the_run_device(monkeypatch):
    from histokit.retrieval import metrics, scale

    seen = []
    real = scale.build_index  # the exact index evaluate_retrieval's gallery_index builds below its threshold
    monkeypatch.setattr(scale, "build_index", lambda *a, **kw: seen.append(kw.get("device")) or real(*a, **kw))
    g, labels = _unit(40, 8, 0), np.arange(40) % 4
    with pytest.warns(UserWarning, match="stays on the CPU"):
        metrics.evaluate_retrieval(g, labels, g[:5], labels[:5], k=3, device="cuda")
    assert seen == ["cuda"]


def test_timing_row_records_extraction_and_search_device_apart(tmp_path):
    """Stage 04's timing row (timing.csv): the run's device plus where extraction and search each ran."""
    import json

    from histokit.papers.recipe import DatasetSpec, ModelSpec, Recipe
    from histokit.stages import index as stage
    from histokit.stages.context import StageContext

    recipe = Recipe(paper="tiny", title="tiny", citation="", profile="smoke", image_size=32,
                    datasets=(DatasetSpec("TILES", "kather2016_tiny"),), models=(ModelSpec("tiny", "vit_test", "random"),))
    ctx = StageContext(paper="tiny", profile="smoke", recipe=recipe, run_dir=tmp_path, data_root=tmp_path,
                       device="cpu", seed=0, progress=False, rehearse={"steps": 1})
    write_indexes(ctx)  # stage 01
    assert ctx.rehearsal  # one timing pass, not twenty
    row = stage.extract_pair(ctx, "tiny", "TILES", timed=True)
    assert (row["device"], row["extraction_device"], row["search_device"], row["search_backend"]) == \
        ("cpu", "cpu", "cpu", "faiss-cpu")
    written = json.loads(ctx.path("timing", "tiny", "tiles.json").read_text())
    assert written["search_backend"] == "faiss-cpu" and written["extraction_device"] == "cpu"
    # the per-image extraction time compared with a paper is batch 1; the amortized one is kept apart, with its batch
    assert row["feature_extraction_batch_size"] == 1 and row["device_name"] == "cpu"
    # a rehearsal times the amortized figure at a small batch (the same code path): at most 8, at most the gallery
    assert row["extraction_batch_size"] == min(stage.extraction_batch(ctx), row["gallery_size"],
                                               stage.REHEARSAL_TIMING_BATCH) > 1
    assert row["feature_extraction_amortized_ms"] > 0 and row["feature_extraction_ms"] > 0
