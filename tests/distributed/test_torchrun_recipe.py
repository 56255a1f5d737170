"""Stage 02 / 03 under real ``torchrun`` from the recipe (issue 14, item 4).

With ``ctx.distributed = {"nproc_per_node": 2}`` a training run of a recipe is launched by
:func:`histokit.stages.train.train_one` as ``python -m torch.distributed.run --nproc-per-node 2 --standalone ... -m
histokit.distributed.pretrain --paper P --profile PROF --train-run NAME ...``; every rank builds the run from the
recipe's own TrainSpec through the stage's code, rank 0 writes ``train/<name>/encoder.pt``, ``history.json`` and the
checkpoints. Here: cyphervit smoke's ``dino_vit`` (ViT-S/16 at 64 px, global batch 16 = 2 ranks x 8, gloo on CPU)
capped at 2 optimisation steps (a rehearsal's ``max_steps``), against the same run in this process.

``pytest -m torchrun`` selects the two tests that start torchrun (about a minute together on 2 cores); the
command-contract and refusal tests need no subprocess.
"""
import json
import sys

import pytest
import torch

from histokit.distributed.launch import (TorchrunError, failure_report, is_multiprocess, planned_world_size,
                                         run_torchrun, torchrun_command)
from histokit.distributed.stage import train_module_args as module_args
from histokit.stages.context import open_stage
from histokit.stages.train import train_one
from histokit.stages.data import write_indexes

PAPER, PROFILE, RUN = "cyphervit", "smoke", "dino_vit"
# Same initial weights, same global batches (one seeded permutation, per-image seeded views): the losses differ only
# by float32 summation order (measured: 7e-7 at step 2). The weights after 2 steps: measured 3e-9 (the warm-up gives
# step 1 lr 0); the attention key bias, whose gradient is float noise (zero in exact arithmetic) that AdamW scales to
# up to lr per step, is held to lr x steps.
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 5e-5


def _ctx(run_dir, distributed=None, max_steps=2):
    ctx = open_stage(PAPER, PROFILE, run_dir=str(run_dir), device="cpu", rehearse={"max_steps": max_steps},
                     distributed=distributed)
    ctx.progress = False
    write_indexes(ctx)  # stage 01
    return ctx


# ----------------------------------------------------------------------------------------- the command contract


def test_torchrun_command_contract():
    mod = ["histokit.distributed.pretrain", "--paper", "esvit"]
    cmd = torchrun_command({"nproc_per_node": 2}, mod)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert cmd[3:] == ["--nproc-per-node", "2", "--standalone", "-m", *mod]
    static = torchrun_command({"nproc_per_node": 8, "nnodes": 2, "node_rank": 1, "master_addr": "10.0.0.1",
                               "master_port": 29500, "rdzv_backend": None}, mod)
    assert static[3:-len(mod) - 1] == ["--nproc-per-node", "8", "--nnodes", "2", "--node-rank", "1", "--master-addr",
                                       "10.0.0.1", "--master-port", "29500"]
    rdzv = torchrun_command({"nproc_per_node": 4, "nnodes": "1:4", "rdzv_endpoint": "head:29400", "rdzv_id": "job7",
                             "max_restarts": 3}, mod, log_dir="/tmp/logs")
    assert rdzv[3:-len(mod) - 1] == ["--nproc-per-node", "4", "--nnodes", "1:4", "--rdzv-backend", "c10d",
                                     "--rdzv-endpoint", "head:29400", "--rdzv-id", "job7", "--max-restarts", "3",
                                     "--log-dir", "/tmp/logs", "--redirects", "3", "--tee", "3"]
    assert is_multiprocess({"nproc_per_node": 2}) and is_multiprocess({"nnodes": 2, "master_addr": "a"})
    assert not is_multiprocess({}) and not is_multiprocess({"nproc_per_node": 1, "nnodes": 1})
    assert planned_world_size({"nproc_per_node": 4, "nnodes": 2}) == 8
    assert planned_world_size({"nproc_per_node": 4, "nnodes": "1:2"}) is None


@pytest.mark.bad_input
def test_torchrun_command_refuses_what_torchrun_would_misread():
    mod = ["histokit.distributed.pretrain"]
    with pytest.raises(ValueError, match="unknown key"):
        torchrun_command({"nproc_per_node": 2, "gpus": 2}, mod)
    with pytest.raises(ValueError, match="needs a rendezvous"):
        torchrun_command({"nproc_per_node": 2, "nnodes": 2}, mod)
    with pytest.raises(ValueError, match="both master_addr and master_port"):
        torchrun_command({"nnodes": 2, "master_addr": "10.0.0.1"}, mod)
    with pytest.raises(ValueError, match="nproc_per_node must be an integer"):
        torchrun_command({"nproc_per_node": "two"}, mod)
    with pytest.raises(ValueError, match="start with the module"):
        torchrun_command({"nproc_per_node": 2}, ["--paper", "x"])
    with pytest.raises(ValueError, match="'--run' would be read by torchrun as '--run-path'"):
        torchrun_command({"nproc_per_node": 2}, mod + ["--run", "dino_vit"])


