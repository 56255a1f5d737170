"""Stages 02 (pretraining) and 03 (fine-tuning): every TrainSpec of the recipe through the one training engine.

A run whose final encoder exists is not trained again; an interrupted run resumes from its last epoch checkpoint.
With ``ctx.distributed`` asking for more than one process (``histokit reproduce --nproc-per-node N``), each run is
a ``torchrun`` job whose ranks run :func:`train_rank`, the function a single process runs (docs/scaling.md): the
recipe's batch is the global batch, ``batch_size / world`` per rank, and the outputs are the same files.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import DataLoader

from ..io import atomic_torch_save, atomic_write_json
from ..papers.recipe import TrainSpec
from .common import (check_trained_weights, load_recipe_dataset, resolve_weights, split_indices,
                     trained_weights_identity, trained_weights_path, training_fingerprint, training_rows)
from .context import StageContext


@dataclass
class TrainOutcome:
    name: str
    status: str          # trained | reused
    init: str            # where the starting weights came from
    history: list
    figure: Path | None


def per_rank_batch(global_batch: int, world: int) -> int:
    """The batch each of ``world`` ranks loads: the recipe's batch is the global batch, split evenly
    (``global / world``); a batch that does not divide is refused rather than silently changed."""
    if world < 1:
        raise ValueError(f"world size must be >= 1, got {world}")
    if global_batch % world:
        raise ValueError(f"global batch {global_batch} is not divisible by the world size {world} (nproc_per_node x "
                         f"nnodes): each rank loads global batch / world images; choose a world size that divides "
                         f"{global_batch} (or a recipe batch that the world size divides)")
    return global_batch // world


def training_split(ctx: StageContext, spec: TrainSpec):
    """The run's images, untransformed: the train split of its recipe dataset (a rehearsal's ``max_train_images``
    of it)."""
    dataset = load_recipe_dataset(ctx, spec.dataset)
    return dataset.subset(training_rows(ctx, split_indices(ctx, spec.dataset)["train"]))


def training_dataset(ctx: StageContext, spec: TrainSpec, method=None, split=None):
    """The run's images (``split``, or :func:`training_split`) with the method's transform
    (:func:`~histokit.train.methods.training_transform`: its views, iBOT's masks, ArcFace's augmentation) drawn per
    image from an RNG seeded by (seed, epoch, index), so they do not depend on which process or loader worker makes
    them."""
    from ..distributed.sampler import PerSampleSeed
    from ..train.methods import training_transform

    dataset = split if split is not None else training_split(ctx, spec)
    dataset.transform = training_transform(spec, method)
    return PerSampleSeed(dataset, seed=ctx.seed)


def training_loader(ctx: StageContext, spec: TrainSpec, method=None, split=None) -> DataLoader:
    """This process's loader: one seeded permutation per epoch (``DistributedSampler``, this rank's share of it;
    all of it in one process), full batches of ``per_rank_batch(min(batch_size, images), world)``; workers, pinned
    memory and prefetching by the kit's loader policy (:mod:`histokit.data.loading`). A method with
    ``own_loader_generator`` (Sub-center ArcFace) gets the loader its own seeded generator for the workers' base
    seed (:func:`~histokit.data.loading.seeded_loader`); the SSL loaders draw it from the global stream, as they
    always have (their numbers are unchanged)."""
    from ..data.loading import loader_generator, loader_kwargs, seed_worker
    from ..distributed.launch import world_size
    from ..distributed.sampler import rank_sampler

    dataset = training_dataset(ctx, spec, method, split)
    batch = per_rank_batch(min(spec.batch_size, len(dataset)), world_size())
    sampler = rank_sampler(dataset, shuffle=True, seed=ctx.seed, drop_last=True)
    generator = loader_generator(ctx.seed) if getattr(method, "own_loader_generator", False) else None
    return DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=True, generator=generator,
                      worker_init_fn=seed_worker, **loader_kwargs(ctx.device))


def initial_encoder(ctx: StageContext, spec: TrainSpec, scope: str):
    """The encoder a run starts from and where its weights came from; seeded first, so a random initialisation
    is the same in a notebook (whatever ran before) and in every torchrun rank."""
    from .context import seed_everything

    seed_everything(ctx.seed)
    return resolve_weights(ctx, spec.encoder, spec.init, spec.dataset, image_size=spec.image_size, scope=scope,
                           encoder_kwargs=spec.encoder_kwargs)


HISTORY_POINTS = 500  # loss-curve points of a long run between epoch ends; also how often it waits for the GPU


def log_interval(total_steps: int, max_steps=None) -> int:
    """Steps per history entry: every step for a short run (a rehearsal, a test), else about HISTORY_POINTS
    entries over the run, so the loop waits for the device to read its logs that often, not every step."""
    steps = min(total_steps, max_steps) if max_steps else total_steps
    return max(1, steps // HISTORY_POINTS)


def optimisation_kwargs(spec: TrainSpec) -> dict:
    """The engine's optimisation arguments of a run, all from its TrainSpec: optimizer (and Adam betas), peak and
    final lr, weight decay (constant, or cosine to ``weight_decay_end``), warm-up, gradient clipping and its mode."""
    return dict(epochs=spec.epochs, optimizer=spec.optimizer, lr=spec.lr, min_lr=spec.min_lr,
                weight_decay=spec.weight_decay, weight_decay_end=spec.weight_decay_end,
                warmup_epochs=spec.warmup_epochs, grad_clip=spec.grad_clip, grad_clip_mode=spec.grad_clip_mode,
                betas=tuple(spec.betas) if spec.betas is not None else None)


def fit(ctx: StageContext, spec: TrainSpec, encoder, checkpoint_dir: Path):
    """Any run (SSL, Sub-center ArcFace) through the engine: ``(history, the encoder to evaluate)``. Under a process
    group the engine wraps the method in DDP; ``ctx.max_steps`` (a rehearsal) caps the optimisation steps."""
    from ..train.engine import train
    from ..train.methods import create_training_method

    split = training_split(ctx, spec)  # draws no global random numbers: the method's initialisation is unchanged
    method = create_training_method(spec, encoder, num_classes=len(split.classes))
    loader = training_loader(ctx, spec, method, split)
    history = train(method, loader, **optimisation_kwargs(spec), device=ctx.device, checkpoint_dir=checkpoint_dir,
                    resume=True, seed=ctx.seed, progress=ctx.progress, max_steps=ctx.max_steps, label=spec.name,
                    log_every=log_interval(spec.epochs * len(loader), ctx.max_steps))
    return history, method.eval_encoder()


def train_rank(ctx: StageContext, spec: TrainSpec, scope: str) -> TrainOutcome:
    """Train one run in this process: the whole run in a notebook, or this rank's part under torchrun
    (``histokit.distributed.pretrain``). Only rank 0 writes the outputs."""
    from ..distributed.launch import is_main

    final = trained_weights_path(ctx, spec.name)
    history_file = final.parent / "history.json"
    figure = ctx.results_dir / "figures" / f"loss_{spec.name}.png"
    encoder, init = initial_encoder(ctx, spec, scope)
    history, trained = fit(ctx, spec, encoder, final.parent / "checkpoints")
    if not is_main():
        return TrainOutcome(spec.name, "trained", init, history, None)
    return _finish(ctx, spec, trained, init, history, final, history_file, figure)


def train_one(ctx: StageContext, spec: TrainSpec, scope: str) -> TrainOutcome:
    """One run of the recipe: reused when its encoder exists; else trained here (no process group), or by
    ``torchrun`` workers when ``ctx.distributed`` asks for more than one process."""
    from ..distributed.launch import is_multiprocess

    final = trained_weights_path(ctx, spec.name)
    history_file = final.parent / "history.json"
    figure = ctx.results_dir / "figures" / f"loss_{spec.name}.png"
    fingerprint = training_fingerprint(ctx, spec)
    if final.exists() and history_file.exists():
        saved = json.loads(history_file.read_text())
        if saved.get("fingerprint") == fingerprint:
            if "encoder_sha256" not in saved or "name" not in saved:  # written before they were recorded
                atomic_write_json(history_file, {**saved, **trained_weights_identity(ctx, spec.name)})
            check_trained_weights(ctx, spec.name)  # weights replaced under their history: stop, naming them
            return TrainOutcome(spec.name, "reused", saved["init"], saved["history"], figure if figure.exists() else None)
        # other inputs (a new checkpoint, a retrained upstream run): neither the weights nor a resume point are valid
        shutil.rmtree(final.parent, ignore_errors=True)
    if is_multiprocess(ctx.distributed):
        return _train_under_torchrun(ctx, spec, scope, final, history_file, figure)
    return train_rank(ctx, spec, scope)


def _train_under_torchrun(ctx, spec, scope, final, history_file, figure) -> TrainOutcome:
    import shlex

    from ..distributed.launch import TorchrunError, planned_world_size, run_torchrun, torchrun_command
    from ..distributed.stage import train_module_args

    world = planned_world_size(ctx.distributed)
    n_train = len(training_rows(ctx, split_indices(ctx, spec.dataset)["train"]))  # made before the ranks read it
    batch = min(spec.batch_size, n_train)
    if world is not None:  # refused here, before any process starts (an elastic node range: by the ranks)
        try:
            per_rank_batch(batch, world)
        except ValueError as err:
            raise ValueError(f"training run {spec.name!r}: {err}") from None
    log_dir = ctx.path("logs", "torchrun", spec.name)
    cmd = torchrun_command(ctx.distributed, train_module_args(ctx, spec.name, scope), log_dir=log_dir)
    print(f"[histokit] {spec.name}: {world or 'elastic'} processes, global batch {batch}"
          + (f" = {world} x {batch // world}" if world else "") + f"\n[histokit] {shlex.join(cmd)}", flush=True)
    run_torchrun(cmd, what=f"training run {spec.name!r}", log_dir=log_dir, echo=ctx.progress)
    if not (final.exists() and history_file.exists()):
        raise TorchrunError(f"training run {spec.name!r}: torchrun ended without error but {final} or "
                            f"{history_file} is missing (rank 0 writes them; is the run directory on a filesystem "
                            f"every node sees?)")
    saved = json.loads(history_file.read_text())
    return TrainOutcome(spec.name, "trained", saved["init"], saved["history"], figure if figure.exists() else None)


def _finish(ctx, spec, encoder, init, history, final, history_file, figure) -> TrainOutcome:
    from ..distributed.launch import world_size
    from ..viz.curves import loss_curve

    atomic_torch_save(encoder.state_dict(), final)
    atomic_write_json(history_file, {"init": init, "history": history, "spec": spec.__dict__,
                                     "fingerprint": training_fingerprint(ctx, spec), "world_size": world_size(),
                                     **trained_weights_identity(ctx, spec.name)})
    loss_curve(history, figure, title=f"{spec.name}: {spec.method} on {spec.dataset} (init: {init})")
    prune_resume_checkpoints(final.parent / "checkpoints", spec.name, echo=ctx.progress)
    return TrainOutcome(spec.name, "trained", init, history, figure)


KEEP_CHECKPOINTS_ENV = "HISTOKIT_KEEP_CHECKPOINTS"


def prune_resume_checkpoints(checkpoint_dir: Path, run: str, echo: bool = False) -> int:
    """Delete a finished run's resume checkpoints (``*.pt``: model, EMA teacher, heads, optimizer, RNG states) and
    return the bytes freed; ``train_config.json`` stays. Once ``encoder.pt`` and ``history.json`` are written nothing
    reads them (a changed input retrains from scratch), and with 65k-way DINO / EsViT heads and AdamW moments they
    are 0.7-1 GB a run: 16 CypherViT ablations alone would leave 11 GB. ``HISTOKIT_KEEP_CHECKPOINTS=1`` (or
    ``histokit reproduce --keep-checkpoints``) keeps them, e.g. to continue pretraining outside the kit."""
    if os.environ.get(KEEP_CHECKPOINTS_ENV, "").strip() not in ("", "0"):
        return 0
    freed = 0
    for path in sorted(Path(checkpoint_dir).glob("*.pt")):
        freed += path.stat().st_size
        path.unlink()
    if freed and echo:
        print(f"[histokit] {run}: finished; its resume checkpoint ({freed / 2**20:.0f} MiB) is removed, the trained "
              f"encoder is encoder.pt ({KEEP_CHECKPOINTS_ENV}=1 keeps checkpoints)", flush=True)
    return freed


def run(ctx: StageContext, stage: str) -> list[TrainOutcome]:
    """``stage`` = "pretrain" or "finetune": the recipe's list of that name."""
    specs = ctx.recipe.pretrain if stage == "pretrain" else ctx.recipe.finetune
    outcomes = []
    for spec in specs:
        if stage == "pretrain" and any(ctx.checkpoints.get(v) for k, v in _checkpoint_alternatives(ctx, spec)):
            continue  # an official checkpoint replaces this pretraining
        outcomes.append(train_one(ctx, spec, scope="all"))
    return outcomes


def _checkpoint_alternatives(ctx: StageContext, spec: TrainSpec):
    """Pretraining runs that a downstream run would skip in favour of a user-given checkpoint."""
    from ..papers.recipe import weight_sources

    users = [(t.init, t.dataset) for t in ctx.recipe.finetune]
    users += [(m.weights, d.key) for m in ctx.recipe.models for d in ctx.recipe.datasets]
    for spec_text, dataset in users:
        sources = weight_sources(spec_text, dataset)
        if ("train", spec.name) in sources:
            yield from [(k, v) for k, v in sources[: sources.index(("train", spec.name))] if k == "checkpoint"]
