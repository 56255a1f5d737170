"""Official pretrained weights: read a checkpoint file safely, convert its layout to the timm model inside our encoders,
and load it with an explicit report of what matched.

The official files (docs/protocols.md, "Official weights"), under the one name each that recipes (``checkpoint:NAME``),
``--checkpoint NAME=PATH`` and this registry share, and their layouts (transcribed, with the source lines, in
:mod:`histokit.models.official_layouts`, which writes mock files in exactly these layouts):

* ``chen2022_dino_vits16_tcga_brca`` — Chen & Krishnan 2022 DINO ViT-S/16 (``Richarizardd/Self-Supervised-ViT-Path``
  ``ckpts/vits_tcga_brca_dino.pt``) and ``hipt_vit256_small_dino`` — HIPT ViT-256 (``mahmoodlab/HIPT``
  ``HIPT_4K/Checkpoints/vit256_small_dino.pth``): full DINO training checkpoints (``student``, ``teacher``,
  ``optimizer``, ``epoch``, ``args`` = an ``argparse.Namespace``, ``dino_loss``[, ``fp16_scaler``]); the
  ``teacher`` dict holds ``backbone.*`` (DINO's ViT, key-compatible with timm's) and ``head.*`` (the DINO projection
  head), the student the same under DDP's ``module.``. Their own loaders take ``teacher``, strip ``module.`` /
  ``backbone.`` and load non-strictly (``patch_extraction_utils.py``).
* ``chen2022_simclr_resnet50_tcga_brca`` — Chen & Krishnan SimCLR ResNet-50 (``ckpts/resnet50_tcga_brca_simclr.pt``):
  a bare state dict with torchvision ResNet key names (which timm's ResNet shares) and no ``fc``.
* ``esvit_swin_tiny`` — EsViT Swin-T, W=7 (``microsoft/esvit``): the ``teacher`` dict is the Swin itself with the view
  head ``head.*`` and the region head ``head_dense.*`` attached; Swin keys follow the original Swin code, whose patch
  merging sits at the end of a stage — timm's ``swin_transformer.checkpoint_filter_fn`` moves ``layers.i.downsample``
  to ``layers.i+1.downsample`` and drops the ``relative_position_index`` buffers (persistent in the original code).
* ``simclr_v1_resnet50_1x_imagenet`` — SimCLR v1 ResNet-50 (1x) ImageNet (Chen et al. 2020,
  ``google-research/simclr``, the Habijan et al. SimCLR baseline's reference [12]): the TF checkpoint ``ResNet50_1x``
  converted with ``tonylins/simclr-converter`` (the converter that repository's README names) to ``{'state_dict':
  ...}`` of a torchvision-named ResNet-50 with its supervised ``fc``; inputs in [0, 1], no mean/std normalisation.

Chen & Krishnan's and HIPT's weights expect inputs normalised with mean = std = 0.5, EsViT's ImageNet statistics,
SimCLR v1's none (mean 0, std 1); see :data:`OFFICIAL_WEIGHTS`. :func:`validate_checkpoint_args` checks
``--checkpoint`` arguments against the selected recipes before any work starts.

A Git-LFS pointer saved in place of the weights is the most reported failure in these repositories
(``UnpicklingError: invalid load key 'v'``): :func:`read_checkpoint` recognises it and says so.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

import torch
from torch import nn

from ..io import sha256_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
ZERO, ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)   # "no normalisation": inputs in [0, 1] (SimCLR v1's TF models)

# Mock files (histokit.models.official_layouts) are named *.MOCK.pth and carry a *.MOCK.json sidecar with their sha256.
MOCK_SUFFIX = ".MOCK.pth"

# Classes that official training checkpoints pickle besides tensors and containers. argparse.Namespace holds the
# training arguments in every DINO / EsViT checkpoint; it is plain attribute storage, so allowing it keeps
# weights_only=True usable for the official files.
SAFE_GLOBALS: tuple = (argparse.Namespace,)

_log = logging.getLogger(__name__)

_SNIFF_BYTES = 1024
_LIST_LIMIT = 10


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used as it is; the message names the file and what to do."""


class LFSPointerError(CheckpointError):
    """The file is a Git-LFS pointer (a ~130-byte text), not the weights it points to."""


class CheckpointIntegrityError(CheckpointError):
    """The file's size or sha256 differs from the published one."""


