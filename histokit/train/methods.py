"""The training method of a recipe's TrainSpec, by name: an SSL method (:mod:`histokit.ssl.registry`) or
Sub-center ArcFace (:class:`histokit.models.lgffem_train.SubCenterArcFace`), each a module the one engine trains,
and the per-image transform its loader applies (the method's own ``train_transform``, else the SSL views)."""
from __future__ import annotations

from typing import Callable


def _ssl(spec, encoder, num_classes: int):
    from ..ssl.registry import create_method

    return create_method(spec.method, encoder, **spec.method_cfg)


def _subcenter_arcface(spec, encoder, num_classes: int):
    from ..models.lgffem_train import SubCenterArcFace

    return SubCenterArcFace.from_spec(spec, encoder, num_classes)


SUPERVISED_METHODS: dict[str, Callable] = {"subcenter_arcface": _subcenter_arcface}


def create_training_method(spec, encoder, num_classes: int):
    """The module :func:`histokit.train.engine.train` optimises for ``spec`` (``num_classes``: the labels of its
    dataset, for a supervised method)."""
    return SUPERVISED_METHODS.get(spec.method, _ssl)(spec, encoder, num_classes)


def views_transform(spec, mean, std):
    """An SSL method's views (its ViewSpec), at the recipe's sizes."""
    from ..data.transforms import MultiCropTransform, OneView, TwoViewTransform
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
    return OneView(single)


def training_transform(spec, method=None):
    """What each training image becomes: the method's ``train_transform()`` when it has one, else the SSL views
    of ``spec.method`` (with iBOT's masks, ``method.views_with_masks``, made in the loader's workers)."""
    own = getattr(method, "train_transform", None)
    if own is not None:
        return own()
    transform = views_transform(spec, spec.mean, spec.std)
    if hasattr(method, "views_with_masks"):
        transform = method.views_with_masks(transform)
    return transform
