"""The speed benchmark (benchmarks/speed/, run by `make speed` and `histokit speed` from a checkout) at tiny sizes:
the report has every section and target row, its numbers are finite and its ratios positive, GPU targets are never
invented on a CPU, and the per-query metric loop agrees with the kit; without benchmarks/ (a pip-installed histokit)
`histokit speed` says where the benchmark is instead of failing on an import."""
import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import faiss
import numpy as np
import pandas as pd
import pytest
import torch

from histokit import paths
from histokit.cli import build_parser, cmd_speed, main, speed_benchmark
from histokit.retrieval.metrics import evaluate_retrieval, retrieval_scores

REPO = str(Path(__file__).resolve().parents[2])
if REPO not in sys.path:  # `pytest` (not `python -m pytest`) leaves the repository root off sys.path
    sys.path.insert(0, REPO)
from benchmarks.speed import BenchConfig, run_bench  # noqa: E402
from benchmarks.speed.environment import bench_threads, device_slug, slugify  # noqa: E402
from benchmarks.speed.metrics import class_counts_of, kit_metric_matrix, loop_metrics, loop_metrics_from_ids  # noqa: E402
from benchmarks.speed.report import SECTION_TITLES  # noqa: E402
from benchmarks.speed.rows import Row, SectionResult  # noqa: E402
from benchmarks.speed.synthetic import make_retrieval_data  # noqa: E402
from benchmarks.speed.targets import NO_GPU, evaluate_targets  # noqa: E402
from benchmarks.speed import timing  # noqa: E402
from benchmarks.speed.timing import profile_top, timed_runs  # noqa: E402

TINY = BenchConfig(
    mode="test", backbones=("vit_test", "resnet_test"), image_size=32, batch_size=4, n_batches=1, warmup=0,
    repeats=2, memory_format_backbone="resnet_test", e2e_backbone="vit_test", e2e_images=6, e2e_batch_size=3,
    gallery=1_200, search_queries=16, search_repeats=2, ann_queries=16, ann_repeats=1, ivf_nprobes=(1, 4),
    hnsw_efs=(16,), hnsw_m=8,
    eval_queries=100, loop_sample=10, latency_backbones=("vit_test",), latency_image_size=32, latency_repeats=2,
    growth_sizes=(600, 1_200), growth_queries=4, growth_hnsw_max=1_200,
    train_methods=(("dino", "vit_test"), ("ibot", "vit_test"), ("simclr", "resnet_test")), train_batch_size=2,
    train_batches=1,
)
TARGET_IDS = ["extract", "e2e_cache", "search", "eval", "latency", "paper_extract"]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    out = results / "speed"  # the default folder (no out_dir given), beside the common benchmark's results/benchmark/
    out.mkdir()
    (out / "cuda-nvidia-h100.md").write_text("another device's report\n")
    before, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)  # tiny models on a shared machine: one thread avoids OpenMP stalls; same code path
    os.environ["OMP_NUM_THREADS"] = "1"  # the bench keeps a thread count the user set
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(paths, "RESULTS_DIR", results)
            result = run_bench(device="cpu", config=TINY, log=lambda m: None)
        assert torch.get_num_threads() == 1  # restored
    finally:
        torch.set_num_threads(before)
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = omp
    return out, result


