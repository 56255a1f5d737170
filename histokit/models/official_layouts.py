"""The official checkpoint files, laid out exactly as their own repositories write them, filled with mock weights.

For every entry of :data:`histokit.models.checkpoints.OFFICIAL_WEIGHTS` this module generates a file with the official
key names, shapes, dtypes and nesting (training-checkpoint dict, DDP ``module.`` prefix on the student,
``MultiCropWrapper``'s ``backbone.`` / ``head.``, EsViT's heads on the Swin itself, the ``args`` ``Namespace``,
optimizer and loss state) and seeded random values. The key names are generated from the official model
definitions' structure (depths, heads, window size, widths, module registration order), transcribed below; nothing
here reads timm's or the kit's key mapping, so a test that loads these files through
:func:`~histokit.models.checkpoints.load_official` checks the converters against the official layouts rather than
against themselves. :func:`official_layout` gives the same structure with shapes instead of tensors: its tensor bytes
come within 0.03 % (DINO, 704,238,867 B) and 0.11 % (Chen's SimCLR, 94,351,453 B) of the published file sizes.

Transcribed from (commit, file: what):

* ``facebookresearch/dino`` @ 7c446df — ``vision_transformer.py``: ``VisionTransformer`` (l. 134-156: ``cls_token``,
  ``pos_embed`` for ``img_size=[224]``, ``patch_embed.proj``, ``blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
  mlp.fc2}``, ``norm``; head = Identity), ``vit_small`` (l. 243: 384-d, depth 12, 6 heads, mlp 4, qkv bias),
  ``DINOHead`` (l. 257-276: ``mlp.0/2/4``, weight-normed ``last_layer.weight_g / weight_v``); ``utils.py``
  ``MultiCropWrapper`` (l. 594-608: ``backbone`` then ``head``), ``get_params_groups`` (l. 632: AdamW groups);
  ``main_dino.py`` (l. 183-206: student DDP-wrapped, teacher not when there is no BatchNorm; l. 278-288: the saved
  dict ``student, teacher, optimizer, epoch, args, dino_loss[, fp16_scaler]``; l. 45-128: the argument defaults).
* ``Richarizardd/Self-Supervised-ViT-Path`` @ c93ad14 — ``nn_encoder_arch/vision_transformer.py`` (DINO's ViT);
  ``patch_extraction_utils.py`` l. 136-147 (DINO: ``['teacher']``, strip ``module.`` / ``backbone.``; SimCLR:
  ``torchvision_ssl_encoder('resnet50')`` with ``fc = Identity()`` loading ``torch.load(path)`` itself, i.e. a bare
  torchvision-named state dict without ``fc``; the published 94,351,453 bytes match exactly that, 318 tensors).
* ``mahmoodlab/HIPT`` @ 780fafa — ``HIPT_4K/vision_transformer.py`` (DINO's ViT-S, ``img_size=[224]``),
  ``hipt_model_utils.py`` l. 52-66 (``teacher``, strip ``module.`` / ``backbone.``); same byte size as Chen's file.
* ``microsoft/esvit`` @ 2d6becd — ``models/swin_transformer.py``: ``WindowAttention`` (l. 96-110:
  ``relative_position_bias_table`` then the *persistent* ``relative_position_index`` buffer, then ``qkv``, ``proj``),
  ``SwinTransformerBlock`` (l. 196-247: window clamped to the stage resolution; the ``attn_mask`` buffer is commented
  out), ``PatchMerging`` (l. 363-368: ``reduction`` 4C->2C without bias, then ``norm`` over 4C), ``BasicLayer``
  (downsample at the END of stage i < 3, l. 646), ``SwinTransformer`` (l. 601-655: ``patch_embed.{proj, norm}``,
  ``layers``, ``norm``, ``head``, then ``head_dense``), ``get_cls_model`` (l. 947-963);
  ``experiments/imagenet/swin/swin_tiny_patch4_window7_224.yaml`` (96, depths 2-2-6-2, heads 3-6-12-24, window 7);
  ``main_esvit.py`` (l. 234-254: ``head`` / ``head_dense`` = ``DINOHead`` set on the Swin; l. 365-377: DDP on the
  student only; l. 476-486: the saved dict, as DINO's; l. 648-672: ``DDINOLoss`` buffers ``center`` and
  ``center_grid``; l. 55-203: argument defaults) and the README's Swin-T training command (l. 344).
* ``tonylins/simclr-converter`` @ 139d3cb (the converter ``google-research/simclr``'s README names for SimCLR v1) —
  ``resnet_wider.py`` (torchvision names; ``Bottleneck`` registers ``downsample`` first, l. 64; ``fc`` 2048->1000),
  ``convert.py`` l. 85: ``torch.save({'state_dict': model.state_dict()}, path)``.

What the mocks cannot know: the official files' actual values, optimizer step counts, and ``args`` values beyond those
the repositories document (training commands, README); those are the parser defaults. ``compact=True`` shrinks the
one thing that makes the files large without touching the backbone: the DINO heads' 65,536-way last layer (to
1,024) and the optimizer moments (left out; the ``param_groups`` stay). Mock files are always named
``<anything>.MOCK.pth`` and come with a ``.MOCK.json`` sidecar (name, seed, sha256, size), which is what lets
:func:`~histokit.models.checkpoints.load_official` accept them in place of the published checksum.
"""
from __future__ import annotations

