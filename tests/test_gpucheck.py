"""Issue 15 item 9: `histokit gpucheck` in its reduced CPU form on tiny inputs: every part runs or says why it was
skipped, the report lists both, and a part that raises is reported without stopping the others."""
import pytest

from histokit import gpucheck, paths
from histokit.cli import main

TINY = dict(ssl=(("dino", "vit_test"), ("esvit", "swin_test")),
            ssl_cfg=dict(out_dim=256, hidden_dim=64, bottleneck_dim=32), global_size=64, local_size=32, n_local=2,
            steps=2, latency_encoder="vit_test", latency_size=32, gallery=500, latency_repeats=1,
            search_gallery=2000, search_queries=20, search_dim=32)


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as mp:  # no out_dir: the default, results/speed/
        mp.setattr(paths, "RESULTS_DIR", results)
        run = gpucheck.run_gpucheck(device="cpu", cfg=gpucheck.GpuCheckConfig(**TINY), log=lambda _: None)
    assert run["path"].parent == results / "speed"
    return run


def test_reduced_cpu_form_runs_every_part_it_can_and_skips_faiss_gpu(cpu_run):
    status = {p.name: p.status for p in cpu_run["parts"]}
    assert status == {"environment": "pass", "ssl_step/dino": "measured", "ssl_step/esvit": "measured",
                      "bf16_vs_fp32/dino": "pass", "bf16_vs_fp32/esvit": "pass", "resume_fewer_devices": "pass",
                      "latency": "measured", "faiss_gpu_vs_cpu": "skipped", "torch_search_vs_faiss": "pass"}
    assert cpu_run["status"] == 0
    parts = {p.name: p for p in cpu_run["parts"]}
    assert parts["ssl_step/dino"].values["batch"] == 2  # reduced on a CPU
    assert parts["resume_fewer_devices"].values["saved_states"] == 4  # 0 visible GPUs + 4
    assert parts["resume_fewer_devices"].values["loss_resumed"] == parts["resume_fewer_devices"].values["loss_whole"]
    assert (parts["latency"].values["extraction_device"], parts["latency"].values["search_backend"]) == \
        ("cpu", "faiss-cpu")


def test_report_is_gpucheck_cpu_md_listing_run_and_skipped_parts(cpu_run):
    path = cpu_run["path"]
    assert path.name == "gpucheck-cpu.md"
    text = path.read_text()
    run, skipped = text.split("## Run", 1)[1].split("## Skipped", 1)
    skipped = skipped.split("## Environment", 1)[0]
    for name in ("ssl_step/dino", "ssl_step/esvit", "bf16_vs_fp32/dino", "resume_fewer_devices", "latency",
                 "torch_search_vs_faiss"):
        assert f"- {name}\n" in run
    assert "- faiss_gpu_vs_cpu: no CUDA device" in skipped and "faiss_gpu_vs_cpu" not in run
    assert "Reduced CPU form" in text and "reduced: batch 2 on a CPU" in text
    assert "histokit doctor" in text and "search with --device cuda:" in text


def test_a_part_that_raises_is_reported_and_the_rest_still_run(tmp_path, monkeypatch):
    def broken(device, cfg):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(gpucheck, "part_resume", broken)
    cfg = gpucheck.GpuCheckConfig(**dict(TINY, ssl=(("dino", "vit_test"),)))
    out = gpucheck.run_gpucheck(tmp_path, device="cpu", cfg=cfg, log=lambda _: None)
    status = {p.name: p.status for p in out["parts"]}
    assert status["resume_fewer_devices"] == "ERROR" and status["torch_search_vs_faiss"] == "pass"
    assert out["status"] == 1
    assert "| resume_fewer_devices | ERROR | RuntimeError: CUDA error: out of memory |" in out["path"].read_text()


def test_a_failed_comparison_fails_the_check(tmp_path, monkeypatch):
    monkeypatch.setattr(gpucheck, "_compare", lambda *a, **k: {"ids_equal": 0.5, "max_score_diff": 0.0})
    part = gpucheck.part_torch_search(gpucheck.torch.device("cpu"), gpucheck.GpuCheckConfig(**TINY))
    assert part.status == "FAIL" and "ids equal 0.5000" in part.result


def test_cli_refuses_cuda_without_a_gpu(capsys):
    if gpucheck.torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["gpucheck", "--device", "cuda", "--out", "unused"]) == 1
    assert "torch sees no CUDA GPU" in capsys.readouterr().err
