"""Training LGFFEM's neck and head with Sub-center ArcFace — Nuñez-Fernández et al., Sensors 2025, Sec. 4.1.2-4.1.3.

Paper: Sub-center ArcFace (Deng et al., ECCV 2020) with m = 17.2 (degrees, pytorch-metric-learning's unit) and
s = 64; AdamW with cosine annealing from 5e-3 to 8e-5; batch 64; 224 px. The loss comes from
pytorch-metric-learning (``SubCenterArcFaceLoss``), as in the public code. The public code (camilo-nunez/ffnir)
also gives the class centres their own AdamW at a constant 1e-4 and 6 sub-centres per class
(:func:`make_centres_optimizer`); the paper states neither.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from pytorch_metric_learning.losses import SubCenterArcFaceLoss
from torch import nn
from ..progress import progress_bar

from ..io import atomic_torch_save

# --- Training augmentation ---------------------------------------------------------------------------------------
# The ffnir scripts (camilo-nunez/ffnir, albumentations 1.3-1.4 era, Feb-Jun 2024):
#   train_kimia.py    A.Resize(224, 224), VerticalFlip(p=0.6), HorizontalFlip(p=0.6), RandomRotate90(p=0.6),
#                     GaussianBlur(p=0.5), MedianBlur(blur_limit=5, p=0.6), Normalize(ImageNet)
#   train_pannuke.py  VerticalFlip, HorizontalFlip, RandomRotate90, GaussianBlur, MedianBlur(blur_limit=5), all
#                     p=0.5, Normalize(ImageNet); no resize (PanNuke tiles are 256 px)
#   train_in1k.py     torchvision v2 RandomResizedCrop(img_shape), RandomHorizontalFlip(p=0.5), Normalize(ImageNet)
# Albumentations semantics reproduced here: Resize = cv2 INTER_LINEAR (bilinear, no antialiasing); RandomRotate90 =
# k x 90 degrees with k uniform in {0, 1, 2, 3}; GaussianBlur defaults blur_limit=(3, 7), sigma_limit=0: ksize =
# randrange(3, 8) with an even draw moved to the next odd size (so 3, 5, 7 with probabilities 1/5, 2/5, 2/5) and
# cv2.GaussianBlur(ksize, sigmaX=0), i.e. OpenCV's fixed binomial kernels; MedianBlur(blur_limit=5): ksize uniform in
# {3, 5}, cv2.medianBlur. The blurs call OpenCV itself (opencv-python-headless, installed with grad-cam); resize,
# flips and the 90-degree rotations are torchvision / torch.
AUGMENTATIONS = ("ffnir_kimia", "ffnir_pannuke", "ffnir_imagenet", "kit_rrc")
GAUSSIAN_KSIZES = (3, 5, 5, 7, 7)   # albumentations' randrange(3, 8) draw, even sizes moved up to the next odd
MEDIAN_KSIZES = (3, 5)              # MedianBlur(blur_limit=5): odd sizes 3..5


def _hwc(img: torch.Tensor):
    return img.permute(1, 2, 0).contiguous().numpy()


def _chw(arr) -> torch.Tensor:
    import numpy as np

    arr = np.asarray(arr)
    return torch.from_numpy(arr[..., None] if arr.ndim == 2 else arr).permute(2, 0, 1).contiguous()


class RandomRot90:
    """With probability ``p``, rotate a (C, H, W) tensor by k x 90 degrees, k uniform in {0, 1, 2, 3}
    (albumentations ``RandomRotate90``: k = 0 is one of the four draws)."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return img
        return torch.rot90(img, int(torch.randint(0, 4, ())), dims=(-2, -1))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