import argparse
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

from ..io import atomic_torch_save, atomic_write_text, sha256_file
from .checkpoints import MOCK_SUFFIX, OFFICIAL_WEIGHTS, mock_sidecar_path

DINO_OUT_DIM = 65536        # main_dino.py / main_esvit.py --out_dim default
COMPACT_OUT_DIM = 1024
LAYOUT_VERSION = 1          # bump when a generator changes, so cached mocks are rewritten


@dataclass(frozen=True)
class TensorSpec:
    """One entry of a state dict: its shape and dtype, and what it is in the official module."""

    shape: tuple
    dtype: torch.dtype = torch.float32
    kind: str = "param"      # param (trained) | frozen (a parameter with requires_grad=False) | buffer
    fill: str = "normal"     # normal | positive | count | rel_index



def _p(*shape, **kw) -> TensorSpec:
    return TensorSpec(tuple(int(s) for s in shape), **kw)


def _linear(out: OrderedDict, prefix: str, in_f: int, out_f: int, bias: bool = True) -> None:
    out[f"{prefix}.weight"] = _p(out_f, in_f)
    if bias:
        out[f"{prefix}.bias"] = _p(out_f)


def _layernorm(out: OrderedDict, prefix: str, dim: int) -> None:
    out[f"{prefix}.weight"] = _p(dim)
    out[f"{prefix}.bias"] = _p(dim)


def _batchnorm(out: OrderedDict, prefix: str, dim: int) -> None:
    """``nn.BatchNorm2d`` / ``1d``: two parameters, then three buffers (``num_batches_tracked`` a 0-d int64)."""
    out[f"{prefix}.weight"] = _p(dim)
    out[f"{prefix}.bias"] = _p(dim)
    out[f"{prefix}.running_mean"] = _p(dim, kind="buffer")
    out[f"{prefix}.running_var"] = _p(dim, kind="buffer", fill="positive")
    out[f"{prefix}.num_batches_tracked"] = TensorSpec((), torch.int64, "buffer", "count")


# --------------------------------------------------------------------------------------------- model definitions


