"""GPU FAISS (issue 14, item 5): the `gpu` extra's index path, and the CPU fallback everywhere else.

On a machine with faiss-cpu (the default install, and CI) ``build_index(..., device="cuda")`` warns and returns the
CPU index with the same hits, and ``faiss_build_info`` says faiss-cpu without GPU support; the GPU tests run only
where a FAISS GPU build sees a GPU (the gpu extra, docs/scaling.md) and are skipped otherwise.
"""
import warnings

import faiss
import numpy as np
import pytest

from histokit.retrieval.index import (build_index, faiss_build_info, is_gpu_index, load_index, save_index, search)
from histokit.stages.data import write_indexes

GPU_FAISS = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
needs_gpu = pytest.mark.skipif(not GPU_FAISS, reason="no FAISS GPU build with a visible GPU (the gpu extra)")


@pytest.fixture(scope="module")
def gallery():
    x = np.random.default_rng(0).standard_normal((500, 32)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_faiss_build_info_reports_the_installed_build():
    info = faiss_build_info()
    assert set(info) == {"package", "package_version", "version", "gpu_support", "num_gpus", "installed"}
    assert info["version"] == faiss.__version__
    assert info["package"] in info["installed"] and info["package_version"] == info["installed"][info["package"]]
    assert info["gpu_support"] == hasattr(faiss, "StandardGpuResources")
    assert info["num_gpus"] == (faiss.get_num_gpus() if info["gpu_support"] else 0)
    if not info["gpu_support"]:
        assert info["package"] == "faiss-cpu" and info["num_gpus"] == 0
    else:
        assert info["package"].startswith(("faiss-gpu", "faiss-cuda"))


@pytest.mark.skipif(GPU_FAISS, reason="a FAISS GPU build sees a GPU: the fallback is for the other machines")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_gpu_faiss_falls_back_to_the_cpu_index_with_the_reason(gallery, device):
    exact = build_index(gallery)
    with pytest.warns(UserWarning, match=r"requested but this FAISS build \(faiss-cpu 1\.15\.1, faiss 1\.15\.1\) has "
                                         r"no GPU support; the index stays on the CPU"):
        index = build_index(gallery, device=device)
    assert not is_gpu_index(index) and type(index).__name__ == "IndexFlatIP" and index.ntotal == len(gallery)
    q = gallery[:20]
    np.testing.assert_array_equal(search(index, q, 5)[1], search(exact, q, 5)[1])


def test_cpu_device_never_warns_and_hnsw_stays_on_the_cpu(gallery):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not is_gpu_index(build_index(gallery, device="cpu"))
    with pytest.warns(UserWarning, match="no GPU HNSW"):
        assert not is_gpu_index(build_index(gallery, kind="hnsw", device="cuda"))


def test_the_index_stage_builds_the_gallery_index_on_the_run_device(tmp_path, monkeypatch):
    """Stage 04 hands the run's device to its gallery index (scale.gallery_index -> build_index): with --device cuda
    and faiss-cpu the index falls back with a warning."""
    from histokit.papers.recipe import DatasetSpec, ModelSpec, Recipe
    from histokit.stages import index as stage
    from histokit.stages.context import StageContext

    recipe = Recipe(paper="tiny", title="tiny", citation="", profile="smoke", image_size=32,
                    datasets=(DatasetSpec("TILES", "kather2016_tiny"),), models=(ModelSpec("tiny", "vit_test", "random"),))
    ctx = StageContext(paper="tiny", profile="smoke", recipe=recipe, run_dir=tmp_path, data_root=tmp_path,
                       device="cpu", seed=0, progress=False)
    write_indexes(ctx)  # stage 01
    seen = []

    class Built(Exception):  # stops the stage once the index is built: the timings after it would need a real GPU
        pass

    def spy(features, **kw):
        seen.append(kw.get("device"))
        real_gallery_index(features, **kw)
        raise Built

    real_gallery_index = stage.gallery_index
    monkeypatch.setattr(stage, "gallery_index", spy)
    with pytest.raises(Built):
        stage.extract_pair(ctx, "tiny", "TILES", timed=True)
    ctx.device = "cuda"  # features exist: only the index is built again, on the run's device
    if GPU_FAISS:
        with pytest.raises(Built):
            stage.extract_pair(ctx, "tiny", "TILES", timed=True)
    else:
        with pytest.warns(UserWarning, match="no GPU support"), pytest.raises(Built):
            stage.extract_pair(ctx, "tiny", "TILES", timed=True)
    assert seen == ["cpu", "cuda"]


@needs_gpu
@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_gpu_index_gives_the_cpu_hits_and_saves_as_a_cpu_index(tmp_path, gallery, kind):
    cpu = build_index(gallery, kind=kind, nlist=8 if kind == "ivf" else None)
    gpu = build_index(gallery, kind=kind, nlist=8 if kind == "ivf" else None, device="cuda:0")
    assert is_gpu_index(gpu)
    q = gallery[:50]
    s_cpu, i_cpu = search(cpu, q, 10, exclude_self=True)
    s_gpu, i_gpu = search(gpu, q, 10, exclude_self=True)
    assert (i_gpu == i_cpu).mean() > 0.99  # ties may order differently
    np.testing.assert_allclose(s_gpu, s_cpu, atol=1e-4)
    save_index(gpu, tmp_path / "g.faiss")
    assert not is_gpu_index(load_index(tmp_path / "g.faiss"))


@needs_gpu
def test_all_gpus_replicas(gallery):
    index = build_index(gallery, device="cuda")
    assert is_gpu_index(index) and index.ntotal == len(gallery)
    assert faiss_build_info()["num_gpus"] >= 1