class UntrustedPickleError(CheckpointError):
    """The pickle needs classes that ``weights_only=True`` refuses; only ``trust_pickle=True`` loads it."""


class CheckpointMismatch(CheckpointError):
    """The state dict does not fit the model (wrong architecture, wrong converter, truncated file).

    ``report`` holds the key-level detail: ``loaded``, ``missing``, ``unexpected`` and ``shape_mismatches``.
    """

    def __init__(self, message: str, report: Optional["KeyReport"] = None):
        super().__init__(message)
        self.report = report


class CheckpointArgumentError(CheckpointError):
    """A ``--checkpoint NAME=PATH`` argument that cannot be used: a name no selected recipe asks for, or a path
    that is missing, not a file, empty, unreadable, a Git-LFS pointer or a web page."""


# --------------------------------------------------------------------------------------------- reading a file


def _lfs_pointer_fields(head: bytes) -> dict[str, str]:
    fields = {}
    for line in head.decode("utf-8", errors="replace").splitlines():
        key, _, value = line.partition(" ")
        if key and value:
            fields[key] = value.strip()
    return fields


def _looks_like_html(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")) or b"<html" in text[:512]


def _sniff(path: Path) -> None:
    """Refuse the two files most often saved in place of a checkpoint: an LFS pointer and an HTML page."""
    with open(path, "rb") as fh:
        head = fh.read(_SNIFF_BYTES)
    if head.startswith(b"version https://git-lfs"):
        info = _lfs_pointer_fields(head)
        size = info.get("size", "?")
        size_text = f"{int(size):,} bytes" if size.isdigit() else f"size {size!r}"
        raise LFSPointerError(
            f"{path} is a Git-LFS pointer file ({path.stat().st_size} bytes), not the checkpoint: the real file is "
            f"{size_text} ({info.get('oid', 'oid unknown')}). Fetch the object with `git lfs pull` inside a clone "
            f"of the repository (or `git lfs pull --include <path>`), or download it from the LFS URL "
            f"https://media.githubusercontent.com/media/<owner>/<repo>/<branch>/<path>, then point at that file.")
    if _looks_like_html(head):
        raise CheckpointError(
            f"{path} is an HTML/XML page ({path.stat().st_size:,} bytes), not a checkpoint: the download returned a "
            f"web page (login, quota, expired-link or 'file not found' page, or a GitHub 'blob' URL instead of the "
            f"raw/LFS one). "
            f"Download the file itself again.")


def _verify(path: Path, sha256: Optional[str], size: Optional[int]) -> None:
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise CheckpointIntegrityError(
            f"{path}: size {actual_size:,} bytes, expected {size:,} bytes (incomplete download or a different file)")
    if sha256 is not None:
        actual = sha256_file(path)
        if actual.lower() != sha256.lower():
            raise CheckpointIntegrityError(f"{path}: sha256 mismatch: expected {sha256.lower()}, actual {actual}")


def check_checkpoint_file(path: str | Path, if_empty: str) -> Path:
    """The checks every checkpoint read starts with: it exists, is a file, is not empty (``if_empty`` says what
    to do), and is not a Git-LFS pointer or an HTML page saved in its place."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path {path} is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint file {path} is empty (0 bytes): {if_empty}")
    _sniff(path)
    return path


def read_checkpoint(path: str | Path, *, sha256: Optional[str] = None, size: Optional[int] = None,
                    trust_pickle: bool = False) -> dict:
    """Load a checkpoint file as a dict, refusing anything that is not what it claims to be.

    Order of checks: the file exists; it is not a Git-LFS pointer or an HTML page; its ``size`` and ``sha256`` match
    when given; it loads with ``torch.load(weights_only=True)`` (``argparse.Namespace`` allowed, see
    :data:`SAFE_GLOBALS`). A pickle that needs other classes is refused unless ``trust_pickle=True`` — only then is
    ``weights_only=False`` used, because unpickling arbitrary classes can execute code.
    """
    path = check_checkpoint_file(path, "an interrupted copy or download; fetch it again")
    _verify(path, sha256, size)
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust_pickle:
            # torch words it "Unsupported global: GLOBAL x.y" for an unknown class and "unsupported GLOBAL x.y
            # whose module x is blocked" for os / subprocess / builtins ...: both are a class the file needs
            found = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", str(err), re.IGNORECASE)
            if found:
                raise UntrustedPickleError(
                    f"{path} pickles {found.group(1)}, which torch.load(weights_only=True) refuses because "
                    f"unpickling arbitrary classes can run code. If you trust the file's source, call again with "
                    f"trust_pickle=True.") from err
            raise CheckpointError(
                f"{path} could not be read with torch.load(weights_only=True): the file is corrupt, truncated or "
                f"not a torch.save file ({str(err).strip().splitlines()[-1][:200]}). If it is a trusted checkpoint "
                f"that needs full unpickling, call again with trust_pickle=True.") from err
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, OSError, EOFError) as err:  # a damaged zip container ("PytorchStreamReader failed ..."),
        # a file cut short (EOFError, or OSError EINVAL from a seek past its end)
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt): "
                              f"{type(err).__name__}: {err}") from err
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict / state dict")
    return dict(obj)


# --------------------------------------------------------------------------------------------- converters


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())


@dataclass
class Unwrapping:
    """What a converter took apart to reach the weights: nesting keys and prefixes (``unwrapped``) and the heads it
    dropped (``dropped``), e.g. ``["key 'teacher'", "prefix 'backbone.' (150 keys)"]``, ``["'head.' (8 keys)"]``."""

    unwrapped: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def _find_state_dict(obj: Any, keys: tuple, depth: int) -> Optional[tuple[dict, list[str]]]:
    if _is_state_dict(obj):
        return dict(obj), []
    if depth == 0 or not isinstance(obj, Mapping):
        return None
    for key in keys:
        if key in obj:
            found = _find_state_dict(obj[key], keys, depth - 1)
            if found is not None:
                return found[0], [key] + found[1]
    return None


def _select(ckpt: Mapping, keys: Iterable[str], what: str,
            trace: Optional[Unwrapping] = None) -> dict[str, torch.Tensor]:
    """The first state dict under ``keys`` (e.g. ``teacher``; nested up to 3 deep, e.g. ``{'state_dict': {'model':
    ...}}``), or ``ckpt`` itself if it is a bare one; the nesting keys taken are recorded in ``trace``."""
    keys = tuple(keys)
    found = _find_state_dict(ckpt, keys, 3)
    if found is None:
        top = sorted(map(str, ckpt))[:_LIST_LIMIT]
        raise CheckpointError(f"no {what} state dict found: expected one of the keys {list(keys)} or a bare state "
                              f"dict; top-level keys are {top}")
    sd, path = found
    if trace is not None:
        trace.unwrapped += [f"key {k!r}" for k in path]
    return sd


def _strip_prefixes(sd: Mapping[str, torch.Tensor], prefixes: Iterable[str],
                    trace: Optional[Unwrapping] = None) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (DDP's ``module.``, DINO's ``backbone.``, ...) from the start of every key."""
    prefixes = tuple(prefixes)
    counts: dict[str, int] = {}
    out = {}
    for key, value in sd.items():
        stripped = True
        while stripped:
            stripped = False
            for p in prefixes:
                if key.startswith(p):
                    key, stripped = key[len(p):], True
                    counts[p] = counts.get(p, 0) + 1
        out[key] = value
    if trace is not None:
        trace.unwrapped += [f"prefix {p!r} ({n} keys)" for p, n in counts.items()]
    return out


def _drop(sd: Mapping[str, torch.Tensor], prefixes: Iterable[str],
          trace: Optional[Unwrapping] = None) -> dict[str, torch.Tensor]:
    prefixes = tuple(prefixes)
    if trace is not None:
        for p in prefixes:
            n = sum(1 for k in sd if k.startswith(p))
            if n:
                trace.dropped.append(f"{p!r} ({n} keys)")
    return {k: v for k, v in sd.items() if not k.startswith(prefixes)}


def dino_teacher_to_timm_vit(ckpt: Mapping, model: Optional[nn.Module] = None, *, key: str = "teacher",
                             trace: Optional[Unwrapping] = None) -> dict[str, torch.Tensor]:
    """DINO checkpoint (Chen & Krishnan 2022; HIPT ViT-256) -> state dict for timm ``VisionTransformer``.

    Takes ``ckpt[key]`` (the EMA teacher, as both projects evaluate), else ``student`` / ``state_dict`` / ``model``,
    else a bare state dict; strips ``module.`` and ``backbone.``; drops the DINO head ``head.*``. DINO's ViT uses
    timm's key names, so nothing is renamed. With ``model`` given, timm's own ViT filter resamples ``pos_embed`` (and
    the patch embedding) to that model's grid, e.g. the 224-px checkpoint into a ViT built for 112 px.
    """
    sd = _select(ckpt, (key, "student", "state_dict", "model"), "DINO ViT", trace)
    sd = _drop(_strip_prefixes(sd, ("module.", "backbone."), trace), ("head.",), trace)
    if model is not None:
        from timm.models.vision_transformer import checkpoint_filter_fn

        sd = checkpoint_filter_fn(sd, _timm_module(model))
    return sd


def esvit_teacher_to_timm_swin(ckpt: Mapping, model: nn.Module, *, key: str = "teacher",
                               trace: Optional[Unwrapping] = None) -> dict[str, torch.Tensor]:
    """EsViT checkpoint (Li et al. 2022, ``microsoft/esvit``) -> state dict for timm ``SwinTransformer``.

    Takes ``ckpt[key]`` (else ``student`` / ``state_dict`` / ``model`` / bare); strips ``module.`` / ``backbone.``;
    drops the view head ``head.*`` and the region head ``head_dense.*`` that EsViT attaches to the Swin; then applies
    timm's ``swin_transformer.checkpoint_filter_fn`` (which needs ``model``): original-layout patch merging
    ``layers.i.downsample`` -> timm's ``layers.i+1.downsample``, ``relative_position_index`` / ``attn_mask`` buffers
    dropped (timm recomputes them), relative-position tables resized if the window differs.
    """
    from timm.models.swin_transformer import checkpoint_filter_fn

    sd = _select(ckpt, (key, "student", "state_dict", "model"), "EsViT Swin", trace)
    sd = _drop(_strip_prefixes(sd, ("module.", "backbone."), trace), ("head.", "head_dense."), trace)
    return checkpoint_filter_fn(sd, _timm_module(model))


def simclr_resnet_to_timm(ckpt: Mapping, *, trace: Optional[Unwrapping] = None) -> dict[str, torch.Tensor]:
    """SimCLR ResNet-50 (Chen & Krishnan 2022's bare backbone; SimCLR v1 via simclr-converter's ``{'state_dict':
    ...}``) -> state dict for timm ``ResNet`` (torchvision key names).

    Accepts a bare state dict or one under ``state_dict`` / ``model``; strips ``module.``, ``model.``, ``encoder.``,
    ``backbone.``, ``resnet.``; drops the classifier ``fc.*`` and any SimCLR projection head (``projection*``,
    ``projector*``, ``head*``), which the retrieval embedding (global-average-pooled trunk) does not use.
    """
    sd = _select(ckpt, ("state_dict", "model"), "SimCLR ResNet", trace)
    sd = _strip_prefixes(sd, ("module.", "model.", "encoder.", "backbone.", "resnet."), trace)
    return _drop(sd, ("fc.", "projection", "projector", "head"), trace)


# --------------------------------------------------------------------------------------------- loading


@dataclass
class KeyReport:
    """What :func:`load_into` did: keys loaded, and the missing / unexpected ones it was allowed to ignore."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)       # in the model, absent from the state dict
    unexpected: list[str] = field(default_factory=list)    # in the state dict, absent from the model
    shape_mismatches: list[str] = field(default_factory=list)
    unwrapped: list[str] = field(default_factory=list)     # nesting keys / prefixes taken off
    dropped: list[str] = field(default_factory=list)       # heads left out on purpose (load_official)
    mock: bool = False                                     # the file is a *.MOCK.pth (official_layouts)

    def __str__(self) -> str:
        text = (f"KeyReport(loaded={len(self.loaded)}, missing={len(self.missing)} {self.missing[:_LIST_LIMIT]}, "
                f"unexpected={len(self.unexpected)} {self.unexpected[:_LIST_LIMIT]}")
        if self.unwrapped:
            text += f", unwrapped={self.unwrapped}"
        if self.dropped:
            text += f", dropped={self.dropped}"
        return text + (", MOCK weights)" if self.mock else ")")


def _timm_module(target: nn.Module) -> nn.Module:
    """Our timm-backed encoders keep the network in ``.model``; other modules (CypherViT) are loaded directly."""
    inner = getattr(target, "model", None)
    return inner if isinstance(inner, nn.Module) else target


def _listing(title: str, items: list) -> str:
    more = f" ... and {len(items) - _LIST_LIMIT} more" if len(items) > _LIST_LIMIT else ""
    return f"  {title} ({len(items)}): {items[:_LIST_LIMIT]}{more}"


# The nesting keys a training script most often saves the weights under, in the order they are tried: an EMA
# ``teacher`` first (what DINO / EsViT / iBOT evaluate), then ``state_dict`` (Lightning, simclr-converter, most
# scripts) and ``model`` (timm's / DeiT's / MAE's ``{'model': ..., 'optimizer': ...}``).
WRAPPER_KEYS: tuple[str, ...] = ("teacher", "state_dict", "model")
# Prefixes a wrapper puts on every key: DDP / DataParallel ``module.``, DINO's MultiCropWrapper ``backbone.`` and a
# histokit Encoder's ``model.`` (the kit's own encoder.pt holds the timm network under ``model.``, beside the
# encoder's own parameters, e.g. iBOT's ``mask_token``, which a bare timm model has no place for: see
# ENCODER_EXTRA_KEYS). The kit itself loads encoder.pt with ``Encoder.load_state_dict``.
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "backbone.", "model.")
ENCODER_EXTRA_KEYS: tuple[str, ...] = ("mask_token",)


def unwrap_state_dict(obj: Mapping[str, Any], expected: Iterable[str],
                      trace: Optional[Unwrapping] = None) -> dict[str, Any]:
    """The weights inside a checkpoint as a model with the keys ``expected`` wants them.

    A bare state dict is taken as it is; otherwise the first one under :data:`WRAPPER_KEYS` (nested up to 3 deep,
    e.g. ``{'state_dict': {'model': ...}}``). Then each prefix of :data:`WRAPPER_PREFIXES` is taken off, repeatedly
    (``module.backbone.``), but only where it is a wrapper's: no key carrying it is one of the model's own and at
    least one key without it is. What was taken off is appended to ``trace.unwrapped`` (``"key 'state_dict'"``,
    ``"prefix 'module.' (150 keys)"``). Nothing else is renamed: whether the result fits is :func:`load_into`'s
    strict check.
    """
    expected = set(expected)
    if not obj:
        return {}
    sd = dict(obj) if _is_state_dict(obj) else _select(obj, WRAPPER_KEYS, "model", trace)
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            carrying = [k for k in sd if k.startswith(prefix)]
            if (carrying and not any(k in expected for k in carrying)
                    and any(k[len(prefix):] in expected for k in carrying)):
                sd = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}
                if trace is not None:
                    trace.unwrapped.append(f"prefix {prefix!r} ({len(carrying)} keys)")
                changed = True
    return sd


def load_into(encoder_or_module: nn.Module, state_dict: Mapping[str, Any], *,
              allow_missing: Iterable[str] = (), allow_unexpected: Iterable[str] = ("head",)) -> KeyReport:
    """Copy ``state_dict`` into the encoder's timm model (or the module itself), strictly except for allowed prefixes.

    ``state_dict`` may be a checkpoint as a training script saved it: the common wrappers are unwrapped first
    (:func:`unwrap_state_dict`: a ``teacher`` / ``state_dict`` / ``model`` key, DDP's ``module.``, DINO's
    ``backbone.``), and the report's ``unwrapped`` (and a log line on the
    ``histokit.models.checkpoints`` logger) says which. A key missing from the state dict is then tolerated only if it
    starts with one of ``allow_missing``; an extra key only if it starts with one of ``allow_unexpected``; a shape
    mismatch never. Anything else raises :class:`CheckpointMismatch` listing the offending keys, so a checkpoint for
    another architecture is an error, not a silently half-initialised model.
    """
    module = _timm_module(encoder_or_module)
    allow_missing, allow_unexpected = tuple(allow_missing), tuple(allow_unexpected)
    expected = module.state_dict()
    trace = Unwrapping()
    state_dict = unwrap_state_dict(state_dict, expected, trace)
    if trace.unwrapped:
        _log.info("checkpoint for %s: unwrapped %s", type(module).__name__, ", ".join(trace.unwrapped))
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    bad_missing = [k for k in missing if not (allow_missing and k.startswith(allow_missing))]
    bad_unexpected = [k for k in unexpected if not (allow_unexpected and k.startswith(allow_unexpected))]
    loaded = [k for k in expected if k in state_dict]
    report = KeyReport(loaded=loaded, missing=missing, unexpected=unexpected, shape_mismatches=shapes,
                       unwrapped=list(trace.unwrapped))
    if bad_missing or bad_unexpected or shapes or not loaded:
        lines = [f"state dict does not fit {type(module).__name__} ({len(loaded)} of {len(expected)} model keys "
                 f"present): wrong architecture or converter?"]
        if trace.unwrapped:
            lines[0] += f" (after unwrapping {', '.join(trace.unwrapped)})"
        if bad_missing:
            lines.append(_listing("missing from the checkpoint", bad_missing))
        if bad_unexpected:
            lines.append(_listing("unexpected in the checkpoint", bad_unexpected))
        if shapes:
            lines.append(_listing("shape mismatches", shapes))
        raise CheckpointMismatch("\n".join(lines), report)
    module.load_state_dict({k: state_dict[k] for k in loaded}, strict=False)
    return report


# --------------------------------------------------------------------------------------------- the official table


@dataclass(frozen=True)
class OfficialWeights:
    """One published checkpoint: where it is, what is in the file, how to verify and convert it, how to normalise
    its inputs. ``name`` is the one name recipes (``checkpoint:NAME``), ``--checkpoint NAME=PATH`` and this table
    share."""

    name: str
    encoder: str                      # histokit / timm encoder name to build before loading
    source: str                       # repository and path (or page) it comes from
    converter: str                    # "dino_vit" | "esvit_swin" | "simclr_resnet"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: Optional[int] = None        # bytes, as published (LFS pointer)
    sha256: Optional[str] = None
    pooling: Optional[str] = None     # encoder pooling the paper uses
    layout: str = ""                  # what the file holds (official_layouts writes exactly this)


_DINO_LAYOUT = ("torch.save of main_dino.py's dict {student, teacher, optimizer, epoch, args (argparse.Namespace), "
                "dino_loss, fp16_scaler}: teacher = MultiCropWrapper state dict, backbone.* (DINO ViT-S/16, 224 px "
                "pos_embed (1, 197, 384)) + head.* (DINOHead, 65,536-way); student the same under DDP's module.; "
                "AdamW state for the student")

OFFICIAL_WEIGHTS: dict[str, OfficialWeights] = {w.name: w for w in (
    OfficialWeights(
        "chen2022_dino_vits16_tcga_brca", "vit_small_patch16_224",
        "github.com/Richarizardd/Self-Supervised-ViT-Path ckpts/vits_tcga_brca_dino.pt (Git LFS)",
        "dino_vit", HALF, HALF, 704_238_867, "d04e3718649a13a5a49ae5c274ae3aefb9deb229ef5194106bb8ecbfd4f00c61", "cls",
        _DINO_LAYOUT),
    OfficialWeights(
        "chen2022_simclr_resnet50_tcga_brca", "resnet50",
        "github.com/Richarizardd/Self-Supervised-ViT-Path ckpts/resnet50_tcga_brca_simclr.pt (Git LFS)",
        "simclr_resnet", HALF, HALF, 94_351_453, "88cf6fad519b1bac02e145578a1bae3ba89631ed580ddf65a780ef20de0d98cd",
        layout="bare state dict (torch.save(model.state_dict())) of pl_bolts' torchvision-named ResNet-50 with "
               "fc = Identity: 318 tensors (BN buffers included), no fc.*; patch_extraction_utils.py loads it with "
               "load_state_dict(torch.load(path), strict=False)"),
    OfficialWeights(
        "hipt_vit256_small_dino", "vit_small_patch16_224",
        "github.com/mahmoodlab/HIPT HIPT_4K/Checkpoints/vit256_small_dino.pth (Git LFS)",
        "dino_vit", HALF, HALF, 704_238_867, "6960cd5a8657dc8bb214671aa0c6dbd3f5b698e84386884955836487ddc89e24", "cls",
        _DINO_LAYOUT),
    OfficialWeights(  # no published size / sha256; the README's Azure links are reported dead (esvit issue #29)
        "esvit_swin_tiny", "swin_tiny_patch4_window7_224",
        "github.com/microsoft/esvit README, 'EsViT (Swin-T, W=7)' view + region 'full ckpt': "
        "chunyleu.blob.core.windows.net/output/ckpts/esvit/swin/swin_tiny/bl_lr0.0005_gpu16_bs32_dense_multicrop_"
        "epoch300/checkpoint_best.pth (Azure blob + the README's SAS token)",
        "esvit_swin", IMAGENET_MEAN, IMAGENET_STD,
        layout="torch.save of main_esvit.py's dict {student, teacher, optimizer, epoch, args, dino_loss, "
               "fp16_scaler}: teacher = the original-code SwinTransformer state dict (layers.i.downsample at the end "
               "of stage i, persistent relative_position_index buffers) with DINOHead's head.* and head_dense.* on "
               "it, no wrapper prefix; student the same under DDP's module.; dino_loss {center, center_grid}"),
    OfficialWeights(  # produced locally by the conversion: no published size / sha256
        "simclr_v1_resnet50_1x_imagenet", "resnet50",
        "SimCLR v1 ResNet-50 (1x), ImageNet (Chen et al. 2020): github.com/google-research/simclr README 'Pre-trained "
        "models for SimCLRv1', storage.cloud.google.com/simclr-gcs/checkpoints/ResNet50_1x.zip (TF), converted with "
        "github.com/tonylins/simclr-converter: python convert.py ResNet50_1x/model.ckpt-225206 resnet50-1x.pth",
        "simclr_resnet", ZERO, ONE,
        layout="simclr-converter's torch.save({'state_dict': resnet50x1().state_dict()}): torchvision key names "
               "(downsample registered first in each Bottleneck), BN buffers, fc 2048->1000 (the TF supervised "
               "linear head); the TF models take [0, 1] inputs without mean/std normalisation"),
)}

_CONVERTERS: dict[str, Callable[[Mapping, nn.Module, Unwrapping], dict]] = {
    "dino_vit": lambda ckpt, enc, trace: dino_teacher_to_timm_vit(ckpt, enc, trace=trace),
    "esvit_swin": lambda ckpt, enc, trace: esvit_teacher_to_timm_swin(ckpt, enc, trace=trace),
    "simclr_resnet": lambda ckpt, enc, trace: simclr_resnet_to_timm(ckpt, trace=trace),
}


def official_weights(name: str) -> OfficialWeights:
    """The table entry for ``name`` (encoder to build, normalisation mean/std, size, sha256)."""
    if name not in OFFICIAL_WEIGHTS:
        raise ValueError(f"unknown official weights {name!r}; known: {sorted(OFFICIAL_WEIGHTS)}")
    return OFFICIAL_WEIGHTS[name]


def mock_sidecar_path(path: str | Path) -> Path:
    """``x.MOCK.pth`` -> ``x.MOCK.json``: the sidecar recording a mock file's name, seed, size and sha256."""
    path = Path(path)
    return path.with_name(path.name[: -len(".pth")] + ".json")


