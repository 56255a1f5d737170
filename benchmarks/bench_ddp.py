"""Benchmark: DINO training steps on CPU with 1 process vs 2 gloo processes (torchrun), the same global batch.

Not a test. Each configuration is a real run of a recipe ``TrainSpec`` through the stage's own code,
:func:`histokit.stages.train.train_one`: one plain process (no process group) with 1 or 2 intra-op threads, or, with
``ctx.distributed = {"nproc_per_node": 2}``, the ``torchrun --nproc-per-node 2 --standalone`` job the stage launches
(:func:`histokit.distributed.launch.torchrun_command`), 1 thread per rank, each rank loading half of the recipe's
global batch. The runs are cyphervit smoke's ``dino_vit`` (DINO, 2 global + 2 local crops, global batch 16, the
bundled Kather 2016 tiles, the recipe's optimiser and schedules) at two model sizes, made with
``dataclasses.replace`` of that TrainSpec: the kit's tiny ``vit_test`` encoder (32 / 16 px crops, a 4,096-prototype
head) and ViT-S/16 with DINO's full 65,536-prototype head at the recipe's 64 / 32 px crops.

Those two runs are not in any histokit recipe, and a torchrun rank reopens its recipe by name
(:mod:`histokit.distributed.stage`), so this file is also the paper module of a one-profile recipe ``bench_ddp/cpu``
(``PROFILES``, :func:`build`), registered in :mod:`histokit.papers`; under torchrun the ranks start here
(``python -m benchmarks.bench_ddp --paper bench_ddp ...``), register it, and run
:func:`histokit.distributed.pretrain.main` unchanged.

Time per step is read from the run's own history (the engine's clock: data loading in the main process, forward,
backward, gradient all-reduce, optimizer, EMA) over the steps after the first ``--skip`` (warm-up), leaving out the
first step of each later epoch (it also holds the previous epoch's checkpoint write and replica check); process
start-up and imports are excluded. The final weights (student, teacher, center: the epoch checkpoint's ``model``)
of every run are compared with the 1-process, 1-thread run (same batches, same views: they agree up to float32
summation order).

Run: ``python benchmarks/bench_ddp.py`` (writes results/speed/ddp-cpu.md and .csv); ``--quick``: the tiny
model only, 1 run per configuration, 5 steps; ``--out DIR/STEM`` writes STEM.md and STEM.csv elsewhere.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE = "benchmarks.bench_ddp"   # how torchrun ranks import this file (run_torchrun puts REPO on PYTHONPATH)
PAPER, PROFILES = "bench_ddp", ("cpu",)
BASE = ("cyphervit", "smoke", "dino_vit")   # the recipe TrainSpec both runs are made from
RUNS = {"vit_test": "ddp_vit_test", "vit_small_patch16_224": "ddp_vit_small_dino65k"}


# ------------------------------------------------------------------------------------- the benchmark's recipe


def train_specs(base):
    """The benchmark's training runs: ``base`` (cyphervit smoke ``dino_vit``) with only the model size changed."""
    head = {k: v for k, v in base.method_cfg.items() if k != "out_dim"}
    return {
        # the kit's tiny test ViT: communication and Python overhead dominate
        "vit_test": replace(base, name=RUNS["vit_test"], encoder="vit_test", image_size=32, local_size=16,
                            method_cfg={**head, "out_dim": 4096, "hidden_dim": 256, "bottleneck_dim": 64}),
        # ViT-S/16 with DINO's full head (the method's default out_dim, 65,536 prototypes) at the recipe's crops
        "vit_small_patch16_224": replace(base, name=RUNS["vit_small_patch16_224"], encoder="vit_small_patch16_224",
                                         method_cfg=head),
    }


def build(profile: str):
    """The recipe ``bench_ddp/cpu`` (the paper-module contract of :func:`histokit.papers.get_recipe`): cyphervit
    smoke's datasets and notes, and the two runs of :func:`train_specs` as its only training runs."""
    from histokit.papers import get_recipe

    recipe = get_recipe(*BASE[:2])
    runs = tuple(train_specs(recipe.train_spec(BASE[2])).values())
    return replace(recipe, paper=PAPER, profile=profile, pretrain=runs, finetune=(), models=(), evaluations=(),
                   ablations=(), tables=(), figures=())


def register() -> None:
    """Make ``bench_ddp`` a paper of :func:`histokit.papers.get_recipe` in this process (and importable by name)."""
    import histokit.papers as papers

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    papers._PAPERS[PAPER] = MODULE  # the registry is a module dict (histokit/papers/__init__.py); no public hook


@contextmanager
def ranks_start_here():
    """While a stage launches torchrun: its ranks run ``-m benchmarks.bench_ddp`` (which registers the recipe, then
    calls histokit.distributed.pretrain.main) instead of ``-m histokit.distributed.pretrain``, with 1 thread each."""
    import histokit.distributed.stage as stage

    saved, omp = stage.TRAIN_MODULE, os.environ.get("OMP_NUM_THREADS")
    stage.TRAIN_MODULE = MODULE  # read by stage.train_module_args, which _train_under_torchrun calls
    os.environ["OMP_NUM_THREADS"] = "1"  # torchrun's own default for nproc > 1, made explicit
    try:
        yield
    finally:
        stage.TRAIN_MODULE = saved
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp


