"""Training LGFFEM's neck and head with Sub-center ArcFace (:class:`SubCenterArcFace`, a method of the one engine) — Nuñez-Fernández et al., Sensors 2025, Sec. 4.1.2-4.1.3.

Paper: Sub-center ArcFace (Deng et al., ECCV 2020) with m = 17.2 (degrees, pytorch-metric-learning's unit) and
s = 64; AdamW with cosine annealing from 5e-3 to 8e-5; batch 64; 224 px. The loss comes from
pytorch-metric-learning (``SubCenterArcFaceLoss``), as in the public code. The public code (camilo-nunez/ffnir)
also gives the class centres their own AdamW at a constant 1e-4 and 6 sub-centres per class
(:func:`make_centres_optimizer`); the paper states neither.
"""
from __future__ import annotations

from typing import Optional

import torch
from pytorch_metric_learning.losses import SubCenterArcFaceLoss
from torch import nn

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
                   weight_decay: float = 1e-5, include_loss: bool = True):
    """AdamW over the model's trainable parameters and the loss's class centres + CosineAnnealingLR(lr -> min_lr).

    One scheduler step per epoch (``T_max = epochs``). ``weight_decay`` 1e-5 is the ffnir scripts' default (the paper
    gives none). The centres share the model's rate and schedule; ``include_loss=False`` leaves them out, for their
    own optimizer (:func:`make_centres_optimizer`, as the ffnir scripts). Returns ``(optimizer, scheduler)``.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    model_params = [p for p in model.parameters() if p.requires_grad]
    loss_params = [p for p in loss.parameters() if p.requires_grad] if include_loss else []
    if not model_params:
        raise ValueError("make_optimizer: the model has no trainable parameters")
    groups = [{"params": model_params, "lr": lr}]
    if loss_params:
        groups.append({"params": loss_params, "lr": lr})
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=min_lr)
    return optimizer, scheduler


def make_centres_optimizer(loss: nn.Module, *, lr: float = PUBLIC_CODE_CENTRES_LR,
                           weight_decay: float = PUBLIC_CODE_CENTRES_WEIGHT_DECAY) -> torch.optim.Optimizer:
    """The ffnir scripts' second optimizer: AdamW over the loss's class centres only, at its own constant ``lr``
    (1e-4) and torch's default weight decay (:class:`SubCenterArcFace`, ``centres_optimizer="separate"``)."""
    params = [p for p in loss.parameters() if p.requires_grad]
    if not params:
        raise ValueError("make_centres_optimizer: the loss has no trainable parameters (class centres)")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


FFNIR_GRAD_CLIP = 1.0  # the ffnir scripts' clip_grad_norm_ of the model's parameters (not the centres)
CENTRES_OPTIMIZERS = ("separate", "shared")


