"""Benchmark: DINO training steps on CPU with 1 process vs 2 gloo processes (torchrun), the same global batch.

Not a test. Each configuration is a real run of ``python -m histokit.distributed.pretrain`` on the bundled Kather
2016 tiles: one plain process (no process group) with 1 or 2 intra-op threads, and ``torchrun --nproc_per_node 2``
with 1 thread per rank (torchrun's default), each rank taking half of the global batch. Time per step is read from
the run's own history (the engine's clock: data loading in the main process, forward, backward, gradient all-reduce,
optimizer, EMA), after dropping the first ``--skip`` steps (warm-up); process start-up and imports are excluded.
The 2-process run's final weights are compared with the 1-process run of the same global batch (they should agree
to float32 rounding: same batches, same views).

Run: ``python benchmarks/bench_ddp.py`` (writes results/benchmarks/ddp-cpu.md and .csv).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
MODELS = {
    # the kit's tiny test ViT: communication and Python overhead dominate
    "vit_test": {"encoder": "vit_test", "image_size": 32, "local_size": 16,
                 "method_cfg": {"out_dim": 4096, "hidden_dim": 256, "bottleneck_dim": 64}},
    # ViT-S/16 with DINO's full head (65,536 prototypes), small crops so a CPU step takes about a second
    "vit_small_patch16_224": {"encoder": "vit_small_patch16_224", "image_size": 64, "local_size": 32,
                              "method_cfg": {}},
}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(model: str, procs: int, threads: int, global_batch: int, epochs: int, out: Path) -> dict:
    cfg = {"output_dir": str(out), "method": "dino", "n_local": 2, "batch_size_per_rank": global_batch // procs,
           "epochs": epochs, "warmup_epochs": 0, "lr": 5e-4, "seed": 0, "progress": False, "device": "cpu",
           "method_cfg": {"warmup_teacher_temp_epochs": 0}, **{k: v for k, v in MODELS[model].items()
                                                                if k != "method_cfg"}}
    cfg["method_cfg"].update(MODELS[model]["method_cfg"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    cli = ["-m", "histokit.distributed.pretrain", "--config", str(out / "run.json")]
    if procs == 1:
        cmd = [sys.executable, *cli]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *cli]
    t = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    history = json.loads((out / "history.json").read_text())
    return {"history": history, "wall_s": wall,
            "weights": torch.load(out / "checkpoints" / "checkpoint_last.pt", weights_only=True)["model"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2, help="100 tiles / global batch steps per epoch")
    p.add_argument("--skip", type=int, default=2, help="first steps left out of the timing (warm-up)")
    p.add_argument("--repeats", type=int, default=3, help="runs per configuration (median reported)")
    p.add_argument("--out", default=str(REPO / "results" / "benchmarks" / "ddp-cpu"))
    a = p.parse_args()

    import timm

    load_before = os.getloadavg()
    rows = []
    configs = ((1, 1), (1, 2), (2, 1))
    with tempfile.TemporaryDirectory() as tmp:
        for model in a.models:
            timings: dict = {c: [] for c in configs}
            results = {}
            for rep in range(a.repeats):  # interleaved, so a burst of load on the shared machine hits every config
                for procs, threads in configs:
                    r = run(model, procs, threads, a.global_batch, a.epochs,
                            Path(tmp) / f"{model}_{procs}x{threads}_{rep}")
                    h = r["history"]
                    timings[(procs, threads)].append((h[-1]["seconds"] - h[a.skip - 1]["seconds"]) / (len(h) - a.skip))
                    results[(procs, threads)] = r
                    print(model, procs, threads, rep, f"{timings[(procs, threads)][-1]:.4f} s/step", flush=True)
            ref = results[(1, 1)]["weights"]
            for procs, threads in configs:
                r, h = results[(procs, threads)], results[(procs, threads)]["history"]
                s_per_step = statistics.median(timings[(procs, threads)])
                diff = max(float((r["weights"][k] - ref[k]).abs().max()) for k in ref)
                rows.append({"model": model, "processes": procs, "threads_per_process": threads,
                             "batch_per_rank": a.global_batch // procs, "global_batch": a.global_batch,
                             "steps_timed": len(h) - a.skip, "runs": a.repeats, "s_per_step": round(s_per_step, 4),
                             "s_per_step_min": round(min(timings[(procs, threads)]), 4),
                             "s_per_step_max": round(max(timings[(procs, threads)]), 4),
                             "images_per_s": round(a.global_batch / s_per_step, 2),
                             "speedup_vs_1x1": None, "max_weight_diff_vs_1x1": f"{diff:.2e}",
                             "final_loss": round(h[-1]["loss"], 5)})
                print(rows[-1], flush=True)
            base = next(r for r in rows if r["model"] == model and (r["processes"], r["threads_per_process"]) == (1, 1))
            for r in rows:
                if r["model"] == model:
                    r["speedup_vs_1x1"] = round(base["s_per_step"] / r["s_per_step"], 2)
    load_after = os.getloadavg()

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cols = list(rows[0])
    lines = [
        "# DINO steps on CPU: 1 process vs 2 gloo processes (torchrun)", "",
        f"Command: `python benchmarks/bench_ddp.py` — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
        f"- Device: CPU only, {cpu_name()}, {os.cpu_count()} logical cores visible; load average "
        f"{load_before[0]:.1f} before / {load_after[0]:.1f} after (a shared machine: other jobs were running).",
        f"- Versions: Python {platform.python_version()}, torch {torch.__version__} (gloo backend), timm "
        f"{timm.__version__}.",
        f"- Each run: `python -m histokit.distributed.pretrain` (1 process, no process group, OMP_NUM_THREADS = "
        f"threads) or `torchrun --standalone --nproc_per_node 2` (1 thread per rank); DINO, 2 global + 2 local "
        f"crops, fp32, {a.epochs} epochs over the 100 bundled Kather 2016 tiles, global batch {a.global_batch} "
        f"(per rank {a.global_batch // 2} with 2 processes), AdamW, gradient clipping 3.0.",
        f"- s_per_step: the engine's own clock over steps {a.skip + 1}..end (data loading with num_workers = 0, "
        f"forward, backward, DDP all-reduce, optimizer, EMA); start-up and imports excluded. Median (min, max) of "
        f"{a.repeats} runs per row, the configurations interleaved.",
        "- max_weight_diff_vs_1x1: largest absolute difference of any final weight (student, teacher, center) from "
        "the 1-process, 1-thread run: the same global batches and views give the same training up to float32 "
        "summation order.", "",
        "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|",
    ]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    lines += ["", "speedup_vs_1x1 > 1: faster per step than one process with one thread. Both 2-way rows use the "
              "same two cores; what DDP buys on GPUs (one process per GPU, NCCL) is not measured here."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
