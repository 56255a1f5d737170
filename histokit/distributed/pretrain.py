"""A training run of a recipe (stage 02 / 03) as one rank of a torchrun job.

``python -m histokit.distributed.pretrain --paper P --profile PROF --train-run NAME --run-dir R --data-root D ...``
(:func:`histokit.distributed.stage.train_module_args`) is what :func:`histokit.stages.train.train_one` launches under ``torchrun`` when the stage's ``distributed`` flags ask for
more than one process (``histokit reproduce --nproc-per-node N``). There is no configuration of its own: each rank
reopens the notebook's context (:mod:`histokit.distributed.stage`), takes the recipe's own
``TrainSpec`` (``get_recipe(P, PROF).train_spec(NAME)``) and runs :func:`histokit.stages.train.train_rank`, the
function the single-process stage runs: the same dataset, split, views, weight resolution and engine call.

Batch rule: the recipe's ``TrainSpec.batch_size`` is the *global* batch; each of the W ranks loads
``batch_size / W`` (a batch not divisible by W is refused), and one seeded permutation
(``DistributedSampler``, ``drop_last``) with per-image seeded views (``PerSampleSeed``) makes W ranks train on the
batches one process would. ``lr`` is used as the recipe gives it (no scaling rule), so the run is the same run.

Outputs (rank 0 writes, atomically): ``train/<NAME>/encoder.pt``, ``history.json``, ``checkpoints/`` (resumed by a
restarted job), the loss figure and footnotes, exactly as the single-process stage writes them. A failure is recorded
per rank (torch's ``@record``: ``error.json`` in torchrun's ``--log-dir``) for the stage to report.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from torch.distributed.elastic.multiprocessing.errors import record

from .launch import cleanup, init_distributed
from .stage import TRAIN_MODULE, add_context_arguments, mute_notes_off_main, worker_context


def run_rank(ctx, run_name: str, scope: str = "all"):
    """This process's rank of the training run ``run_name`` of ``ctx.recipe`` (a process group is opened from
    torchrun's variables, or none in a plain process); returns its :class:`~histokit.stages.train.TrainOutcome`."""
    spec = ctx.recipe.train_spec(run_name)  # an unknown name fails before the training stack is imported
    from histokit.stages.train import train_rank

    env = init_distributed(ctx.device)
    mute_notes_off_main(ctx, env)
    return train_rank(ctx, spec, scope)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {TRAIN_MODULE}",
                                     description="One rank of a recipe's training run under torchrun "
                                                 "(docs/scaling.md); started by stages 02 / 03.")
    add_context_arguments(parser)
    parser.add_argument("--train-run", required=True, help="the TrainSpec name in the recipe (not --run: "
                        "torchrun would read it as its --run-path)")
    parser.add_argument("--scope", default="all", help="the table id the run's footnotes belong to")
    return parser.parse_args(argv)


@record
def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    try:
        env = init_distributed(None if args.device in ("", "auto") else args.device)
        ctx = worker_context(args, env)
        run_rank(ctx, args.train_run, args.scope)
    finally:
        cleanup()


if __name__ == "__main__":
    main()
