"""``python -m histokit.distributed.pretrain --config run.json``: SSL pretraining, alone or under torchrun.

The same command runs one process (no process group) or N ranks (``torchrun --nproc_per_node N -m
histokit.distributed.pretrain --config run.json``). Rank r reads its share of each epoch through a
``DistributedSampler`` over one seeded permutation, and every image's views are drawn from an RNG seeded by
(seed, epoch, index) (:class:`~histokit.distributed.sampler.PerSampleSeed`): N ranks of batch B train on exactly the
batches one process of batch N x B would, so the world size changes the speed, not the run.

Outputs in ``output_dir`` (rank 0 writes, atomically): ``config.json`` (the merged config with world size, global
batch, base and effective learning rate and the scaling rule), ``checkpoints/checkpoint_last.pt`` (+
``train_config.json``) after every epoch, and at the end ``encoder.pt`` (the evaluated encoder's state dict: the EMA
teacher for DINO / EsViT / iBOT) and ``history.json``. A killed job started again with the same command (or
restarted by ``torchrun --max-restarts``) resumes from the last epoch checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from histokit.io import atomic_torch_save, atomic_write_json

from .launch import barrier, cleanup, init_distributed
from .sampler import PerSampleSeed, rank_sampler

# Keys a config may set, with their defaults (DINO's main_dino.py where the method has one). ``None`` = the method's
# own default (views) or "not used".
DEFAULTS: dict[str, Any] = {
    "output_dir": None,             # required
    "method": "dino",
    "method_cfg": {},               # keyword arguments of the SSL method (out_dim, teacher_temp, ...)
    "encoder": "vit_small_patch16_224",
    "pretrained": False,            # timm hub weights as the starting point
    "image_size": 224,              # global crop size
    "local_size": 96,               # local crop size (multi-crop methods)
    "n_local": None,                # local crops per image; None = the method's default
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "dataset": "kather2016_tiny",   # a manifest name (histokit.data.load_dataset)
    "data_root": None,
    "split": None,                  # keep one official split (e.g. "train")
    "max_images": None,             # evenly spaced subset, for smoke runs
    "batch_size_per_rank": 64,
    "epochs": 100,
    "optimizer": "adamw",
    "lr": 0.0005,
    "scale_lr": False,              # True: lr x global_batch / 256 (DINO's rule)
    "min_lr": 1e-6,
    "weight_decay": 0.04,
    "weight_decay_end": 0.4,
    "warmup_epochs": 10,
    "grad_clip": 3.0,
    "amp": True,
    "seed": 0,
    "num_workers": 0,
    "device": None,                 # None: CUDA when available (GPU LOCAL_RANK under torchrun), else CPU
    "progress": True,
}


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``path`` (JSON), refuse unknown keys, fill defaults."""
    path = Path(path)
    try:
        given = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise FileNotFoundError(f"config file {path} does not exist") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"config file {path} is not valid JSON: {err}") from err
    return resolve_config(given, source=str(path))