def test_report_has_every_section_and_target(bench_run):
    out, result = bench_run
    md = result["md"].read_text()
    assert result["md"].name == f"{device_slug('cpu')}-test.md" and result["md"].parent == out
    assert (out / "cuda-nvidia-h100.md").read_text() == "another device's report\n"  # never touched
    assert not list(out.glob(".*tmp"))
    for title in ["## Targets", *(f"## {t}" for t in SECTION_TITLES.values()), "## Profiles of missed targets"]:
        assert title in md, title
    assert [t.id for t in result["targets"]] == TARGET_IDS
    # the stages' backend policy (histokit.device), set and recorded by the bench too
    from histokit.device import backend_settings

    assert {k: result["env"]["backends"][k] for k in backend_settings("cpu")} == backend_settings("cpu")
    assert "Backend flags (histokit.device" in md and "float32_matmul_precision highest" in md
    for t in result["targets"]:
        assert f"| {t.target} |" in md
    by_id = {t.id: t for t in result["targets"]}
    for gpu_only in ("e2e_cache", "latency", "paper_extract"):
        assert by_id[gpu_only].status == NO_GPU and by_id[gpu_only].measured == "-"
    assert by_id["extract"].status in ("met", "missed") and by_id["search"].status in ("met", "missed")
    assert by_id["eval"].status.startswith("not measured at the target size")
    for t in result["targets"]:
        if t.status == "missed":  # a miss comes with its profile
            assert "cProfile" in md.split("## Profiles of missed targets")[1]


def test_numbers_are_finite_ratios_positive_and_rows_carry_conditions(bench_run):
    _, result = bench_run
    rows = [r for s in result["sections"].values() for r in s.rows]
    keys = {r.key for r in rows}
    for needed in ("model/ratio/vit_test", "model/ratio/resnet_test", "model/nchw/resnet_test",
                   "extraction/ratio/png", "extraction/ratio/tiff", "extraction/ratio/jpeg", "extraction/ratio/cache",
                   "decode/pil/png", "search/overhead/16 queries batched", "search/overhead/batch-1 query",
                   "search/wrapper/batch-1 query",
                   "ann/ivf/4", "ann/hnsw/16", "metrics/speedup/end_to_end", "metrics/agreement",
                   "latency/total/vit_test", "growth/exact/1200", "growth/ivf/600", "growth/hnsw/1200",
                   "training/ratio/dino", "training/ratio/ibot", "training/step/simclr"):
        assert needed in keys, needed
    for r in rows:
        assert math.isfinite(r.value), r.measurement
        if r.ratio is not None:
            assert math.isfinite(r.ratio) and r.ratio > 0, r.measurement
    frame = pd.read_csv(result["csv"])
    assert len(frame) == len(rows) + len(TARGET_IDS)
    measured = frame[frame["section"] != "targets"]
    for col in ("device", "torch", "timm", "faiss", "numpy", "precision", "batch_size", "torch_threads"):
        assert measured[col].notna().all(), col
    assert (measured["device"] == "cpu").all() and (measured["torch_threads"] == 1).all()


def test_per_query_loop_matches_hand_example_and_the_kit():
    # docs/protocols.md worked example: relevance 1 0 1 0 0, R = 4, k = 5 -> AP (min(k, R)) 0.4167, P 0.4, nDCG 0.5856.
    g_labels = np.array([1, 0, 1, 0, 0, 1, 1])
    ids = np.array([[0, 1, 2, 3, 4]])
    loop = loop_metrics_from_ids(ids, np.array([1]), g_labels, class_counts_of(g_labels), 5)
    np.testing.assert_allclose(loop, [[1.6667 / 4, 0.4, 0.5856]], atol=1e-4)

    gallery, gl, queries, ql = make_retrieval_data(500, 40, dim=16, n_classes=4, seed=3)
    res = evaluate_retrieval(gallery, gl, queries, ql, k=10)
    index = faiss.IndexFlatIP(16)
    index.add(gallery)
    np.testing.assert_allclose(loop_metrics(index, queries, ql, gl, class_counts_of(gl), 10),
                               kit_metric_matrix(res.per_query, 10), atol=1e-12)
    padded = res.ids.copy()
    padded[:, -3:] = -1  # FAISS's padding counts as not relevant in both
    np.testing.assert_allclose(loop_metrics_from_ids(padded, ql, gl, class_counts_of(gl), 10),
                               kit_metric_matrix(retrieval_scores(gl, padded, ql, 10), 10), atol=1e-12)