@pytest.mark.bad_input
def test_a_recipe_batch_the_world_size_does_not_divide_is_refused_before_launch(tmp_path):
    ctx = _ctx(tmp_path, {"nproc_per_node": 3})
    with pytest.raises(ValueError, match="'dino_vit': global batch 16 is not divisible by the world size 3"):
        train_one(ctx, ctx.recipe.train_spec(RUN), "all")
    assert not (tmp_path / "logs").exists() and not (tmp_path / "train").exists()  # nothing was started


def test_worker_arguments_reopen_the_notebook_context(tmp_path):
    ctx = _ctx(tmp_path, {"nproc_per_node": 2})
    args = module_args(ctx, RUN)
    assert args[0] == "histokit.distributed.pretrain"
    assert args[args.index("--train-run") + 1] == RUN and args[args.index("--paper") + 1] == PAPER
    assert json.loads(args[args.index("--rehearse") + 1]) == {"max_steps": 2}
    from histokit.distributed.pretrain import parse_args

    parsed = parse_args(args[1:])
    assert (parsed.paper, parsed.profile, parsed.train_run, parsed.device, parsed.rehearse) == (
        PAPER, PROFILE, RUN, "cpu", {"max_steps": 2})


# -------------------------------------------------------------------------------------------- real torchrun


@pytest.mark.torchrun
def test_a_recipe_run_under_torchrun_matches_the_one_process_run(tmp_path):
    one_ctx = _ctx(tmp_path / "one")
    torch.set_num_threads(1)  # as each torchrun rank (OMP_NUM_THREADS=1): no oversubscription of 2 shared cores
    one = train_one(one_ctx, one_ctx.recipe.train_spec(RUN), "all")
    two_ctx = _ctx(tmp_path / "two", {"nproc_per_node": 2})
    two = train_one(two_ctx, two_ctx.recipe.train_spec(RUN), "all")

    assert (one.status, two.status) == ("trained", "trained") and two.init == one.init == "random initialisation"
    for name in ("encoder.pt", "history.json", "checkpoints/train_config.json"):
        assert (tmp_path / "two" / "train" / RUN / name).is_file(), name
    # the finished run's resume checkpoint is removed (rank 0, once encoder.pt is written)
    assert not (tmp_path / "two" / "train" / RUN / "checkpoints" / "checkpoint_last.pt").exists()
    assert [e["step"] for e in two.history] == [e["step"] for e in one.history] == [1, 2]
    assert [e["loss"] for e in two.history] == pytest.approx([e["loss"] for e in one.history], rel=LOSS_RTOL)
    cfg = json.loads((tmp_path / "two" / "train" / RUN / "checkpoints" / "train_config.json").read_text())
    assert (cfg["world_size"], cfg["batch_per_rank"], cfg["global_batch"], cfg["max_steps"]) == (2, 8, 16, 2)
    saved = json.loads((tmp_path / "two" / "train" / RUN / "history.json").read_text())
    assert saved["world_size"] == 2 and saved["spec"]["batch_size"] == 16  # the recipe's own TrainSpec

    spec = one_ctx.recipe.train_spec(RUN)
    e_one, e_two = (torch.load(tmp_path / n / "train" / RUN / "encoder.pt", weights_only=True) for n in ("one", "two"))
    assert e_one.keys() == e_two.keys()
    for k in e_one:
        if k.endswith("attn.qkv.bias"):
            q1, k1, v1 = e_one[k].reshape(3, -1)
            q2, k2, v2 = e_two[k].reshape(3, -1)
            torch.testing.assert_close(torch.stack([q2, v2]), torch.stack([q1, v1]), atol=WEIGHT_ATOL, rtol=0, msg=k)
            torch.testing.assert_close(k2, k1, atol=spec.lr * 2, rtol=0, msg=k)
        else:
            torch.testing.assert_close(e_two[k], e_one[k], atol=WEIGHT_ATOL, rtol=0, msg=k)
    # the stage reuses the torchrun run like any other (same fingerprint)
    assert train_one(two_ctx, two_ctx.recipe.train_spec(RUN), "all").status == "reused"


@pytest.mark.torchrun
@pytest.mark.fault
def test_a_failing_rank_is_reported_with_its_error_and_last_lines(tmp_path):
    ctx = _ctx(tmp_path, {"nproc_per_node": 2})
    log_dir = tmp_path / "logs"
    cmd = torchrun_command(ctx.distributed, module_args(ctx, "no_such_run"), log_dir=log_dir)
    with pytest.raises(TorchrunError) as err:
        run_torchrun(cmd, what="training run 'no_such_run'", log_dir=log_dir, echo=False)
    text = str(err.value)
    assert "training run 'no_such_run' failed under torchrun (exit code 1)" in text
    assert "local rank 0 raised:" in text and "local rank 1 raised:" in text
    assert "has no training run 'no_such_run'" in text  # the worker's own exception, from its error.json
    assert "lines of" in text and "stderr.log" in text  # and the rank's last lines


def test_a_failure_without_error_files_shows_the_last_console_lines(tmp_path):
    text = failure_report(tmp_path / "absent", -9, [f"line {i}\n" for i in range(40)], "training run 'x'", lines=5)
    assert text.splitlines() == ["training run 'x' failed under torchrun (exit code -9).",
                                 "last 5 lines torchrun printed:"] + [f"    line {i}" for i in range(35, 40)]