def resolve_config(given: dict[str, Any], source: str = "config") -> dict[str, Any]:
    if not isinstance(given, dict):
        raise ValueError(f"{source} must hold a JSON object, got {type(given).__name__}")
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}; known: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **given}
    if not cfg["output_dir"]:
        raise ValueError(f"{source}: 'output_dir' is required")
    for key in ("batch_size_per_rank", "epochs"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ValueError(f"{source}: '{key}' must be a positive integer, got {cfg[key]!r}")
    return cfg


def views_transform(cfg: dict[str, Any]):
    """The views the method trains on (its registry ViewSpec at the config's sizes)."""
    from histokit.data.transforms import MultiCropTransform, TwoViewTransform, eval_transform
    from histokit.ssl.registry import views_for

    overrides = {"global_size": cfg["image_size"], "local_size": cfg["local_size"]}
    if cfg["n_local"] is not None:
        overrides["n_local"] = cfg["n_local"]
    v = views_for(cfg["method"], **overrides)
    mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
    if v.n_local > 0 or v.n_global > 2:
        return MultiCropTransform(global_size=v.global_size, local_size=v.local_size, n_global=v.n_global,
                                  n_local=v.n_local, global_scale=v.global_scale, local_scale=v.local_scale,
                                  mean=mean, std=std)
    if v.n_global == 2:
        style = "mocov3" if v.augmentation == "moco_v3" else "simclr"
        return TwoViewTransform(v.global_size, mean=mean, std=std, scale=v.global_scale, style=style)
    single = eval_transform(v.global_size, mean, std)
    return lambda image: [single(image)]


def build_loader(cfg: dict[str, Any], world: int, rank: int) -> DataLoader:
    """This rank's loader: seeded per-sample views, a DistributedSampler over one permutation, full batches."""
    from histokit.data.datasets import load_dataset

    dataset = load_dataset(cfg["dataset"], cfg["data_root"], split=cfg["split"])
    if cfg["max_images"] is not None and cfg["max_images"] < len(dataset):
        dataset = dataset.subset(np.linspace(0, len(dataset) - 1, int(cfg["max_images"])).round().astype(int))
    dataset = PerSampleSeed(dataset.with_transform(views_transform(cfg)), seed=cfg["seed"])
    sampler = rank_sampler(dataset, shuffle=True, seed=cfg["seed"], world=world, rank_=rank)
    if len(sampler) < cfg["batch_size_per_rank"]:
        raise ValueError(f"dataset {cfg['dataset']!r} gives each of {world} rank(s) {len(sampler)} images, fewer than "
                         f"batch_size_per_rank={cfg['batch_size_per_rank']}: lower the batch or use more data")
    return DataLoader(dataset, batch_size=cfg["batch_size_per_rank"], sampler=sampler, drop_last=True,
                      num_workers=cfg["num_workers"], pin_memory=torch.cuda.is_available())


def pretrain(cfg: dict[str, Any]) -> Optional[list[dict]]:
    """Run one pretraining (this process's rank of it); returns the history (every rank has it)."""
    from histokit.models.backbones import create_encoder
    from histokit.ssl.registry import create_method
    from histokit.train.engine import batch_and_lr, train

    env = init_distributed(cfg["device"])
    out = Path(cfg["output_dir"])
    loader = build_loader(cfg, env.world_size, env.rank)
    torch.manual_seed(cfg["seed"])  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    encoder = create_encoder(cfg["encoder"], pretrained=cfg["pretrained"], img_size=cfg["image_size"])
    method = create_method(cfg["method"], encoder, **cfg["method_cfg"])
    scaling = batch_and_lr(cfg["batch_size_per_rank"], env.world_size, cfg["lr"], cfg["scale_lr"])
    if env.is_main:
        atomic_write_json(out / "config.json", {**cfg, **scaling, "backend": env.backend,
                                                "device_used": str(env.device), "torch": torch.__version__})
    history = train(method, loader, epochs=cfg["epochs"], optimizer=cfg["optimizer"], lr=cfg["lr"],
                    scale_lr=cfg["scale_lr"], weight_decay=cfg["weight_decay"],
                    weight_decay_end=cfg["weight_decay_end"], warmup_epochs=cfg["warmup_epochs"],
                    min_lr=cfg["min_lr"], amp=cfg["amp"], device=env.device, checkpoint_dir=out / "checkpoints",
                    resume=True, grad_clip=cfg["grad_clip"], seed=cfg["seed"], progress=cfg["progress"])
    if env.is_main:
        atomic_torch_save(method.eval_encoder().state_dict(), out / "encoder.pt")
        atomic_write_json(out / "history.json", history)
    barrier()
    return history


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m histokit.distributed.pretrain",
                                     description="SSL pretraining; run alone or under torchrun (docs/scaling.md).")
    parser.add_argument("--config", required=True, help="JSON file; keys and defaults: histokit.distributed."
                                                         "pretrain.DEFAULTS")
    parser.add_argument("--output-dir", help="overrides the config's output_dir")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    if args.output_dir:
        cfg["output_dir"] = args.output_dir
    try:
        pretrain(cfg)
    finally:
        cleanup()


if __name__ == "__main__":
    main()