class RandomCv2Blur:
    """With probability ``p``, OpenCV's Gaussian (``kind="gaussian"``: ``cv2.GaussianBlur(k, sigmaX=0)``) or median
    (``kind="median"``: ``cv2.medianBlur(k)``) blur of a uint8 (C, H, W) tensor, the kernel size drawn uniformly
    from ``ksizes`` (repeat a size to weight it). ``ksize=`` fixes the size (tests)."""

    def __init__(self, kind: str, p: float = 0.5, ksizes: tuple = (3,)):
        if kind not in ("gaussian", "median"):
            raise ValueError(f"kind must be 'gaussian' or 'median', got {kind!r}")
        if not ksizes or any(k < 3 or k % 2 == 0 for k in ksizes):
            raise ValueError(f"kernel sizes must be odd and >= 3, got {ksizes}")
        self.kind, self.p, self.ksizes = kind, p, tuple(ksizes)

    def blur(self, img: torch.Tensor, ksize: int) -> torch.Tensor:
        import cv2

        if img.dtype != torch.uint8:
            raise TypeError(f"{type(self).__name__} expects a uint8 image tensor, got {img.dtype}")
        arr = _hwc(img)
        out = cv2.GaussianBlur(arr, (ksize, ksize), 0) if self.kind == "gaussian" else cv2.medianBlur(arr, ksize)
        return _chw(out)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return img
        return self.blur(img, self.ksizes[int(torch.randint(0, len(self.ksizes), ()))])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind!r}, p={self.p}, ksizes={self.ksizes})"


def lgffem_train_transform(name: str, size: int, mean, std):
    """The training augmentation ``name`` (:data:`AUGMENTATIONS`) at ``size`` px, ending in ToTensor + Normalize.

    ``ffnir_kimia`` / ``ffnir_pannuke``: the ffnir Kimia / PanNuke scripts' albumentations pipelines (see above) with
    the image resized to ``size`` first (the Kimia script resizes to 224; the PanNuke script feeds the 256 px tiles
    as they are, the paper says all images were resized to 224). ``ffnir_imagenet``: the ImageNet script's
    RandomResizedCrop (scale 0.08-1, bilinear) + horizontal flip. ``kit_rrc``: the kit's earlier choice, the DINO /
    DeiT fine-tuning crop (RandomResizedCrop 0.08-1, bicubic) with horizontal and vertical flips.
    """
    import torchvision.transforms as T

    tail = [T.Normalize(mean, std)]
    if name in ("ffnir_kimia", "ffnir_pannuke"):
        p = dict(ffnir_kimia=(0.6, 0.6, 0.5, 0.6), ffnir_pannuke=(0.5, 0.5, 0.5, 0.5))[name]
        return T.Compose([T.PILToTensor(),
                          T.Resize((size, size), interpolation=T.InterpolationMode.BILINEAR, antialias=False),
                          T.RandomVerticalFlip(p[0]), T.RandomHorizontalFlip(p[0]), RandomRot90(p[1]),
                          RandomCv2Blur("gaussian", p[2], GAUSSIAN_KSIZES),
                          RandomCv2Blur("median", p[3], MEDIAN_KSIZES),
                          T.ConvertImageDtype(torch.float32)] + tail)
    if name == "ffnir_imagenet":
        return T.Compose([T.RandomResizedCrop(size, interpolation=T.InterpolationMode.BILINEAR),
                          T.RandomHorizontalFlip(0.5), T.ToTensor()] + tail)
    if name == "kit_rrc":
        return T.Compose([T.RandomResizedCrop(size, interpolation=T.InterpolationMode.BICUBIC),
                          T.RandomHorizontalFlip(), T.RandomVerticalFlip(), T.ToTensor()] + tail)
    raise ValueError(f"LGFFEM augmentation must be one of {AUGMENTATIONS}, got {name!r}")


PAPER_MARGIN_DEG = 17.2
PAPER_SCALE = 64.0
# camilo-nunez/ffnir train_*.py: ``SubCenterArcFaceLoss(..., margin=args.loss_m, scale=args.loss_m, ...)`` with
# ``--loss_m 17.5`` by default: the margin is passed as the scale too (the parsed ``--loss_s 64`` is never used).
PUBLIC_CODE_MARGIN_DEG = 17.5
# The same scripts: ``--loss_sc 6`` sub-centres per class, and the class centres get their own optimizer,
# ``loss_optimizer = torch.optim.AdamW(loss_func.parameters(), lr=1e-4)`` (``--loss_lr`` in train_kimia.py; torch's
# default weight decay 0.01; not scheduled unless train_kimia.py's ``--loss_scheduler``), stepped after the model's.
PUBLIC_CODE_SUB_CENTERS = 6
PUBLIC_CODE_CENTRES_LR = 1e-4
PUBLIC_CODE_CENTRES_WEIGHT_DECAY = 0.01  # torch.optim.AdamW's default: the scripts pass none