def dino_vit_layout(*, embed_dim: int = 384, depth: int = 12, patch_size: int = 16, img_size: int = 224,
                    in_chans: int = 3, mlp_ratio: float = 4.0, qkv_bias: bool = True) -> OrderedDict:
    """DINO's ``VisionTransformer`` state dict (``vit_small``: 384-d, depth 12; the head is ``nn.Identity``).

    Own parameters first (``cls_token``, ``pos_embed`` for the default ``img_size=[224]``), then ``patch_embed.proj``,
    ``blocks.i`` (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``), ``norm``.
    """
    out: OrderedDict = OrderedDict()
    n = (img_size // patch_size) ** 2
    hidden = int(embed_dim * mlp_ratio)
    out["cls_token"] = _p(1, 1, embed_dim)
    out["pos_embed"] = _p(1, n + 1, embed_dim)
    out["patch_embed.proj.weight"] = _p(embed_dim, in_chans, patch_size, patch_size)
    out["patch_embed.proj.bias"] = _p(embed_dim)
    for i in range(depth):
        b = f"blocks.{i}"
        _layernorm(out, f"{b}.norm1", embed_dim)
        _linear(out, f"{b}.attn.qkv", embed_dim, 3 * embed_dim, qkv_bias)
        _linear(out, f"{b}.attn.proj", embed_dim, embed_dim)
        _layernorm(out, f"{b}.norm2", embed_dim)
        _linear(out, f"{b}.mlp.fc1", embed_dim, hidden)
        _linear(out, f"{b}.mlp.fc2", hidden, embed_dim)
    _layernorm(out, "norm", embed_dim)
    return out


def dino_head_layout(in_dim: int, out_dim: int = DINO_OUT_DIM, *, use_bn: bool = False, norm_last_layer: bool = True,
                     nlayers: int = 3, hidden_dim: int = 2048, bottleneck_dim: int = 256) -> OrderedDict:
    """DINO's ``DINOHead`` (also EsViT's): an MLP (``nn.Sequential``: Linear [BN] GELU ... Linear) and the
    weight-normed ``last_layer`` (``weight_g`` of shape (out_dim, 1), frozen when ``norm_last_layer``)."""
    out: OrderedDict = OrderedDict()
    if nlayers == 1:
        _linear(out, "mlp", in_dim, bottleneck_dim)
    else:
        idx, dims = 0, [in_dim] + [hidden_dim] * (nlayers - 1)
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            _linear(out, f"mlp.{idx}", d_in, d_out)
            idx += 1
            if use_bn:
                _batchnorm(out, f"mlp.{idx}", d_out)
                idx += 1
            idx += 1  # GELU
        _linear(out, f"mlp.{idx}", hidden_dim, bottleneck_dim)
    out["last_layer.weight_g"] = _p(out_dim, 1, kind="frozen" if norm_last_layer else "param", fill="positive")
    out["last_layer.weight_v"] = _p(out_dim, bottleneck_dim)
    return out


def swin_relative_position_index(window: int) -> torch.Tensor:
    """``WindowAttention.relative_position_index`` exactly as the official Swin / EsViT code computes it."""
    coords = torch.stack(torch.meshgrid([torch.arange(window), torch.arange(window)], indexing="ij"))
    flat = torch.flatten(coords, 1)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += window - 1
    rel[:, :, 1] += window - 1
    rel[:, :, 0] *= 2 * window - 1
    return rel.sum(-1)


def esvit_swin_layout(*, img_size: int = 224, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96,
                      depths: tuple = (2, 2, 6, 2), num_heads: tuple = (3, 6, 12, 24), window_size: int = 7,
                      mlp_ratio: float = 4.0, qkv_bias: bool = True, ape: bool = False,
                      patch_norm: bool = True) -> OrderedDict:
    """EsViT's ``SwinTransformer`` backbone (the original Swin code's layout), heads excluded.

    ``patch_embed.{proj, norm}``; per stage i: ``layers.i.blocks.j.{norm1, attn.relative_position_bias_table,
    attn.relative_position_index (int64 buffer), attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, and for i < last
    the patch merging at the END of the stage, ``layers.i.downsample.{reduction (no bias), norm}``; then ``norm``.
    Each block's window is clamped to its stage resolution, as ``SwinTransformerBlock`` does.
    """
    out: OrderedDict = OrderedDict()
    grid = img_size // patch_size
    if ape:
        out["absolute_pos_embed"] = _p(1, grid * grid, embed_dim)
    out["patch_embed.proj.weight"] = _p(embed_dim, in_chans, patch_size, patch_size)
    out["patch_embed.proj.bias"] = _p(embed_dim)
    if patch_norm:
        _layernorm(out, "patch_embed.norm", embed_dim)
    stages = len(depths)
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        dim, res = embed_dim * 2 ** i, grid // 2 ** i
        window = res if res <= window_size else window_size
        hidden = int(dim * mlp_ratio)
        for j in range(depth):
            b = f"layers.{i}.blocks.{j}"
            _layernorm(out, f"{b}.norm1", dim)
            out[f"{b}.attn.relative_position_bias_table"] = _p((2 * window - 1) ** 2, heads)
            out[f"{b}.attn.relative_position_index"] = TensorSpec((window * window, window * window), torch.int64,
                                                                  "buffer", "rel_index")
            _linear(out, f"{b}.attn.qkv", dim, 3 * dim, qkv_bias)
            _linear(out, f"{b}.attn.proj", dim, dim)
            _layernorm(out, f"{b}.norm2", dim)
            _linear(out, f"{b}.mlp.fc1", dim, hidden)
            _linear(out, f"{b}.mlp.fc2", hidden, dim)
        if i < stages - 1:
            _linear(out, f"layers.{i}.downsample.reduction", 4 * dim, 2 * dim, bias=False)
            _layernorm(out, f"layers.{i}.downsample.norm", 4 * dim)
    _layernorm(out, "norm", embed_dim * 2 ** (stages - 1))
    return out


def torchvision_resnet50_layout(*, width_mult: int = 1, num_classes: Optional[int] = 1000,
                                downsample_first: bool = False) -> OrderedDict:
    """A torchvision-named ResNet-50 (Bottleneck, 3-4-6-3) state dict, BN buffers included.

    ``num_classes=None``: no ``fc`` (Chen & Krishnan's backbone file). ``downsample_first``: tonylins'
    ``resnet_wider.Bottleneck`` registers ``downsample`` before ``conv1`` (torchvision and pl_bolts after ``bn3``).
    """
    out: OrderedDict = OrderedDict()
    inplanes = 64 * width_mult
    out["conv1.weight"] = _p(inplanes, 3, 7, 7)
    _batchnorm(out, "bn1", inplanes)
    for s, (planes, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), start=1):
        planes *= width_mult
        width, expanded = planes, planes * 4
        for b in range(blocks):
            p = f"layer{s}.{b}"
            block: OrderedDict = OrderedDict()
            down: OrderedDict = OrderedDict()
            if b == 0 and (stride != 1 or inplanes != expanded):
                down[f"{p}.downsample.0.weight"] = _p(expanded, inplanes, 1, 1)
                _batchnorm(down, f"{p}.downsample.1", expanded)
            block[f"{p}.conv1.weight"] = _p(width, inplanes, 1, 1)
            _batchnorm(block, f"{p}.bn1", width)
            block[f"{p}.conv2.weight"] = _p(width, width, 3, 3)
            _batchnorm(block, f"{p}.bn2", width)
            block[f"{p}.conv3.weight"] = _p(expanded, width, 1, 1)
            _batchnorm(block, f"{p}.bn3", expanded)
            out.update(down | block if downsample_first else block | down)
            inplanes = expanded
    if num_classes:
        _linear(out, "fc", 512 * 4 * width_mult, num_classes)
    return out