def worker(argv) -> None:
    """One torchrun rank: the product's worker entry point with the benchmark's recipe registered."""
    register()
    from histokit.distributed.pretrain import main as rank_main

    rank_main(argv)


# ------------------------------------------------------------------------------------------------ the benchmark


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(model: str, procs: int, threads: int, steps, run_dir: Path) -> dict:
    """One real run of the recipe's TrainSpec for ``model`` through ``train_one`` in a fresh run directory."""
    import torch

    from histokit.stages.context import open_stage
    from histokit.stages.train import train_one

    ctx = open_stage(PAPER, PROFILES[0], run_dir=str(run_dir), device="cpu",
                     rehearse={"max_steps": steps} if steps else None,
                     distributed={"nproc_per_node": procs} if procs > 1 else None)
    ctx.progress = False
    spec = ctx.recipe.train_spec(RUNS[model])
    before = torch.get_num_threads()
    t = time.perf_counter()
    try:
        if procs == 1:
            torch.set_num_threads(threads)
        with ranks_start_here() if procs > 1 else nullcontext():
            outcome = train_one(ctx, spec, "all")
    finally:
        torch.set_num_threads(before)
    wall = time.perf_counter() - t
    if outcome.status != "trained":
        raise RuntimeError(f"{spec.name} in {run_dir}: {outcome.status}, expected a fresh training run")
    out = run_dir / "train" / spec.name
    config = json.loads((out / "checkpoints" / "train_config.json").read_text())
    saved = json.loads((out / "history.json").read_text())
    if saved["world_size"] != procs or config["world_size"] != procs:
        raise RuntimeError(f"{spec.name}: ran with world size {saved['world_size']}, expected {procs}")
    return {"history": outcome.history, "wall_s": wall, "config": config, "spec": spec,
            "weights": torch.load(out / "checkpoints" / "checkpoint_last.pt", weights_only=True)["model"]}


def seconds_per_step(history: list, skip: int) -> tuple[float, int]:
    """Mean seconds of the steps after the first ``skip``, from the engine's clock (one entry per step), leaving out
    the first step of each epoch: ``(seconds per step, steps timed)``."""
    deltas = [(b["seconds"] - a["seconds"]) / (b["step"] - a["step"]) for a, b in zip(history, history[1:])
              if b["step"] > skip and b["epoch"] == a["epoch"]]
    if not deltas:
        raise ValueError(f"no step to time: {len(history)} steps, --skip {skip}")
    return statistics.fmean(deltas), len(deltas)