class SubCenterArcFace(nn.Module):
    """Sub-center ArcFace as a method of the one engine (:func:`histokit.train.engine.train`): ``forward(images,
    labels) -> (loss, logs)`` on the encoder's embedding, and the paper's / ffnir's own optimization
    (:meth:`configure_optimizers`): AdamW over the trainable encoder parameters (+ the centres when
    ``centres_optimizer="shared"``) with CosineAnnealingLR(lr -> min_lr) stepped once per epoch; ``"separate"``:
    the centres in their own constant AdamW (:func:`make_centres_optimizer`, the ffnir scripts); the model's
    gradients clipped to ``grad_clip`` (ffnir: 1.0). The checkpoint holds the trainable weights only (no frozen
    backbone: :meth:`trainable_state_dict`)."""

    # rank 0 continues the global stream the caller seeded (the head's dropout draws there, after the centres'
    # initialisation), as the kit's earlier Sub-center ArcFace loop did: its numbers are unchanged
    reseed_rng = False
    own_loader_generator = True  # its loader's workers are seeded by the loader's own generator (seeded_loader)
    find_unused_parameters = False  # DDP: every trainable parameter (neck, head, centres) gets a gradient each step

    def __init__(self, encoder: nn.Module, loss: nn.Module, *, lr: float = 5e-3, min_lr: float = 8e-5,
                 weight_decay: float = 1e-5, centres_optimizer: str = "separate",
                 centres_lr: float = PUBLIC_CODE_CENTRES_LR, grad_clip: Optional[float] = FFNIR_GRAD_CLIP,
                 transform=None):
        super().__init__()
        if centres_optimizer not in CENTRES_OPTIMIZERS:
            raise ValueError(f"centres_optimizer must be one of {CENTRES_OPTIMIZERS}, got {centres_optimizer!r}")
        self.encoder, self.loss = encoder, loss
        self.lr, self.min_lr, self.weight_decay = lr, min_lr, weight_decay
        self.centres_optimizer, self.centres_lr, self.grad_clip = centres_optimizer, centres_lr, grad_clip
        self.transform = transform

    @classmethod
    def from_spec(cls, spec, encoder: nn.Module, num_classes: int) -> "SubCenterArcFace":
        """The method of a recipe's TrainSpec. ``method_cfg``: ``variant`` paper (m = 17.2°, s = 64) | public_code
        (m = s = 17.5), ``sub_centers`` (default 3), ``centres_optimizer`` separate | shared (default shared),
        ``centres_lr`` (default 1e-4), ``augmentation`` (required; :data:`AUGMENTATIONS`). lr, min_lr and weight
        decay come from the spec, gradient clipping from ``spec.grad_clip`` (None: ffnir's 1.0)."""
        cfg = dict(spec.method_cfg)
        if "augmentation" not in cfg:
            raise ValueError(f"training run {spec.name!r}: method_cfg needs 'augmentation' (ffnir_kimia | "
                             "ffnir_pannuke | ffnir_imagenet | kit_rrc)")
        mode = cfg.get("centres_optimizer", "shared")
        if mode not in CENTRES_OPTIMIZERS:
            raise ValueError(f"training run {spec.name!r}: centres_optimizer must be one of {CENTRES_OPTIMIZERS}, "
                             f"got {mode!r}")
        transform = lgffem_train_transform(cfg["augmentation"], spec.image_size, spec.mean, spec.std)
        loss = make_subcenter_arcface(num_classes, encoder.embed_dim, variant=cfg.get("variant", "paper"),
                                      sub_centers=cfg.get("sub_centers", 3))
        return cls(encoder, loss, lr=spec.lr, min_lr=spec.min_lr, weight_decay=spec.weight_decay,
                   centres_optimizer=mode, centres_lr=cfg.get("centres_lr", PUBLIC_CODE_CENTRES_LR),
                   grad_clip=FFNIR_GRAD_CLIP if spec.grad_clip is None else spec.grad_clip, transform=transform)

    def train_transform(self):
        """The training images' augmentation (stages 02 / 03 build the loader with it)."""
        if self.transform is None:
            raise ValueError("SubCenterArcFace was built without a training transform (use from_spec)")
        return self.transform

    def configure_optimizers(self, epochs: int):
        from ..train.engine import Optimization

        optimizer, scheduler = make_optimizer(self.encoder, self.loss, epochs, lr=self.lr, min_lr=self.min_lr,
                                              weight_decay=self.weight_decay,
                                              include_loss=self.centres_optimizer == "shared")
        optimizers = [optimizer]
        if self.centres_optimizer == "separate":  # stepped after the model's, as the ffnir scripts
            optimizers.append(make_centres_optimizer(self.loss, lr=self.centres_lr))
        return Optimization(optimizers, [scheduler], [p for p in self.encoder.parameters() if p.requires_grad],
                            self.grad_clip,
                            config={"optimizer": "adamw", "lr": self.lr, "min_lr": self.min_lr,
                                    "weight_decay": self.weight_decay, "weight_decay_end": None, "warmup_epochs": 0,
                                    "schedule": "CosineAnnealingLR, one step per epoch (T_max = epochs)",
                                    "centres_optimizer": self.centres_optimizer,
                                    "centres_lr": self.centres_lr if self.centres_optimizer == "separate" else None})

    def batch_to_inputs(self, batch) -> tuple:
        from ..train.supervised import image_and_label

        return image_and_label(batch)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        embedding = self.encoder(images)
        with torch.autocast(images.device.type, enabled=False):  # the margin and scale 64 in float32
            return self.loss(embedding.float(), labels), {}

    def eval_encoder(self) -> nn.Module:
        return self.encoder

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Encoder weights without its frozen backbone (:meth:`LGFFEM.trainable_state_dict`) + the class centres."""
        encoder = getattr(self.encoder, "trainable_state_dict", self.encoder.state_dict)()
        return {**{f"encoder.{k}": v for k, v in encoder.items()},
                **{f"loss.{k}": v for k, v in self.loss.state_dict().items()}}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        def part(prefix):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

        getattr(self.encoder, "load_trainable_state_dict", self.encoder.load_state_dict)(part("encoder."))
        self.loss.load_state_dict(part("loss."))
