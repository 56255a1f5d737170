"""Image transforms: evaluation (resize + normalize), DINO multi-crop views, SimCLR / MoCo v3 two-view pairs.

All are torchvision compositions; the augmentation parameters are the papers' own:

- DINO (Caron et al. 2021, ``main_dino.py`` ``DataAugmentationDINO``): RandomResizedCrop (global scale
  (0.4, 1.0) at 224 px, local (0.05, 0.4) at 96 px, bicubic), horizontal flip p=0.5, colour jitter
  (0.4, 0.4, 0.2, 0.1) p=0.8, grayscale p=0.2; PIL Gaussian blur (radius U(0.1, 2.0)) p=1.0 on global view 1,
  p=0.1 + solarization p=0.2 on global view 2, p=0.5 on local views. EsViT, iBOT and CypherViT use the same views.
- SimCLR (Chen et al. 2020, Appendix A): RandomResizedCrop scale (0.08, 1.0), flip, colour jitter
  (0.8s, 0.8s, 0.8s, 0.2s) with s=1 applied with p=0.8, grayscale p=0.2, Gaussian blur p=0.5 with a kernel of
  10 % of the image side, sigma in [0.1, 2.0].
- MoCo v3 (Chen et al. 2021, BYOL's augmentations): jitter (0.4, 0.4, 0.2, 0.1) p=0.8, grayscale p=0.2,
  PIL blur p=1.0 / 0.1 and solarization p=0 / 0.2 on view 1 / 2.

``histology=True`` adds what is standard for tissue, which has no canonical orientation: vertical flip p=0.5
and a random rotation by a multiple of 90 degrees (the VGH augmentation of Ye et al. uses 90/180 rotations and
flips).
"""
from __future__ import annotations

import random
from typing import Sequence

import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN_STD = (0.5, 0.5, 0.5)  # Chen & Krishnan's DINO ViT-S/16 (mean = std = 0.5; HIPT issue #70)

BICUBIC = T.InterpolationMode.BICUBIC


class RandomRotate90:
    """Rotate a PIL image by 0, 90, 180 or 270 degrees, uniformly (lossless: a transpose, no interpolation)."""

    _OPS = (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)

    def __call__(self, img: Image.Image) -> Image.Image:
        op = random.choice(self._OPS)
        return img if op is None else img.transpose(op)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _orientation(histology: bool) -> list:
    ops = [T.RandomHorizontalFlip(p=0.5)]
    if histology:
        ops += [T.RandomVerticalFlip(p=0.5), RandomRotate90()]
    return ops


def _normalize(mean, std) -> T.Compose:
    return T.Compose([T.ToTensor(), T.Normalize(mean, std)])


class GaussianBlur:
    """With probability ``p``, PIL's Gaussian blur with a radius ~ U(0.1, 2.0): DINO's ``utils.GaussianBlur``, which
    EsViT, iBOT and MoCo v3 (``moco.loader.GaussianBlur``) use as well, drawn from Python's ``random`` as they do.
    PIL blurs in C on the image itself: 30-45x faster per view than torchvision's tensor convolution
    (``T.GaussianBlur``), which stays for SimCLR's own 10 %-of-the-side kernel."""

    def __init__(self, p: float = 0.5, radius_min: float = 0.1, radius_max: float = 2.0):
        self.p, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() > self.p:  # DINO: do_it = random.random() <= prob
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, radius=({self.radius_min}, {self.radius_max}))"


def _kernel_blur(p: float, size: int, kernel_size: int) -> T.RandomApply:
    """SimCLR's blur: sigma ~ U(0.1, 2.0) with an explicit kernel (10 % of the side); the kernel is capped below the
    crop size so tiny test crops still work (reflection padding needs pad < side)."""
    kernel_size = min(kernel_size, size - 1 if size % 2 == 0 else size - 2)
    return T.RandomApply([T.GaussianBlur(kernel_size=max(kernel_size, 1), sigma=(0.1, 2.0))], p=p)


def eval_transform(image_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> T.Compose:
    """Resize to ``image_size`` x ``image_size`` (bicubic, antialiased; whole tile, no crop), ToTensor, Normalize."""
    return T.Compose([T.Resize((image_size, image_size), interpolation=BICUBIC, antialias=True),
                      _normalize(mean, std)])


class MultiCropTransform:
    """DINO multi-crop: ``n_global`` global views then ``n_local`` local views, as a list of tensors."""

    def __init__(self, global_size: int = 224, local_size: int = 96, n_global: int = 2, n_local: int = 8,
                 global_scale: tuple[float, float] = (0.4, 1.0), local_scale: tuple[float, float] = (0.05, 0.4),
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 histology: bool = False):
        if n_global < 1 or n_local < 0:
            raise ValueError(f"MultiCropTransform: need n_global >= 1 and n_local >= 0, got {n_global}, {n_local}")
        flip_and_color = T.Compose(_orientation(histology) + [
            T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
        ])
        norm = _normalize(mean, std)
        crop_g = T.RandomResizedCrop(global_size, scale=global_scale, interpolation=BICUBIC)
        crop_l = T.RandomResizedCrop(local_size, scale=local_scale, interpolation=BICUBIC)
        self.global1 = T.Compose([crop_g, flip_and_color, GaussianBlur(1.0), norm])
        self.global2 = T.Compose([crop_g, flip_and_color, GaussianBlur(0.1), T.RandomSolarize(128, p=0.2), norm])
        self.local = T.Compose([crop_l, flip_and_color, GaussianBlur(0.5), norm])
        self.n_global, self.n_local = n_global, n_local

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        # DINO alternates: view 1 always blurred, view 2 rarely blurred + solarized (more views repeat the pair)
        views = [(self.global1 if i % 2 == 0 else self.global2)(img) for i in range(self.n_global)]
        return views + [self.local(img) for _ in range(self.n_local)]


class TwoViewTransform:
    """Two augmented views of one image for contrastive learning: ``style="simclr"`` (symmetric) or
    ``"mocov3"`` (BYOL's asymmetric blur / solarization)."""

    def __init__(self, size: int = 224, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 scale: tuple[float, float] = (0.08, 1.0), style: str = "simclr", strength: float = 1.0,
                 histology: bool = False):
        crop = T.RandomResizedCrop(size, scale=scale, interpolation=BICUBIC)
        norm = _normalize(mean, std)
        if style == "simclr":
            s = strength
            jitter = T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
            kernel = max(3, int(0.1 * size) // 2 * 2 + 1)  # 10 % of the side, odd
            view = T.Compose([crop, *_orientation(histology), T.RandomApply([jitter], p=0.8),
                              T.RandomGrayscale(p=0.2), _kernel_blur(0.5, size, kernel), norm])
            self.view1 = self.view2 = view
        elif style == "mocov3":
            jitter = T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8)
            common = [crop, *_orientation(histology), jitter, T.RandomGrayscale(p=0.2)]
            self.view1 = T.Compose(common + [GaussianBlur(1.0), norm])
            self.view2 = T.Compose(common + [GaussianBlur(0.1), T.RandomSolarize(128, p=0.2), norm])
        else:
            raise ValueError(f"TwoViewTransform: style must be 'simclr' or 'mocov3', got {style!r}")
        self.style = style

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        return [self.view1(img), self.view2(img)]


class OneView:
    """``image -> [transform(image)]``: the one-view list of a single-view method (MAE), a module-level class so
    that a spawned DataLoader worker can unpickle it (a lambda cannot be)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image) -> list:
        return [self.transform(image)]
