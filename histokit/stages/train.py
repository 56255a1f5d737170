"""Stages 02 (pretraining) and 03 (fine-tuning): every TrainSpec of the recipe through the one training engine.

A run whose final encoder exists is not trained again; an interrupted run resumes from its last epoch checkpoint.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..io import atomic_torch_save, atomic_write_json
from ..papers.recipe import TrainSpec
from .common import (load_recipe_dataset, resolve_weights, split_indices, trained_weights_path,
                     training_fingerprint)
from .context import StageContext


@dataclass
class TrainOutcome:
    name: str
    status: str          # trained | reused
    init: str            # where the starting weights came from
    history: list
    figure: Path | None


def views_transform(spec: TrainSpec, mean, std):
    """The views the method needs (its ViewSpec), at the recipe's sizes."""
    from ..data.transforms import MultiCropTransform, TwoViewTransform
    from ..ssl.registry import views_for

    if views_for(spec.method).n_local > 0:  # a multi-crop method, even when a run asks for 0 local views (Table 4)
        views = views_for(spec.method, global_size=spec.image_size, local_size=spec.local_size, n_local=spec.n_local)
        return MultiCropTransform(global_size=views.global_size, local_size=views.local_size, n_global=views.n_global,
                                  n_local=views.n_local, global_scale=views.global_scale,
                                  local_scale=views.local_scale, mean=mean, std=std)
    views = views_for(spec.method)
    if views.n_global == 2:
        style = "mocov3" if views.augmentation == "moco_v3" else "simclr"  # BYOL's asymmetric views for MoCo v3
        return TwoViewTransform(spec.image_size, mean=mean, std=std, scale=views.global_scale, style=style)
    # one view (MAE main_pretrain.py): RandomResizedCrop at the method's scale + horizontal flip
    import torchvision.transforms as T

    single = T.Compose([T.RandomResizedCrop(spec.image_size, scale=views.global_scale,
                                            interpolation=T.InterpolationMode.BICUBIC),
                        T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    return lambda image: [single(image)]


def train_one(ctx: StageContext, spec: TrainSpec, scope: str) -> TrainOutcome:
    from ..ssl.registry import create_method
    from ..train.engine import train

    final = trained_weights_path(ctx, spec.name)
    history_file = final.parent / "history.json"
    figure = ctx.results_dir / "figures" / f"loss_{spec.name}.png"
    fingerprint = training_fingerprint(ctx, spec)
    if final.exists() and history_file.exists():
        saved = json.loads(history_file.read_text())
        if saved.get("fingerprint") == fingerprint:
            return TrainOutcome(spec.name, "reused", saved["init"], saved["history"], figure if figure.exists() else None)
        # other inputs (a new checkpoint, a retrained upstream run): neither the weights nor a resume point are valid
        shutil.rmtree(final.parent, ignore_errors=True)
    encoder, init = resolve_weights(ctx, spec.encoder, spec.init, spec.dataset, image_size=spec.image_size, scope=scope,
                                   encoder_kwargs=spec.encoder_kwargs)
    mean, std = spec.mean, spec.std
    if spec.method == "subcenter_arcface":
        from .train_metric import train_subcenter_arcface

        history = train_subcenter_arcface(ctx, spec, encoder, final.parent / "checkpoints" / "last.pt")
        return _finish(ctx, spec, encoder, init, history, final, history_file, figure)
    dataset = load_recipe_dataset(ctx, spec.dataset)
    train_split = split_indices(ctx, spec.dataset)["train"]
    dataset = dataset.subset(train_split)
    dataset.transform = views_transform(spec, mean, std)
    loader = DataLoader(dataset, batch_size=min(spec.batch_size, len(dataset)), shuffle=True, drop_last=True,
                        num_workers=0, generator=torch.Generator().manual_seed(ctx.seed))
    method = create_method(spec.method, encoder, **spec.method_cfg)
    history = train(method, loader, epochs=spec.epochs, optimizer=spec.optimizer, lr=spec.lr,
                    weight_decay=spec.weight_decay, warmup_epochs=spec.warmup_epochs, min_lr=spec.min_lr,
                    device=ctx.device, checkpoint_dir=final.parent / "checkpoints", resume=True, seed=ctx.seed,
                    progress=ctx.progress)
    return _finish(ctx, spec, method.eval_encoder(), init, history, final, history_file, figure)


def _finish(ctx, spec, encoder, init, history, final, history_file, figure) -> TrainOutcome:
    from ..viz.curves import loss_curve

    atomic_torch_save(encoder.state_dict(), final)
    atomic_write_json(history_file, {"init": init, "history": history, "spec": spec.__dict__,
                                     "fingerprint": training_fingerprint(ctx, spec)})
    loss_curve(history, figure, title=f"{spec.name}: {spec.method} on {spec.dataset} (init: {init})")
    return TrainOutcome(spec.name, "trained", init, history, figure)


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