def _section(*rows):
    return SectionResult(rows=list(rows))


def _sections(extract_ratio, overhead, speedup, latency_ms):
    return {
        "model": _section(Row("model", "a", 1.0, "img/s", extract_ratio, key="model/ratio/vit"),
                          Row("model", "b", 0.05, "ms/img", key="model/kit_ms/vit")),
        "extraction": _section(Row("extraction", "c", 1.0, "img/s", 0.9, key="extraction/ratio/cache")),
        "search": _section(Row("search", "d", overhead, "%", key="search/overhead/batched")),
        "metrics": _section(Row("metrics", "e", speedup, "x", speedup, key="metrics/speedup/end_to_end")),
        "latency": _section(Row("latency", "f", latency_ms, "ms", key="latency/total/vit")),
    }


def test_target_statuses_follow_the_device_and_the_sizes():
    full = BenchConfig.for_device("cpu")
    cpu = {"device": "cpu", "device_name": "AMD EPYC"}
    got = {t.id: t for t in evaluate_targets(_sections(0.97, 1.0, 25.0, 40.0), cpu, full)}
    assert got["extract"].status == "met" and got["search"].status == "met" and got["eval"].status == "met"
    assert got["latency"].status == NO_GPU and "40.0 ms" in got["latency"].note
    got = {t.id: t for t in evaluate_targets(_sections(0.90, 7.5, 8.0, 40.0), cpu, full)}
    assert got["extract"].status == got["search"].status == got["eval"].status == "missed"
    assert "noise" not in got["extract"].note
    noisy = _sections(0.90, 1.0, 25.0, 40.0)
    noisy["model"].rows[0].note = "paired ratios IQR 0.850-0.990"
    got = {t.id: t for t in evaluate_targets(noisy, cpu, full)}
    assert got["extract"].status == "missed" and "inside the machine's noise" in got["extract"].note
    h100 = {"device": "cuda", "device_name": "NVIDIA H100 80GB HBM3"}
    got = {t.id: t for t in evaluate_targets(_sections(0.99, 1.0, 25.0, 2.5), h100, BenchConfig.for_device("cuda"))}
    assert got["latency"].status == "met" and got["e2e_cache"].status == "met" and got["paper_extract"].status == "met"
    a100 = {"device": "cuda", "device_name": "NVIDIA A100-SXM4-40GB"}
    got = {t.id: t for t in evaluate_targets(_sections(0.99, 1.0, 25.0, 2.5), a100, BenchConfig.for_device("cuda"))}
    assert got["latency"].status.startswith("measured on NVIDIA A100")
    assert BenchConfig.for_device("cuda").precision == "bf16" and full.precision == "fp32"


def test_timed_runs_rotate_order_and_profile_names_functions(monkeypatch):
    order = []
    fns = {name: (lambda name=name: order.append(name)) for name in "abc"}
    times = timed_runs(fns, warmup=1, repeats=3)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert order == list("abc") + list("abc") + list("bca") + list("cab")
    with pytest.raises(ValueError, match="repeats"):
        timed_runs(fns, warmup=0, repeats=0)
    # the pass count follows the warm-up call's duration: a fake clock on which every call takes exactly 0.25 s
    # (no real sleep, whose length a loaded machine stretches) makes the arithmetic exact
    clock, calls = [0.0], []

    def quarter_second():
        calls.append(1)
        clock[0] += 0.25

    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    slow = timed_runs({"a": quarter_second}, warmup=1, repeats=2, min_seconds=1.0)
    assert slow.passes == 4 and len(calls) == 1 + 2 * 4  # each sample lasts min_seconds
    assert slow["a"] == [0.25, 0.25]  # still seconds per call, one per repeat
    monkeypatch.undo()

    def busy_stage():
        return sum(i * i for i in range(2000))
    assert "busy_stage" in profile_top(busy_stage, calls=3)