# --------------------------------------------------------------------------------------------- filling and nesting


Make = Callable[[TensorSpec], object]   # TensorSpec -> tensor (filler) or TensorSpec itself (layout only)


def filler(gen: torch.Generator) -> Make:
    """Seeded random values for each spec: N(0, 0.02) weights, positive variances / norms, small optimizer moments,
    a step count for ``num_batches_tracked``, and ``relative_position_index`` computed as the official code does."""

    def make(spec: TensorSpec) -> torch.Tensor:
        if spec.fill == "rel_index":
            return swin_relative_position_index(int(round(spec.shape[0] ** 0.5)))
        if spec.fill == "count":
            return torch.tensor(int(torch.randint(1, 10_000, (), generator=gen)), dtype=spec.dtype)
        value = torch.randn(spec.shape, generator=gen, dtype=spec.dtype) * 0.02
        return value.abs() + 0.5 if spec.fill == "positive" else value

    return make


def _as_specs(spec: TensorSpec) -> TensorSpec:
    return spec


def materialize(layout: dict, make: Make, prefix: str = "") -> OrderedDict:
    """``layout`` filled by ``make``, keys prefixed with ``prefix`` (e.g. DDP's ``module.``)."""
    return OrderedDict((prefix + k, make(s)) for k, s in layout.items())


def _params_groups(named: Iterable[tuple[str, TensorSpec]]) -> tuple[list, list]:
    """DINO / EsViT ``utils.get_params_groups``: trainable parameters, biases and 1-d ones not regularized."""
    regularized, not_regularized = [], []
    for name, spec in named:
        if spec.kind != "param":
            continue
        (not_regularized if name.endswith(".bias") or len(spec.shape) == 1 else regularized).append(spec)
    return regularized, not_regularized