def make_subcenter_arcface(num_classes: int, embedding_size: int = 2048, *, margin: float = PAPER_MARGIN_DEG,
                           scale: float = PAPER_SCALE, sub_centers: int = 3,
                           variant: str = "paper") -> SubCenterArcFaceLoss:
    """Sub-center ArcFace loss (pytorch-metric-learning; ``margin`` in degrees).

    ``variant="paper"``: the given margin/scale (defaults m = 17.2°, s = 64, as the paper states).
    ``variant="public_code"``: what the ffnir training scripts actually run: margin = scale = 17.5 (their bug of
    passing the margin as the scale); ``margin``/``scale`` arguments are ignored. The scripts' sub-centre default
    (``--loss_sc``) is 6 (:data:`PUBLIC_CODE_SUB_CENTERS`) in all three; ``sub_centers`` is honoured in both variants.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if variant == "paper":
        m, s = margin, scale
    elif variant == "public_code":
        m = s = PUBLIC_CODE_MARGIN_DEG
    else:
        raise ValueError(f"variant must be 'paper' or 'public_code', got variant={variant!r}")
    if not 0 < m < 90:
        raise ValueError(f"margin is in degrees and must lie in (0, 90), got margin={m}")
    return SubCenterArcFaceLoss(num_classes=num_classes, embedding_size=embedding_size, margin=m, scale=s,
                                sub_centers=sub_centers)


def make_optimizer(model: nn.Module, loss: nn.Module, epochs: int, *, lr: float = 5e-3, min_lr: float = 8e-5,
                   weight_decay: float = 1e-5, loss_lr: Optional[float] = None, include_loss: bool = True):
    """AdamW over the model's trainable parameters and the loss's class centres + CosineAnnealingLR(lr -> min_lr).

    One scheduler step per epoch (``T_max = epochs``). ``weight_decay`` 1e-5 is the ffnir scripts' default (the paper
    gives none). ``loss_lr`` (default: ``lr``) sets the centres' rate in this optimizer (annealed with it);
    ``include_loss=False`` leaves the centres out, for their own optimizer (:func:`make_centres_optimizer`, as the
    ffnir scripts). Returns ``(optimizer, scheduler)``.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    model_params = [p for p in model.parameters() if p.requires_grad]
    loss_params = [p for p in loss.parameters() if p.requires_grad] if include_loss else []
    if not model_params:
        raise ValueError("make_optimizer: the model has no trainable parameters")
    groups = [{"params": model_params, "lr": lr}]
    if loss_params:
        groups.append({"params": loss_params, "lr": lr if loss_lr is None else loss_lr})
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=min_lr)
    return optimizer, scheduler


def make_centres_optimizer(loss: nn.Module, *, lr: float = PUBLIC_CODE_CENTRES_LR,
                           weight_decay: float = PUBLIC_CODE_CENTRES_WEIGHT_DECAY) -> torch.optim.Optimizer:
    """The ffnir scripts' second optimizer: AdamW over the loss's class centres only, at its own constant ``lr``
    (1e-4) and torch's default weight decay; pass it to :func:`train_lgffem` as ``loss_optimizer``."""
    params = [p for p in loss.parameters() if p.requires_grad]
    if not params:
        raise ValueError("make_centres_optimizer: the loss has no trainable parameters (class centres)")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, dict):
        try:
            return batch["image"], batch["label"]
        except KeyError as err:
            raise ValueError(f"batch dict needs keys 'image' and 'label', got {sorted(batch)}") from err
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError(f"a batch must be (images, labels, ...) or a dict with 'image'/'label', got {type(batch)}")


