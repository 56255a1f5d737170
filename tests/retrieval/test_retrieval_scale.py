"""FAISS at scale: IVF recall@10 against exact search on 200k x 384 vectors, IndexShards and the on-disk merge return
what one in-memory index returns, IVF-PQ reports its (larger) recall loss, and the on-disk files are verified; the
product path (gallery_index: stage 04 and evaluate_retrieval) is exact up to its threshold and IVF above it, with the
recall it lost against exact search reported."""
import warnings
from contextlib import contextmanager

import faiss
import numpy as np
import pytest

from histokit.retrieval.index import IndexFileError
from histokit.retrieval.index import build_index, search
from histokit.retrieval.metrics import evaluate_retrieval
from histokit.retrieval.scale import (EXACT_MAX_GALLERY, approximate_note, build_ivf, build_ondisk, factory_string,
                                     gallery_index, load_ondisk, sample_rows, set_nprobe, to_all_gpus, train_ivf)

# The stated operating point: 256 lists trained on 20,000 sampled rows (78 per list), 8 of them searched per query.
NLIST, NPROBE, TRAIN_SIZE = 256, 8, 20_000


def clustered(n, dim, n_clusters, spread, seed):
    """L2-normalised points around ``n_clusters`` random centres (tissue classes / slides in embedding space); with
    ``spread`` = 1 the clusters overlap enough that one probed list misses about a third of the true neighbours."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x *= spread
    x += centres[rng.integers(0, n_clusters, n)]
    faiss.normalize_L2(x)
    return x


@contextmanager
def faiss_threads(n):
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def test_ivf_flat_recall_at_10_on_200k_x_384():
    x = clustered(200_000, 384, 100, 1.0, seed=0)
    ivf = build_ivf(x, kind="ivf_flat", nlist=NLIST, nprobe=NPROBE, train_size=TRAIN_SIZE, n_eval=200, seed=0)
    report = ivf.report()
    assert report["recall@10"] >= 0.95, report
    assert (report["n"], report["dim"], report["nprobe"], report["train_size"]) == (200_000, 384, NPROBE, TRAIN_SIZE)
    # the number is the approximate index's own: one probed list loses neighbours that eight recover
    assert ivf.recall_at_nprobe(1) < report["recall@10"] - 0.1
    # against exact search of the whole set (checked on 10 of the 200 queries)
    exact = faiss.knn(ivf.queries[:10], x, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
    np.testing.assert_array_equal(ivf.exact_ids[:10], exact)


def test_index_shards_return_the_single_index_results():
    x = clustered(20_000, 64, 50, 1.0, seed=2)
    single = build_ivf(x, nlist=64, nprobe=4, n_eval=100)
    sharded = build_ivf(x, nlist=64, nprobe=4, n_eval=100, n_shards=3)
    assert isinstance(sharded.index, faiss.IndexShards) and sharded.index.count() == 3
    q = x[:50]
    s_scores, s_ids = single.index.search(q, 10)
    d_scores, d_ids = sharded.index.search(q, 10)
    np.testing.assert_array_equal(d_ids, s_ids)  # global ids kept across shards, results merged by score
    np.testing.assert_allclose(d_scores, s_scores, rtol=1e-6)
    assert sharded.recall_at_k == single.recall_at_k


def test_ondisk_merge_equals_the_in_memory_index_and_is_verified(tmp_path):
    x = clustered(20_000, 64, 50, 1.0, seed=3)
    trained = train_ivf(sample_rows(x, 4096), nlist=64)
    in_memory = faiss.clone_index(trained)
    in_memory.add(x)
    set_nprobe(in_memory, 4)
    path = tmp_path / "big" / "gallery.index"
    ondisk = build_ondisk(trained, lambda: (x[i:i + 6000] for i in range(0, len(x), 6000)), path, nprobe=4)
    assert trained.ntotal == 0  # the caller's trained index is left empty
    assert ondisk.info["blocks"] == 4 and ondisk.info["n"] == 20_000 and ondisk.recall_at_k > 0.9
    q = x[::400]
    np.testing.assert_array_equal(ondisk.index.search(q, 10)[1], in_memory.search(q, 10)[1])
    assert sorted(p.name for p in path.parent.iterdir()) == ["gallery.index", "gallery.index.ivfdata",
                                                            "gallery.index.json"]  # no blocks, no temporaries

    moved = tmp_path / "moved"
    path.parent.rename(moved)
    reopened = load_ondisk(moved / "gallery.index")  # the .ivfdata is found beside the index, not at the old path
    set_nprobe(reopened, 4)
    np.testing.assert_array_equal(reopened.search(q, 10)[1], in_memory.search(q, 10)[1])
    del reopened
    data = moved / "gallery.index.ivfdata"
    data.write_bytes(data.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(IndexFileError, match="gallery.index.ivfdata does not match the sha256"):
        load_ondisk(moved / "gallery.index")


def test_ivf_pq_reports_its_recall_loss():
    x = clustered(12_000, 32, 30, 1.0, seed=4)
    with faiss_threads(1):  # PQ k-means runs many tiny parallel loops: one thread is faster on 2 shared cores
        flat = build_ivf(x, nlist=32, nprobe=4, n_eval=100)
        pq = build_ivf(x, kind="ivf_pq", nlist=32, nprobe=4, pq_m=4, n_eval=100)
    assert pq.info["factory"] == "IVF32,PQ4x8np" and pq.info["train_size"] == 10_240  # 40 rows per PQ centroid
    assert 0.0 < pq.recall_at_k < flat.recall_at_k  # 16-byte codes lose neighbours that full vectors keep


@pytest.mark.bad_input
def test_bad_settings_name_the_parameter():
    with pytest.raises(ValueError, match="pq_m"):
        factory_string("ivf_pq", 16)
    with pytest.raises(ValueError, match="kind"):
        factory_string("hnsw", 16)
    with pytest.raises(ValueError, match="nlist=64"):
        train_ivf(np.ones((10, 8), np.float32), nlist=64)
    with pytest.raises(ValueError, match="nprobe"):
        set_nprobe(faiss.IndexIVFFlat(faiss.IndexFlatIP(8), 8, 4), 0)


def test_gpu_sharding_falls_back_to_the_cpu_index_with_a_warning():
    index = faiss.IndexFlatIP(8)
    if faiss.get_num_gpus() > 0:
        pytest.skip("a GPU FAISS build is present; the fallback is for faiss-cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert to_all_gpus(index, shard=True) is index
    assert any("no GPU support" in str(w.message) for w in caught)


def test_gallery_index_is_exact_up_to_its_threshold_and_ivf_with_its_recall_above():
    x = clustered(4_000, 32, 20, 1.0, seed=5)
    queries = clustered(300, 32, 20, 1.0, seed=6)
    assert EXACT_MAX_GALLERY == 1_000_000
    exact = gallery_index(x, exact_max=4_000)  # at the threshold: exact
    assert exact.approximate is None and isinstance(faiss.downcast_index(exact.index), faiss.IndexFlatIP)
    _, want = search(build_index(x), queries, 10)
    assert np.array_equal(search(exact.index, queries, 10)[1], want)

    approx = gallery_index(x, exact_max=3_999, queries=queries, n_eval=100)
    report = approx.approximate
    assert isinstance(faiss.downcast_index(approx.index), faiss.IndexIVFFlat)
    assert report["exact_max"] == 3_999 and report["n"] == 4_000 and report["n_queries"] == 100
    assert report["factory"] == "IVF102,Flat" and report["nprobe"] == 32 and report["k"] == 10
    # the recall it reports is the recall it has, on the queries it was measured on
    got = search(approx.index, queries, 10)[1]
    assert 0.5 < report["recall@10"] <= 1.0 and 0.5 < np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want)])
    note = approximate_note(report)
    assert "4,000 vectors exceeds the exact-search limit (3,999)" in note and f"{report['recall@10']:.3f}" in note
    with pytest.raises(ValueError, match="exact_max"):
        gallery_index(x, exact_max=0)


def test_evaluate_retrieval_reports_the_approximate_index_it_searched():
    x = clustered(1_000, 16, 8, 0.5, seed=7)
    labels = np.arange(1_000) % 8
    q, q_labels = x[:50], labels[:50]
    exact = evaluate_retrieval(x, labels, q, q_labels, k=5)
    assert exact.approximate is None  # default threshold: 1,000,000
    approx = evaluate_retrieval(x, labels, q, q_labels, k=5, exact_max=500)
    assert approx.approximate["recall@5"] > 0.5 and approx.approximate["n_queries"] == 50
    assert approx.approximate["exact_max"] == 500 and set(approx.means) == set(exact.means)
    again = evaluate_retrieval(x, labels, x, labels, k=5, exact_max=500, same_set=True)  # leave-one-out too
    assert again.ids.shape == (1_000, 5) and not (again.ids == np.arange(1_000)[:, None]).any()


def test_stage_04_above_the_threshold_records_the_ivf_index_and_notes_its_recall(tmp_path, monkeypatch):
    """Stage 04's timing index with a threshold below the gallery (monkeypatched: a recipe sets exact_index_max)
    is IVF: its timing row names it with its recall@10 against exact, and the table reporting the timing a note."""
    import json

    from histokit.evaluation.protocols import Retrieval
    from histokit.papers.recipe import DatasetSpec, ModelSpec, Recipe
    from histokit.stages import index as stage
    from histokit.stages.context import StageContext
    from histokit.stages.data import write_indexes

    recipe = Recipe(paper="tiny", title="tiny", citation="", profile="smoke", image_size=32,
                    datasets=(DatasetSpec("TILES", "kather2016_tiny"),), models=(ModelSpec("tiny", "vit_test", "random"),),
                    evaluations=(Retrieval("table1", ("tiny",), ("TILES",), timing=True),))
    ctx = StageContext(paper="tiny", profile="smoke", recipe=recipe, run_dir=tmp_path, data_root=tmp_path,
                       device="cpu", seed=0, progress=False, rehearse={"steps": 1})
    write_indexes(ctx)  # stage 01: the data index stage 04 reads
    exact = stage.extract_pair(ctx, "tiny", "TILES", timed=True)
    assert exact["gallery_index"] == "Flat (exact)" and exact["gallery_index_recall@10"] is None
    assert not ctx.notes().get("table1")
    monkeypatch.setattr(stage, "EXACT_MAX_GALLERY", exact["gallery_size"] - 1)
    row = stage.extract_pair(ctx, "tiny", "TILES", timed=True)
    assert row["gallery_index"].startswith("IVF") and 0 < row["gallery_index_recall@10"] <= 1
    written = json.loads(ctx.path("timing", "tiny", "tiles.json").read_text())
    assert written["gallery_index_recall@10"] == row["gallery_index_recall@10"]
    (note,) = ctx.notes()["table1"]
    assert note.startswith("tiny on TILES: retrieval latency: approximate search") and "recall@10" in note