def max_diff(weights: dict, ref: dict) -> tuple[float, str]:
    diffs = {k: float((weights[k].double() - ref[k].double()).abs().max()) for k in ref if ref[k].is_floating_point()}
    worst = max(diffs, key=diffs.get)
    return diffs[worst], worst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--steps", type=int, default=None,
                   help="cap each run at this many optimizer steps (a rehearsal's max_steps; default: the recipe's "
                        "2 epochs)")
    p.add_argument("--skip", type=int, default=2, help="first steps left out of the timing (warm-up)")
    p.add_argument("--repeats", type=int, default=3, help="runs per configuration (median reported)")
    p.add_argument("--quick", action="store_true", help="vit_test only, 1 run per configuration, 5 steps")
    p.add_argument("--out", default=str(REPO / "results" / "speed" / "ddp-cpu"),
                   help="output stem: writes STEM.md and STEM.csv")
    a = p.parse_args()
    if a.quick:
        a.models, a.repeats, a.steps = ["vit_test"], 1, 5

    register()
    import timm
    import torch

    load_before = os.getloadavg()
    t_start = time.perf_counter()
    rows, specs = [], {}
    configs = ((1, 1), (1, 2), (2, 1))
    with tempfile.TemporaryDirectory(prefix="bench_ddp_") as tmp:
        for model in a.models:
            timings: dict = {c: [] for c in configs}
            results = {}
            for rep in range(a.repeats):  # interleaved, so a burst of load on the shared machine hits every config
                for procs, threads in configs:
                    r = run(model, procs, threads, a.steps, Path(tmp) / f"{model}_{procs}x{threads}_{rep}")
                    s, n_timed = seconds_per_step(r["history"], a.skip)
                    timings[(procs, threads)].append(s)
                    r["steps_timed"] = n_timed
                    results[(procs, threads)] = r
                    print(model, procs, threads, rep, f"{s:.4f} s/step ({n_timed} steps), run {r['wall_s']:.1f} s",
                          flush=True)
            specs[model] = results[(1, 1)]["spec"]
            ref = results[(1, 1)]["weights"]
            for procs, threads in configs:
                r = results[(procs, threads)]
                h, cfg = r["history"], r["config"]
                s_per_step = statistics.median(timings[(procs, threads)])
                diff, worst = max_diff(r["weights"], ref)
                rows.append({"model": model, "processes": cfg["world_size"], "threads_per_process": threads,
                             "batch_per_rank": cfg["batch_per_rank"], "global_batch": cfg["global_batch"],
                             "steps_timed": r["steps_timed"], "runs": a.repeats, "s_per_step": round(s_per_step, 4),
                             "s_per_step_min": round(min(timings[(procs, threads)]), 4),
                             "s_per_step_max": round(max(timings[(procs, threads)]), 4),
                             "images_per_s": round(cfg["global_batch"] / s_per_step, 2),
                             "speedup_vs_1x1": None, "max_weight_diff_vs_1x1": f"{diff:.2e}",
                             "final_loss": round(h[-1]["loss"], 5)})
                print(rows[-1], f"(largest weight difference in {worst})", flush=True)
            base = next(r for r in rows if r["model"] == model and (r["processes"], r["threads_per_process"]) == (1, 1))
            for r in rows:
                if r["model"] == model:
                    r["speedup_vs_1x1"] = round(base["s_per_step"] / r["s_per_step"], 2)
    load_after = os.getloadavg()
    total = time.perf_counter() - t_start

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cols = list(rows[0])
    spec = next(iter(specs.values()))
    steps_text = (f"capped at {a.steps} optimizer steps (a rehearsal's max_steps; schedules of the full "
                  f"{spec.epochs} epochs)" if a.steps else f"{spec.epochs} epochs")
    sizes = "; ".join(f"`{m}`: run `{s.name}`, {s.image_size} / {s.local_size} px crops, "
                      f"out_dim {s.method_cfg.get('out_dim', 65536)}" for m, s in specs.items())
    command = " ".join(["python benchmarks/bench_ddp.py", *sys.argv[1:]])
    lines = [
        "# DINO steps on CPU: 1 process vs 2 gloo processes (torchrun)", "",
        f"Command: `{command}` — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} ({total:.0f} s in all).", "",
        f"- Device: CPU only, {cpu_name()}, {os.cpu_count()} logical cores visible; load average "
        f"{load_before[0]:.1f} before / {load_after[0]:.1f} after (a shared machine: other jobs were running).",
        f"- Versions: Python {platform.python_version()}, torch {torch.__version__} (gloo backend), timm "
        f"{timm.__version__}.",
        f"- Each run: a recipe TrainSpec through `histokit.stages.train.train_one` in a fresh run directory: in this "
        f"process without a process group (torch threads = threads_per_process), or as the stage's "
        f"`torchrun --nproc-per-node 2 --standalone` job (1 thread per rank; the ranks run "
        f"`histokit.distributed.pretrain.main` from `-m {MODULE}`, which registers this benchmark's recipe). "
        f"The runs are {BASE[0]} {BASE[1]}'s `{BASE[2]}` with only the model size replaced ({sizes}): DINO, "
        f"2 global + {spec.n_local} local crops, fp32, {steps_text} over the recipe's train split of the bundled "
        f"Kather 2016 tiles ({spec.dataset}), global batch {spec.batch_size} (per rank "
        f"{spec.batch_size // 2} with 2 processes), {spec.optimizer} lr {spec.lr:g} after {spec.warmup_epochs} "
        f"warm-up epoch(s), weight decay {spec.weight_decay:g}"
        + (f" -> {spec.weight_decay_end:g} (cosine)" if spec.weight_decay_end is not None else "")
        + (f", gradient clipping {spec.grad_clip:g} ({spec.grad_clip_mode})" if spec.grad_clip is not None
           else ", no gradient clipping") + " (the stage's engine call).",
        f"- s_per_step: the engine's own clock (history.json, one entry per step) over steps {a.skip + 1}..end "
        f"without the first step of each later epoch (it also holds the epoch checkpoint write): data loading with "
        f"num_workers = 0, forward, backward, DDP all-reduce, optimizer, EMA; start-up and imports excluded. "
        f"Median (min, max) of {a.repeats} run(s) per row, the configurations interleaved.",
        "- max_weight_diff_vs_1x1: largest absolute difference of any final weight (student, teacher, center: the "
        "last epoch checkpoint's model) from the 1-process, 1-thread run: the same global batches and views give "
        "the same training up to float32 summation order.", "",
        "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|",
    ]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    lines += ["", "speedup_vs_1x1 > 1: faster per step than one process with one thread. Both 2-way rows use the "
              "same two cores; what DDP buys on GPUs (one process per GPU, NCCL) is not measured here."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))



if __name__ == "__main__":
    from histokit.distributed.launch import torchrun_env

    if torchrun_env() is not None:  # a rank of the torchrun job a stage launched (ranks_start_here)
        worker(sys.argv[1:])
    else:
        main()
