"""benchmarks/bench_ddp.py without training: its recipe is cyphervit smoke's ``dino_vit`` with only the model size
replaced, the torchrun ranks a stage would launch for it start from the benchmark (and parse as the product's worker
arguments), and its step timing reads the engine's history as documented. The benchmark itself is run by hand."""
import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest

import histokit.distributed.pretrain as pretrain
import histokit.distributed.stage as stage
import histokit.papers as papers
from histokit.papers import get_recipe
from histokit.stages.context import open_stage

REPO = str(Path(__file__).resolve().parents[2])
if REPO not in sys.path:  # `pytest` (not `python -m pytest`) leaves the repository root off sys.path
    sys.path.insert(0, REPO)
import benchmarks.bench_ddp as bench  # noqa: E402


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(papers._PAPERS, bench.PAPER, bench.MODULE)  # what bench.register() does, undone after


def test_the_benchmark_recipe_is_the_smoke_run_at_two_model_sizes(registered):
    base = get_recipe("cyphervit", "smoke").train_spec("dino_vit")
    recipe = get_recipe(bench.PAPER, "cpu")
    tiny, small = (recipe.train_spec(bench.RUNS[m]) for m in ("vit_test", "vit_small_patch16_224"))
    changed = {f.name for f in dataclasses.fields(base) if getattr(tiny, f.name) != getattr(base, f.name)}
    assert changed == {"name", "encoder", "image_size", "local_size", "method_cfg"}
    assert (tiny.encoder, tiny.image_size, tiny.method_cfg["out_dim"]) == ("vit_test", 32, 4096)
    changed = {f.name for f in dataclasses.fields(base) if getattr(small, f.name) != getattr(base, f.name)}
    # the smoke profile trains vit_smoke; the bench's "small" run is the paper's ViT-S/16 at the smoke settings
    assert changed == {"name", "encoder", "method_cfg"} and "out_dim" not in small.method_cfg  # DINO's: 65,536
    assert small.encoder == "vit_small_patch16_224"


def test_torchrun_ranks_start_from_the_benchmark_and_get_the_products_arguments(registered, tmp_path):
    ctx = open_stage(bench.PAPER, "cpu", run_dir=str(tmp_path), device="cpu", rehearse={"max_steps": 5},
                     distributed={"nproc_per_node": 2})
    omp = os.environ.get("OMP_NUM_THREADS")
    with bench.ranks_start_here():
        args = stage.train_module_args(ctx, bench.RUNS["vit_test"])
        assert os.environ["OMP_NUM_THREADS"] == "1"
    assert stage.TRAIN_MODULE == "histokit.distributed.pretrain" and os.environ.get("OMP_NUM_THREADS") == omp
    assert args[0] == bench.MODULE
    parsed = pretrain.parse_args(args[1:])
    assert (parsed.paper, parsed.profile, parsed.train_run, parsed.rehearse) == (
        bench.PAPER, "cpu", bench.RUNS["vit_test"], {"max_steps": 5})
    assert json.loads(args[args.index("--rehearse") + 1]) == {"max_steps": 5}


def test_step_timing_skips_warm_up_and_epoch_boundaries():
    history = [{"epoch": 1 + (s > 3), "step": s, "seconds": t}
               for s, t in [(1, 5.0), (2, 6.0), (3, 7.0), (4, 17.0), (5, 18.0), (6, 19.0)]]
    assert bench.seconds_per_step(history, skip=2) == (1.0, 3)  # steps 3, 5, 6; not 4 (after the epoch's end)
    with pytest.raises(ValueError, match="no step to time"):
        bench.seconds_per_step(history[:2], skip=2)
