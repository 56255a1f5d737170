"""What a stage hands to its torchrun workers: the run's context as command-line arguments, and back.

The stages build their workers' command lines here (:func:`train_module_args`, :func:`extract_module_args`), so
they never import the worker modules, which import the stages: the dependency runs one way.

A stage notebook with ``distributed`` flags (``histokit reproduce --nproc-per-node N ...``) launches
``torchrun ... -m histokit.distributed.pretrain`` (a training run of stage 02 / 03) or ``-m
histokit.distributed.extract stage`` (the features of stage 04). Each worker opens the same
:class:`~histokit.stages.context.StageContext` as the notebook (:func:`~histokit.stages.context.open_stage` with the
same paper, profile, run directory, data root, device, seed, checkpoints and rehearsal caps) and so reads the
recipe, the datasets, the splits and the weights through the stage's own code. Only rank 0 adds footnotes.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from .launch import DistEnv

# the worker modules torchrun runs (``python -m``); a benchmark's recipe may point TRAIN_MODULE at its own entry
TRAIN_MODULE = "histokit.distributed.pretrain"
EXTRACT_MODULE = "histokit.distributed.extract"
EXTRACT_COMMAND = "stage"


def context_args(ctx: Any) -> list[str]:
    """The arguments that reopen ``ctx`` in a worker (:func:`worker_context`)."""
    args = ["--paper", ctx.paper, "--profile", ctx.profile, "--run-dir", str(ctx.run_dir), "--data-root",
            str(ctx.data_root), "--device", str(ctx.device), "--seed", str(ctx.seed)]
    for name, path in sorted(ctx.checkpoints.items()):
        args += ["--checkpoint", f"{name}={path}"]
    if ctx.rehearse:
        args += ["--rehearse", json.dumps(ctx.rehearse, sort_keys=True)]
    if not ctx.progress:
        args += ["--no-progress"]
    return args


def train_module_args(ctx: Any, run_name: str, scope: str = "all") -> list[str]:
    """``[module, args...]`` that make a torchrun worker train ``run_name`` of ``ctx``'s recipe
    (:mod:`histokit.distributed.pretrain`)."""
    return [TRAIN_MODULE, *context_args(ctx), "--train-run", run_name, "--scope", scope]


def extract_module_args(ctx: Any, model: str, dataset_key: str) -> list[str]:
    """``[module, args...]`` that make a torchrun worker extract the features of one (model, dataset) of ``ctx``
    (:mod:`histokit.distributed.extract`)."""
    return [EXTRACT_MODULE, EXTRACT_COMMAND, *context_args(ctx), "--model", model, "--dataset-key", dataset_key]


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, value


def add_context_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--paper", required=True)
    parser.add_argument("--profile", required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (rank r of a node takes GPU LOCAL_RANK)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", action="append", type=_pair, default=[], metavar="NAME=PATH")
    parser.add_argument("--rehearse", type=json.loads, default=None, help="rehearsal caps (JSON object)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def worker_context(args: argparse.Namespace, env: DistEnv):
    """The notebook's context, reopened in this rank (``env`` from :func:`~histokit.distributed.init_distributed`):
    its device is this rank's (GPU ``LOCAL_RANK``), and ranks other than 0 add no footnotes (rank 0 writes them)."""
    from ..stages.context import open_stage

    device = "auto" if args.device in ("", "auto") else ("cuda" if str(args.device).startswith("cuda") else
                                                         args.device)
    ctx = open_stage(paper=args.paper, profile=args.profile, data_root=args.data_root, run_dir=args.run_dir,
                     device=device, seed=args.seed, checkpoints=dict(args.checkpoint), rehearse=args.rehearse)
    ctx.device = str(env.device)
    ctx.progress = bool(args.progress) and env.is_main
    mute_notes_off_main(ctx, env)
    return ctx


def mute_notes_off_main(ctx: Any, env: DistEnv) -> None:
    """Footnotes are a file every rank would rewrite at once: only rank 0 writes them."""
    if not env.is_main:
        ctx.add_note = lambda scope, text: None