def _adamw_state(student: OrderedDict, make: Make, args: argparse.Namespace, moments: bool) -> dict:
    """``torch.optim.AdamW(get_params_groups(student)).state_dict()`` after training: a ``step`` and the two moments
    per trained parameter, indexed in group order; the last iteration's lr / weight decay in the groups."""
    regularized, not_regularized = _params_groups(student.items())
    groups, state, index = [], {}, 0
    for params, wd in ((regularized, args.weight_decay_end), (not_regularized, 0.0)):
        ids = list(range(index, index + len(params)))
        index += len(params)
        groups.append({"lr": args.min_lr, "betas": (0.9, 0.999), "eps": 1e-08, "weight_decay": wd,
                       "amsgrad": False, "params": ids})
        if moments:
            for i, spec in zip(ids, params):
                state[i] = {"step": 1000 * args.epochs, "exp_avg": make(TensorSpec(spec.shape)),
                            "exp_avg_sq": make(TensorSpec(spec.shape, fill="positive"))}
    return {"state": state, "param_groups": groups}


_GRAD_SCALER_STATE = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                      "_growth_tracker": 0}

# main_dino.py get_args_parser() defaults (l. 45-128), then init_distributed_mode()'s rank / world_size / gpu.
DINO_ARGS = dict(
    arch="vit_small", patch_size=16, out_dim=65536, norm_last_layer=True, momentum_teacher=0.996,
    use_bn_in_head=False, warmup_teacher_temp=0.04, teacher_temp=0.04, warmup_teacher_temp_epochs=0, use_fp16=True,
    weight_decay=0.04, weight_decay_end=0.4, clip_grad=3.0, batch_size_per_gpu=64, epochs=100, freeze_last_layer=1,
    lr=0.0005, warmup_epochs=10, min_lr=1e-06, optimizer="adamw", drop_path_rate=0.1, global_crops_scale=(0.4, 1.0),
    local_crops_number=8, local_crops_scale=(0.05, 0.4), data_path="/path/to/imagenet/train/", output_dir=".",
    saveckp_freq=20, seed=0, num_workers=10, dist_url="env://", local_rank=0, rank=0, world_size=8, gpu=0)

# main_esvit.py get_args_parser() defaults (l. 55-203; dashed options as argparse stores them), overridden by the
# README's Swin-T training command (l. 344).
ESVIT_ARGS = dict(
    cfg="experiments/imagenet/swin/swin_tiny_patch4_window7_224.yaml", arch="swin_tiny", patch_size=16,
    out_dim=65536, norm_last_layer=False, momentum_teacher=0.996, use_bn_in_head=False, use_dense_prediction=True,
    warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=30, use_fp16=True, weight_decay=0.04,
    weight_decay_end=0.4, clip_grad=3.0, batch_size_per_gpu=32, epochs=300, freeze_last_layer=1, lr=0.0005,
    warmup_epochs=10, min_lr=1e-06, optimizer="adamw", global_crops_scale=(0.4, 1.0), local_crops_number=(8,),
    local_crops_scale=(0.05, 0.4), local_crops_size=(96,), aug_opt="dino_aug", color_jitter=0.4,
    aa="rand-m9-mstd0.5-inc1", train_interpolation="bicubic", reprob=0.25, remode="pixel", recount=1, resplit=False,
    use_mixup=False, num_mixup_views=10, mixup=0.8, cutmix=1.0, cutmix_minmax=None, mixup_prob=1.0,
    mixup_switch_prob=0.5, mixup_mode="batch", smoothing=0.0, dataset="imagenet1k", zip_mode=False, tsv_mode=False,
    sampler="distributed", data_path="/path/to/imagenet/train/", pretrained_weights_ckpt="", output_dir=".",
    saveckp_freq=5, seed=0, num_workers=10, dist_url="env://", local_rank=0, opts=[], rank=0, world_size=16, gpu=0)