def test_thread_count_leaves_busy_cores_alone(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert bench_threads(16, 0.3)[0] == 16 and bench_threads(16, 6.0)[0] == 10
    assert bench_threads(2, 7.0)[0] == 1 and "load average" in bench_threads(2, 7.0)[1]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert bench_threads(16, 0.0) == (torch.get_num_threads(), "OMP_NUM_THREADS set by the user")


def test_device_slug_and_cli_wiring(tmp_path, monkeypatch):
    assert slugify("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert device_slug("cpu").startswith("cpu-") and "/" not in device_slug("cpu")
    args = build_parser().parse_args(["speed", "--quick", "--device", "cpu", "--out", str(tmp_path)])
    assert args.func is cmd_speed and args.quick and args.device == "cpu"
    seen = {}

    def fake_run_bench(out, device, quick):
        seen.update(out=out, device=device, quick=quick)
        raise ValueError("device='cuda' was asked for, but torch sees no CUDA GPU")
    monkeypatch.setattr("benchmarks.speed.run_bench", fake_run_bench)
    assert cmd_speed(args) == 1 and seen == {"out": str(tmp_path), "device": "cpu", "quick": True}


def test_speed_runs_the_checkouts_benchmark_and_the_old_name_is_gone(tmp_path, monkeypatch, capsys):
    """`histokit speed` runs benchmarks/speed/ of the checkout; --help lists it, whose report folder is
    results/speed (not results/benchmark/, the common benchmark's); `histokit bench`, one letter from `histokit
    benchmark`, is no longer a command."""
    default = f"(default {paths.RESULTS_DIR / 'speed'})"
    with pytest.raises(SystemExit):
        main(["--help"])
    out, err = capsys.readouterr()
    listed = out.split("positional arguments:", 1)[1]
    assert "    speed " in listed and " bench " not in listed and ",bench," not in out
    assert "results/speed/<device>.md" in out and err == ""
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--quick"])
    assert exit_.value.code == 2 and "invalid choice: 'bench'" in capsys.readouterr().err

    with pytest.raises(SystemExit):
        main(["speed", "--help"])
    out, err = capsys.readouterr()
    assert "usage: histokit speed" in out and default in " ".join(out.split()) and err == ""

    seen = []

    def fake_run_bench(out, device, quick):
        seen.append((out, device, quick))
        return {"md": tmp_path / "cpu.md", "csv": tmp_path / "cpu.csv", "targets": []}
    monkeypatch.setattr("benchmarks.speed.run_bench", fake_run_bench)
    assert main(["speed", "--quick", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert seen == [(None, "cpu", True)]  # None: run_bench's default, results/speed
    assert f"[histokit] speed: {tmp_path / 'cpu.md'}" in out and err == ""


def test_speed_without_a_checkout_says_where_the_benchmark_is(tmp_path, monkeypatch, capsys):
    assert speed_benchmark().__file__ == str(Path(REPO) / "benchmarks" / "speed" / "__init__.py")
    with pytest.raises(Exception, match=r"benchmarks/speed does not exist .*pip-installed.*make speed"):
        speed_benchmark(tmp_path)
    monkeypatch.setattr(paths, "REPO_DIR", tmp_path)  # an installed histokit: no benchmarks/ beside the package
    assert main(["speed", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'benchmarks' / 'speed'} does not exist" in err and "make speed" in err


def test_training_input_rows_compare_the_loader_with_the_step_per_method(bench_run):
    _, result = bench_run
    training = result["sections"]["training"]
    for name in ("dino", "ibot", "simclr"):
        loader, step = training.find(f"training/ratio/{name}"), training.find(f"training/step/{name}")
        assert loader.unit == step.unit == "img/s" and loader.ratio == pytest.approx(loader.value / step.value)
        assert ("waits for data" in loader.note) == (loader.ratio < 1)
        assert "(0 workers)" in loader.measurement  # the CPU policy: no workers for a training loader
