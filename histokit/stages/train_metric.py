"""Supervised metric learning of LGFFEM's neck and head with Sub-center ArcFace (Nuñez-Fernández et al. 2025),
the frozen backbone untouched; one run per strategy, each starting from the previous strategy's weights."""
from __future__ import annotations

from ..data.loading import seeded_loader
from ..models.lgffem_train import (PUBLIC_CODE_CENTRES_LR, lgffem_train_transform, make_centres_optimizer,
                                   make_optimizer, make_subcenter_arcface, train_lgffem)
from ..papers.recipe import TrainSpec
from .common import load_recipe_dataset, split_indices, training_rows
from .context import StageContext


CENTRES_OPTIMIZERS = ("separate", "shared")


def loss_and_optimizers(spec: TrainSpec, encoder, num_classes: int):
    """``(loss, optimizer, scheduler, centres_optimizer)`` of a run, from its ``method_cfg``:

    ``sub_centers`` (default 3); ``centres_optimizer`` ``separate`` = the ffnir scripts' own AdamW for the class
    centres at ``centres_lr`` (default 1e-4), constant, torch's default weight decay | ``shared`` = the centres in the
    model's AdamW at its lr and cosine schedule (the kit's earlier choice; ``centres_optimizer`` is then None)."""
    cfg = dict(spec.method_cfg)
    mode = cfg.get("centres_optimizer", "shared")
    if mode not in CENTRES_OPTIMIZERS:
        raise ValueError(f"training run {spec.name!r}: centres_optimizer must be one of {CENTRES_OPTIMIZERS}, "
                         f"got {mode!r}")
    loss = make_subcenter_arcface(num_classes, encoder.embed_dim, variant=cfg.get("variant", "paper"),
                                  sub_centers=cfg.get("sub_centers", 3))
    optimizer, scheduler = make_optimizer(encoder, loss, spec.epochs, lr=spec.lr, min_lr=spec.min_lr,
                                          weight_decay=spec.weight_decay, include_loss=mode == "shared")
    centres = (make_centres_optimizer(loss, lr=cfg.get("centres_lr", PUBLIC_CODE_CENTRES_LR))
               if mode == "separate" else None)
    return loss, optimizer, scheduler, centres


def train_subcenter_arcface(ctx: StageContext, spec: TrainSpec, encoder, checkpoint_path) -> list[dict]:
    """``method_cfg``: ``variant`` paper (m = 17.2°, s = 64) | public_code (m = s = 17.5), ``sub_centers``,
    ``centres_optimizer`` / ``centres_lr`` (:func:`loss_and_optimizers`), ``augmentation`` (required;
    :data:`~histokit.models.lgffem_train.AUGMENTATIONS`: ffnir_kimia | ffnir_pannuke | ffnir_imagenet as the ffnir
    scripts, kit_rrc the kit's earlier crop)."""
    cfg = dict(spec.method_cfg)
    if "augmentation" not in cfg:
        raise ValueError(f"training run {spec.name!r}: method_cfg needs 'augmentation' (ffnir_kimia | ffnir_pannuke | "
                         "ffnir_imagenet | kit_rrc)")
    dataset = load_recipe_dataset(ctx, spec.dataset)
    rows = training_rows(ctx, split_indices(ctx, spec.dataset)["train"])
    transform = lgffem_train_transform(cfg["augmentation"], spec.image_size, spec.mean, spec.std)
    # Deterministic for the seed whatever the worker count, and across a resume: each image's flips, turns and blur
    # draws come from (seed, epoch, index), each epoch's order from seed + epoch, the workers' base seed from the
    # loader's own generator (never from the global RNG the head's dropout draws from): seeded_loader;
    # train_lgffem tells sampler and dataset the epoch and checkpoints the RNG states.
    train = dataset.subset(rows).with_transform(transform)
    loader = seeded_loader(train, batch_size=min(spec.batch_size, len(train)), seed=ctx.seed, device=ctx.device,
                           drop_last=True)
    loss, optimizer, scheduler, centres = loss_and_optimizers(spec, encoder, len(dataset.classes))
    history = train_lgffem(encoder, loss, loader, spec.epochs, optimizer=optimizer, scheduler=scheduler,
                           device=ctx.device, checkpoint_path=checkpoint_path, resume=True, progress=ctx.progress,
                           max_steps=ctx.max_steps, loss_optimizer=centres)
    return [dict(h, step=h.get("step", h["epoch"] + 1)) for h in history]  # one point per epoch on the curve