def _training_checkpoint(student_layout: OrderedDict, teacher_layout: OrderedDict, loss_buffers: tuple,
                         args: argparse.Namespace, out_dim: int, make: Make, compact: bool) -> dict:
    """What ``main_dino.py`` / ``main_esvit.py`` save each epoch: the DDP-wrapped student (``module.``), the bare
    teacher (no DDP without BatchNorm), the AdamW state, the epoch, the ``args`` Namespace and the loss buffers."""
    save = {
        "student": materialize(student_layout, make, "module."),
        "teacher": materialize(teacher_layout, make),  # the EMA teacher: other values than the student's
        "optimizer": _adamw_state(student_layout, make, args, moments=not compact),
        "epoch": args.epochs,
        "args": args,
        "dino_loss": OrderedDict((b, make(_p(1, out_dim))) for b in loss_buffers),
    }
    if args.use_fp16:
        save["fp16_scaler"] = dict(_GRAD_SCALER_STATE)
    return save


def _prefixed(layout: dict, prefix: str) -> OrderedDict:
    return OrderedDict((prefix + k, v) for k, v in layout.items())


def dino_vits16_checkpoint(make: Make, *, compact: bool = False, **arg_overrides) -> dict:
    """A full DINO ViT-S/16 training checkpoint: ``MultiCropWrapper(backbone=ViT, head=DINOHead)`` for student and
    teacher (Chen & Krishnan's ``vits_tcga_brca_dino.pt``, HIPT's ``vit256_small_dino.pth``)."""
    args = argparse.Namespace(**(DINO_ARGS | arg_overrides))
    out_dim = COMPACT_OUT_DIM if compact else args.out_dim
    backbone = dino_vit_layout(patch_size=args.patch_size)

    def wrapper(norm_last_layer):
        return _prefixed(backbone, "backbone.") | _prefixed(
            dino_head_layout(384, out_dim, use_bn=args.use_bn_in_head, norm_last_layer=norm_last_layer), "head.")

    return _training_checkpoint(wrapper(args.norm_last_layer), wrapper(True), ("center",), args, out_dim, make,
                                compact)


def esvit_swin_tiny_checkpoint(make: Make, *, compact: bool = False) -> dict:
    """EsViT Swin-T (W=7), view + region tasks: ``DINOHead``s set as ``head`` and ``head_dense`` on the Swin itself
    (no ``backbone.`` wrapper), ``DDINOLoss`` (``center``, ``center_grid``)."""
    args = argparse.Namespace(**ESVIT_ARGS)
    out_dim = COMPACT_OUT_DIM if compact else args.out_dim
    swin = esvit_swin_layout()
    dim = 96 * 2 ** 3

    def model(norm_last_layer):
        head = dino_head_layout(dim, out_dim, use_bn=args.use_bn_in_head, norm_last_layer=norm_last_layer)
        return OrderedDict(swin) | _prefixed(head, "head.") | _prefixed(head, "head_dense.")

    # the student's heads follow --norm_last_layer; the teacher's are built with DINOHead's default (True)
    return _training_checkpoint(model(args.norm_last_layer), model(True), ("center", "center_grid"), args, out_dim,
                                make, compact)


def chen2022_simclr_resnet50_file(make: Make, *, compact: bool = False) -> OrderedDict:
    """Chen & Krishnan's ``resnet50_tcga_brca_simclr.pt``: the bare ``state_dict()`` of a torchvision-named
    ResNet-50 whose ``fc`` is ``Identity`` (no ``fc`` keys), saved directly with ``torch.save``."""
    return materialize(torchvision_resnet50_layout(num_classes=None), make)


def simclr_v1_resnet50_1x_file(make: Make, *, compact: bool = False) -> dict:
    """SimCLR v1 ResNet-50 (1x) as tonylins/simclr-converter writes it: ``{'state_dict': resnet50x1().state_dict()}``
    (torchvision names, ``downsample`` first in each block, ``fc`` 2048->1000 from the TF supervised head)."""
    return {"state_dict": materialize(torchvision_resnet50_layout(downsample_first=True), make)}


# registry name -> builder of the object the official code passes to torch.save
MOCK_BUILDERS: dict[str, Callable[..., dict]] = {
    "chen2022_dino_vits16_tcga_brca": dino_vits16_checkpoint,
    "hipt_vit256_small_dino": dino_vits16_checkpoint,
    "chen2022_simclr_resnet50_tcga_brca": chen2022_simclr_resnet50_file,
    "esvit_swin_tiny": esvit_swin_tiny_checkpoint,
    "simclr_v1_resnet50_1x_imagenet": simclr_v1_resnet50_1x_file,
}