def is_mock_checkpoint(path: str | Path) -> bool:
    """A mock file written by :func:`histokit.models.official_layouts.write_official_mock` (named ``*.MOCK.pth``)."""
    return Path(path).name.endswith(MOCK_SUFFIX)


def _mock_pins(path: Path) -> tuple[str, int]:
    sidecar = mock_sidecar_path(path)
    try:
        meta = json.loads(sidecar.read_text())
        return str(meta["sha256"]), int(meta["size"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointIntegrityError(
            f"{path} is named as a mock checkpoint (*{MOCK_SUFFIX}) but its sidecar {sidecar} is missing or "
            f"unreadable ({type(err).__name__}): write mocks with histokit.models.official_layouts."
            f"write_official_mock, which records their sha256 there") from err


def load_official(name: str, path: str | Path, encoder: nn.Module, sha256: Optional[str] = None, *,
                  verify: bool = True, trust_pickle: bool = False) -> KeyReport:
    """Verify, read, convert and load the official checkpoint ``name`` from ``path`` into ``encoder``.

    With ``verify`` (default) the file must match the table's published size and sha256; ``sha256`` given explicitly
    replaces the table's pin (for a re-saved or otherwise different copy: the size check is then skipped). A mock
    file (``*.MOCK.pth``, see :mod:`histokit.models.official_layouts`) is verified against its sidecar's size and
    sha256 instead, and the report says ``mock=True``. ``encoder`` must be built as ``official_weights(name).encoder``;
    its inputs must be normalised with the entry's ``mean`` / ``std``. The report lists the loaded / missing /
    unexpected keys and which wrappers (nesting keys, prefixes) were unwrapped and which heads dropped.
    """
    entry = official_weights(name)
    mock = is_mock_checkpoint(path)
    if sha256 is not None or not verify:
        sha, size = sha256, None
    elif mock:
        check_checkpoint_file(path, "an interrupted mock write; write it again")
        sha, size = _mock_pins(Path(path))
    else:
        sha, size = entry.sha256, entry.size
    ckpt = read_checkpoint(path, sha256=sha, size=size, trust_pickle=trust_pickle)
    trace = Unwrapping()
    state_dict = _CONVERTERS[entry.converter](ckpt, encoder, trace)
    report = load_into(encoder, state_dict)  # the converter's output: load_into finds nothing more to unwrap
    report.unwrapped, report.dropped, report.mock = trace.unwrapped + report.unwrapped, trace.dropped, mock
    return report


# --------------------------------------------------------------------------------------------- --checkpoint arguments


def recipe_checkpoint_names(recipe) -> set[str]:
    """Every ``checkpoint:NAME`` a recipe's models and training runs (``init``) can load."""
    from ..papers.recipe import weight_sources

    specs = [m.weights for m in recipe.models] + [t.init for t in (*recipe.pretrain, *recipe.finetune)]
    return {value for spec in specs for kind, value in weight_sources(spec, "") if kind == "checkpoint"}


def _describe(name: str) -> str:
    entry = OFFICIAL_WEIGHTS.get(name)
    return f"{name} ({entry.encoder}; {entry.source.split(' (')[0]})" if entry else f"{name} (not in the registry)"


def _loaded_elsewhere(name: str) -> str:
    """Where a known checkpoint name is used, e.g. "(esvit/full loads it)": the smoke profiles of some papers train
    smaller variants that official weights do not fit."""
    from ..papers import get_recipe, list_papers

    users = [f"{paper}/{profile}" for paper in list_papers() for profile in ("smoke", "full")
             if name in recipe_checkpoint_names(get_recipe(paper, profile))]
    return f" ({', '.join(users)} loads it: choose that profile with --profile)" if users else ""


def validate_checkpoint_args(checkpoints: Mapping[str, str | os.PathLike], recipes: Iterable) -> None:
    """Check ``--checkpoint NAME=PATH`` arguments against the selected recipes before any work starts.

    Every NAME must be one a selected recipe loads (:func:`recipe_checkpoint_names`; a name no recipe asks for
    would be silently ignored) and in :data:`OFFICIAL_WEIGHTS`; every PATH must be a readable, non-empty file that
    is not a Git-LFS pointer or an HTML page. All problems are reported together in one
    :class:`CheckpointArgumentError` (a ``ValueError``), naming each argument, its path, and the names the selected
    recipes accept. The checksum is checked later, when the weights are loaded.
    """
    recipes = list(recipes)
    accepted: dict[str, list[str]] = {}
    for recipe in recipes:
        for name in sorted(recipe_checkpoint_names(recipe)):
            accepted.setdefault(name, []).append(f"{recipe.paper}/{recipe.profile}")
    selected = ", ".join(f"{r.paper}/{r.profile}" for r in recipes) or "none"
    problems = []
    for name, path in checkpoints.items():
        if name not in accepted:
            close = [n for n in accepted if name and (name in n or n in name)]
            hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
            where = (" — it names known official weights, but no selected recipe loads them" +
                     _loaded_elsewhere(name) if name in OFFICIAL_WEIGHTS else "")
            problems.append(f"--checkpoint {name}={path}: unknown checkpoint name {name!r}{hint}{where}")
            continue
        if name not in OFFICIAL_WEIGHTS:
            problems.append(f"--checkpoint {name}={path}: recipe(s) {', '.join(accepted[name])} ask for {name!r}, "
                            f"which the official-weights registry lacks (a kit bug: please report it)")
            continue
        try:
            check_checkpoint_file(path, "an interrupted copy or download; fetch it again")
        except FileNotFoundError:
            problems.append(f"--checkpoint {name}={path}: the file {path} does not exist")
        except CheckpointError as err:
            problems.append(f"--checkpoint {name}={path}: {err}")
        except OSError as err:  # no read permission, an I/O error
            problems.append(f"--checkpoint {name}={path}: the file {path} cannot be read "
                            f"({err.strerror or type(err).__name__})")
    if problems:
        names = [_describe(n) for n in sorted(accepted)]
        accepts = ("the selected recipes take no --checkpoint" if not names else
                   "the selected recipes accept --checkpoint NAME=PATH for:\n" + "\n".join(f"  {n}" for n in names))
        raise CheckpointArgumentError(f"invalid --checkpoint argument(s) for {selected}:\n"
                                      + "\n".join(f"  {p}" for p in problems) + "\n" + accepts)