def train_lgffem(model: nn.Module, loss_fn: nn.Module, loader: Iterable, epochs: int, *,
                 optimizer: Optional[torch.optim.Optimizer] = None, scheduler: Any = None,
                 device: str | torch.device = "cpu", checkpoint_path: Optional[str | Path] = None,
                 resume: bool = True, grad_clip: Optional[float] = 1.0, max_steps_per_epoch: Optional[int] = None,
                 progress: bool = True, max_steps: Optional[int] = None,
                 loss_optimizer: Optional[torch.optim.Optimizer] = None) -> list[dict]:
    """Train neck + head (+ loss centres) for ``epochs``; returns ``history`` = [{epoch, loss, lr, steps}].

    ``loss_optimizer``: the class centres' own optimizer (:func:`make_centres_optimizer`), zeroed and stepped with
    ``optimizer`` every step as in the ffnir scripts, and saved / resumed with the checkpoint.

    Without ``optimizer``/``scheduler`` the paper's :func:`make_optimizer` is used. After each epoch the trainable
    weights (:meth:`LGFFEM.trainable_state_dict` when available), loss, optimizer, scheduler and history are saved
    atomically to ``checkpoint_path``; with ``resume`` an existing checkpoint there is loaded
    (``weights_only=True``) and training continues after its last epoch, with the RNG states (Python, NumPy, torch,
    the loader's generator) the checkpoint saved, so a resumed run draws what an uninterrupted one would (the head's
    dropout). Before each epoch the loader's sampler and dataset are told the epoch (``set_epoch``: a
    ``DistributedSampler``'s order, a ``PerSampleSeed``'s augmentation). ``grad_clip`` 1.0 as in the ffnir scripts.
    ``max_steps``: stop after this many optimizer steps in all (a rehearsal), counting those of a resumed checkpoint.
    """
    if optimizer is None:
        if scheduler is not None:
            raise ValueError("pass scheduler only together with its optimizer")
        optimizer, scheduler = make_optimizer(model, loss_fn, epochs)
    from ..data.loading import draw_skipped_base_seed, set_loader_epoch
    from ..train.checkpoint import capture_rng, restore_rng

    device = torch.device(device)
    model.to(device)
    loss_fn.to(device)
    generator = getattr(loader, "generator", None)
    history: list[dict] = []
    start = 0
    path = Path(checkpoint_path) if checkpoint_path is not None else None
    trainable_sd = getattr(model, "trainable_state_dict", model.state_dict)
    if path is not None and resume and path.exists():
        ckpt = torch.load(path, map_location=device, weights_only=True)
        if hasattr(model, "load_trainable_state_dict"):
            model.load_trainable_state_dict(ckpt["model"])
        else:
            model.load_state_dict(ckpt["model"])
        loss_fn.load_state_dict(ckpt["loss"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        if loss_optimizer is not None and ckpt.get("loss_optimizer") is not None:
            loss_optimizer.load_state_dict(ckpt["loss_optimizer"])
        history = list(ckpt["history"])
        start = int(ckpt["epoch"]) + 1
        if ckpt.get("rng") is not None:  # absent from checkpoints written before the RNG states were kept
            restore_rng(ckpt["rng"], generator, device)
    params = [p for p in model.parameters() if p.requires_grad]  # ffnir clips the model, not the loss centres
    done = sum(int(h.get("steps", 0)) for h in history)
    for epoch in range(start, epochs):
        if max_steps is not None and done >= max_steps:
            break
        set_loader_epoch(loader, epoch)  # a per-epoch sampler / per-sample seeded dataset (stages.train_metric)
        draw_skipped_base_seed(loader)
        model.train()
        total, steps = 0.0, 0
        bar = progress_bar(loader, desc=f"LGFFEM epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for batch in bar:
            images, labels = _unpack(batch)
            images, labels = images.to(device), torch.as_tensor(labels).to(device)
            loss = loss_fn(model(images), labels)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"LGFFEM loss became {loss.item()} at epoch {epoch}, step {steps}")
            optimizer.zero_grad(set_to_none=True)
            if loss_optimizer is not None:
                loss_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            if loss_optimizer is not None:
                loss_optimizer.step()
            total += loss.item()
            steps += 1
            done += 1
            bar.set_postfix(loss=f"{total / steps:.4f}")
            if max_steps_per_epoch is not None and steps >= max_steps_per_epoch:
                break
            if max_steps is not None and done >= max_steps:
                break
        if steps == 0:
            raise ValueError("train_lgffem: the loader yielded no batches")
        history.append({"epoch": epoch, "loss": total / steps, "lr": optimizer.param_groups[0]["lr"], "steps": steps})
        if scheduler is not None:
            scheduler.step()
        if path is not None:
            atomic_torch_save({"model": trainable_sd(), "loss": loss_fn.state_dict(),
                               "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict() if scheduler is not None else None,
                               "loss_optimizer": loss_optimizer.state_dict() if loss_optimizer is not None else None,
                               "epoch": epoch, "history": history,
                               "rng": capture_rng(generator, device)}, path)
    return history