def _builder(name: str) -> Callable[..., dict]:
    if name not in MOCK_BUILDERS:
        raise ValueError(f"no official layout for {name!r}; layouts exist for {sorted(MOCK_BUILDERS)}")
    return MOCK_BUILDERS[name]


def official_checkpoint(name: str, seed: int = 0, *, compact: bool = False) -> dict:
    """The object the official repository would ``torch.save`` for registry entry ``name``, with mock weights."""
    return _builder(name)(filler(torch.Generator().manual_seed(int(seed))), compact=compact)


def official_layout(name: str, *, compact: bool = False) -> dict:
    """The same nested object as :func:`official_checkpoint` with :class:`TensorSpec` leaves instead of tensors:
    the file's structure, key names, shapes and dtypes, without allocating the weights."""
    return _builder(name)(_as_specs, compact=compact)


def checkpoint_nbytes(obj) -> int:
    """Bytes of tensor data in a nested checkpoint object (tensors or :class:`TensorSpec` leaves)."""
    if isinstance(obj, TensorSpec):
        return torch.empty(0, dtype=obj.dtype).element_size() * int(torch.Size(obj.shape).numel())
    if torch.is_tensor(obj):
        return obj.element_size() * obj.numel()
    if isinstance(obj, dict):
        return sum(checkpoint_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(checkpoint_nbytes(v) for v in obj)
    return 0


def _mock_target(name: str, path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / f"{name}{MOCK_SUFFIX}"
    if not path.name.endswith(MOCK_SUFFIX):
        raise ValueError(f"mock checkpoint {path} must be named '*{MOCK_SUFFIX}', so that it is never mistaken "
                         f"for the official file")
    return path


def _sidecar_fields(name: str, seed: int, compact: bool) -> dict:
    return {"name": name, "seed": int(seed), "compact": bool(compact), "layout_version": LAYOUT_VERSION}


def write_official_mock(name: str, path: str | Path, seed: int = 0, *, compact: bool = False) -> Path:
    """Write registry entry ``name``'s file in its official layout with seeded mock weights; return its path.

    ``path`` is a directory (the file is then ``<name>.MOCK.pth`` in it) or a file name ending in ``.MOCK.pth``.
    The object is written with ``torch.save`` as the official code does; a ``<name>.MOCK.json`` sidecar records the
    name, seed, size and sha256.
    """
    target = _mock_target(name, path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(official_checkpoint(name, seed, compact=compact), target)
    meta = _sidecar_fields(name, seed, compact) | {
        "mock": True, "size": target.stat().st_size, "sha256": sha256_file(target),
        "official_source": OFFICIAL_WEIGHTS[name].source,
        "note": "MOCK: seeded random weights in the official layout, for tests and rehearsals; not the official "
                "weights."}
    atomic_write_text(mock_sidecar_path(target), json.dumps(meta, indent=2) + "\n")
    return target


def write_all_official_mocks(directory: str | Path, *, seed: int = 0, compact: bool = False,
                             names: Optional[Iterable[str]] = None, reuse: bool = True) -> dict[str, Path]:
    """One mock per registry entry (or per ``names``) in ``directory``: ``{name: <directory>/<name>.MOCK.pth}``.

    With ``reuse``, a file already there whose sidecar records the same name, seed, compactness and layout version and
    whose size matches is kept (``load_official`` still checks its sha256 against the sidecar).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in (sorted(OFFICIAL_WEIGHTS) if names is None else list(names)):
        target = _mock_target(name, directory)
        sidecar = mock_sidecar_path(target)
        if reuse and target.is_file() and sidecar.is_file():
            try:
                meta = json.loads(sidecar.read_text())
            except (OSError, ValueError):
                meta = {}
            if (all(meta.get(k) == v for k, v in _sidecar_fields(name, seed, compact).items())
                    and meta.get("size") == target.stat().st_size):
                out[name] = target
                continue
        out[name] = write_official_mock(name, target, seed, compact=compact)
    return out
