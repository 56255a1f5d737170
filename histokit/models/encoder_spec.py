"""Bring your own encoder: one naming scheme and one loader for a model the kit did not train.

Five schemes (``histokit evaluate --encoder SPEC``, ``histokit benchmark --encoder SPEC``):

* ``timm:<name>`` — ``timm.create_model(name, pretrained=True)``, e.g. ``timm:vit_small_patch16_224.dino``; weights
  from the local Hugging Face cache first (no request leaves the machine), else the hub.
* ``hf-hub:<org>/<repo>`` — a model on the Hugging Face hub as timm loads it (``config.json`` + weights in timm's
  layout: UNI, Virchow 2, H-optimus, Prov-GigaPath, Phikon ...), the local cache first, else the hub.
* ``open_clip:hf-hub:<org>/<repo>`` or ``open_clip:<model>@<pretrained tag>`` — the image tower of an open_clip
  model (``open_clip.create_model_from_pretrained``: ``open_clip_config.json`` + weights on the hub, or a tag of
  open_clip's registry), e.g. a CONCH-style vision-language model; the embedding is ``encode_image`` (the projected
  image embedding), inputs resized to the tower's own size, normalised as its preprocess says.
* ``local:/path/x.pth@<timm architecture>`` — a checkpoint file through the kit's safe path
  (:func:`histokit.models.checkpoints.read_checkpoint`: ``weights_only=True``, Git-LFS pointers and HTML pages
  refused; ``.safetensors`` read with safetensors) loaded by :func:`~histokit.models.checkpoints.load_into`, which
  unwraps the common wrappers and refuses a state dict that does not fit the architecture, listing the keys.
* ``module:function`` (``package.module:function``) — a Python entry point returning an ``nn.Module`` or
  ``(nn.Module, transform or None)``; the module's ``forward`` must give one ``(B, D)`` embedding per image.

Every resolved encoder records its pooling, native input size and input normalisation (timm's ``pretrained_cfg``
through ``timm.data.resolve_data_config`` where there is one; a transform's ``Normalize`` for an entry point) and
its weights in words (``source``, the tables' ``weights used`` column). Weights a hub cannot give (gated, offline
and not cached) are refused with a message saying how to provide them by hand; only ``timm:`` names in a lenient
(smoke) run fall back to a random initialisation, and then ``source`` starts with "random init" and says why.
"""
from __future__ import annotations

import importlib
import inspect
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .base import Encoder, TokenOutput

SCHEMES = ("timm", "hf-hub", "open_clip", "local", "module")
# Classifier heads a local checkpoint may carry beside the trunk (the embedding is the pre-logits features).
HEAD_PREFIXES = ("head", "fc.", "classifier.", "head_dist.", "last_linear.")
_ENTRY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class EncoderSpecError(ValueError):
    """A spec that cannot be parsed or resolved; the message names the spec and what to do."""


@dataclass(frozen=True)
class EncoderSpec:
    text: str           # as the user typed it
    scheme: str         # timm | hf-hub | open_clip | local | module
    target: str         # timm name, org/repo, file path, module:function; open_clip: hf-hub:org/repo or model name
    arch: str = ""      # local: the timm architecture after @; open_clip: the pretrained tag after @

    @property
    def label(self) -> str:
        """The row label in a table: the spec itself, a local file by its name."""
        if self.scheme == "local":
            return f"local:{Path(self.target).name}@{self.arch}"
        return self.text


@dataclass
class ResolvedEncoder:
    spec: EncoderSpec
    encoder: Encoder
    source: str                      # the weights as used, in words
    pooling: str
    input_size: Optional[int]        # the model's native input size (pretrained_cfg), None if unknown
    mean: tuple
    std: tuple
    normalisation_from: str          # where mean / std come from
    identity: dict = field(default_factory=dict)

    def describe(self) -> str:
        size = f"{self.input_size} px native" if self.input_size else "input size not recorded"
        return (f"{self.spec.label}: pooling {self.pooling}; {size}; mean {tuple(round(v, 4) for v in self.mean)}, "
                f"std {tuple(round(v, 4) for v in self.std)} ({self.normalisation_from}); weights: {self.source}")


def parse_encoder_spec(text: str) -> EncoderSpec:
    """``timm:NAME`` | ``hf-hub:ORG/REPO`` | ``open_clip:hf-hub:ORG/REPO`` | ``open_clip:MODEL@TAG`` |
    ``local:PATH@ARCH`` | ``package.module:function``."""
    text = str(text).strip()
    scheme, sep, rest = text.partition(":")
    if sep and scheme == "open_clip":
        if rest.startswith("hf-hub:"):
            if rest[len("hf-hub:"):].count("/") != 1:
                raise EncoderSpecError(f"encoder spec {text!r}: open_clip:hf-hub needs ORG/REPO, e.g. "
                                       "open_clip:hf-hub:timm/ViT-B-16-SigLIP")
            return EncoderSpec(text, "open_clip", rest)
        model, at, tag = rest.rpartition("@")
        if not at or not model or not tag:
            raise EncoderSpecError(f"encoder spec {text!r}: open_clip needs hf-hub:ORG/REPO or MODEL@PRETRAINED_TAG, "
                                   "e.g. open_clip:ViT-B-16@laion2b_s34b_b88k (open_clip.list_pretrained())")
        return EncoderSpec(text, "open_clip", model, tag)
    if sep and scheme in ("timm", "hf-hub", "local"):
        if not rest:
            raise EncoderSpecError(f"encoder spec {text!r}: nothing after {scheme}:")
        if scheme == "hf-hub" and rest.count("/") != 1:
            raise EncoderSpecError(f"encoder spec {text!r}: hf-hub needs ORG/REPO, e.g. hf-hub:MahmoodLab/UNI")
        if scheme == "local":
            path, at, arch = rest.rpartition("@")
            if not at or not path or not arch:
                raise EncoderSpecError(f"encoder spec {text!r}: a local checkpoint needs its timm architecture, "
                                       "local:/path/weights.pth@vit_small_patch16_224")
            return EncoderSpec(text, "local", str(Path(path).expanduser()), arch)
        return EncoderSpec(text, scheme, rest)
    if _ENTRY.match(text):
        return EncoderSpec(text, "module", text)
    raise EncoderSpecError(f"encoder spec {text!r} is none of timm:NAME, hf-hub:ORG/REPO, open_clip:hf-hub:ORG/REPO, "
                           "open_clip:MODEL@TAG, local:PATH@ARCH or package.module:function")


# --------------------------------------------------------------------------------------------- the wrappers


class TimmEncoder(Encoder):
    """Any timm model (``num_classes=0``) as a kit Encoder, pooled as the model itself pools (``forward_head`` with
    ``pre_logits=True``: the [CLS] token of a ViT with ``global_pool='token'``, the average of a CNN ...)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.embed_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)

    def forward_tokens(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> TokenOutput:
        if mask is not None:
            raise NotImplementedError("a user encoder does not support token masking")
        feats = self.model.forward_features(x)
        return TokenOutput(pooled=self.model.forward_head(feats, pre_logits=True), patch_tokens=None,
                           cls_tokens=None)


class ModuleEncoder(Encoder):
    """An entry point's ``nn.Module`` whose ``forward`` gives ``(B, D)``."""

    def __init__(self, module: nn.Module, embed_dim: int):
        super().__init__()
        self.model = module
        self.embed_dim = int(embed_dim)

    def forward_tokens(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> TokenOutput:
        if mask is not None:
            raise NotImplementedError("a user encoder does not support token masking")
        return TokenOutput(pooled=self.model(x), patch_tokens=None, cls_tokens=None)


class OpenClipImageEncoder(Encoder):
    """The image tower of an open_clip model: ``encode_image`` (the projected image embedding, not L2-normalised
    here: the protocols normalise where they say). A ViT tower's position embedding fixes its input size, so inputs
    of another size (a protocol's smaller tiles) are resized to it first (bilinear, antialiased)."""

    def __init__(self, model: nn.Module, input_size: Optional[int]):
        super().__init__()
        self.model = model
        self.input_size = input_size
        self.embed_dim = int(getattr(model.visual, "output_dim", 0) or getattr(model, "embed_dim", 0))

    def forward_tokens(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> TokenOutput:
        if mask is not None:
            raise NotImplementedError("a user encoder does not support token masking")
        if self.input_size and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = nn.functional.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                                          align_corners=False, antialias=True)
        return TokenOutput(pooled=self.model.encode_image(x), patch_tokens=None, cls_tokens=None)


def timm_pooling(model: nn.Module) -> str:
    pool = getattr(model, "global_pool", None)
    pool = getattr(pool, "pool_type", pool)  # CNNs: a SelectAdaptivePool2d module
    if isinstance(pool, str) and pool:
        return {"token": "cls token (timm global_pool='token')"}.get(pool, f"timm global_pool={pool!r}")
    return "the model's own forward_head (pre-logits)"


def timm_data_config(model: nn.Module) -> tuple[Optional[int], tuple, tuple, str]:
    """(native input size, mean, std, where from): timm's data config of the model's pretrained_cfg."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    size = cfg.get("input_size")
    has_cfg = bool(getattr(model, "pretrained_cfg", None))
    return (int(size[-1]) if size else None, tuple(float(v) for v in cfg["mean"]),
            tuple(float(v) for v in cfg["std"]), "timm pretrained_cfg" if has_cfg else "timm defaults")


def _create_timm(name: str, pretrained: bool, **kwargs) -> nn.Module:
    import timm

    try:  # a ViT takes any input size (the protocol's) with dynamic_img_size; other families have no such argument
        return timm.create_model(name, pretrained=pretrained, num_classes=0, dynamic_img_size=True, **kwargs)
    except TypeError:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)


# --------------------------------------------------------------------------------------------- the hub


def _hub_repo(spec: EncoderSpec) -> Optional[str]:
    """The hub repository the weights of a timm / hf-hub spec live in (None: timm knows no hub id for it)."""
    if spec.scheme == "hf-hub":
        return spec.target
    if spec.scheme == "open_clip":
        if spec.target.startswith("hf-hub:"):
            return spec.target[len("hf-hub:"):]
        try:
            import open_clip

            cfg = open_clip.get_pretrained_cfg(spec.target, spec.arch)
        except Exception:
            return None
        return (cfg or {}).get("hf_hub", "").rstrip("/") or None
    try:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(spec.target)
    except Exception:
        return None
    return getattr(cfg, "hf_hub_id", None) if cfg is not None else None


def manual_weights_help(spec: EncoderSpec) -> str:
    """How to provide a hub model's weights by hand (gated, or this machine offline)."""
    from .hub import hub_cache_dir

    repo = _hub_repo(spec) or "<org>/<repo>"
    folder = "models--" + repo.replace("/", "--")
    return (f"To provide the weights by hand: on a machine with access, accept the model's terms at "
            f"https://huggingface.co/{repo} if it is gated, run `huggingface-cli login`, then "
            f"`huggingface-cli download {repo} --cache-dir DIR` and copy DIR/{folder} into this machine's Hugging "
            f"Face cache {hub_cache_dir()} (or point HF_HUB_CACHE at DIR); or save the weights to a file and pass "
            f"--encoder local:/path/to/weights.pth@<timm architecture> instead.")


def _hub_failure(spec: EncoderSpec, exc: BaseException) -> str:
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, OfflineModeIsEnabled

    chain, e = [], exc
    while e is not None and len(chain) < 6:
        chain.append(e)
        e = e.__cause__ or e.__context__
    if any(isinstance(e, GatedRepoError) for e in chain):
        why = "the repository is gated: its terms must be accepted and the request authenticated (HF_TOKEN)"
    elif any(isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)) for e in chain) or \
            os.environ.get("HF_HUB_OFFLINE") == "1":
        why = "the hub is offline here (HF_HUB_OFFLINE, or no network) and the weights are not in the local cache"
    else:
        why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
    return f"encoder {spec.text}: the pretrained weights could not be loaded — {why}. {manual_weights_help(spec)}"


def hub_weights_cached(spec: EncoderSpec) -> bool:
    """Whether the weights of a timm / hf-hub spec are in the local Hugging Face cache (no request)."""
    from .hub import hub_cache_dir

    repo = _hub_repo(spec)
    if not repo:
        return False
    folder = Path(hub_cache_dir()) / ("models--" + repo.replace("/", "--")) / "snapshots"
    names = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin", "open_clip_model.safetensors")
    return folder.is_dir() and any((snap / n).exists() for snap in folder.iterdir() for n in names)


def _resolve_hub(spec: EncoderSpec, lenient: bool) -> tuple[nn.Module, str]:
    from .hub import hub_reachable, hub_session

    name = spec.target if spec.scheme == "timm" else f"hf-hub:{spec.target}"
    try:
        with hub_session(offline=True):
            return _create_timm(name, True), f"pretrained weights from the local Hugging Face cache ({spec.text})"
    except Exception as exc:  # not cached, gated, no such model, no pretrained weights for it
        first = exc
    text = str(first)
    if "Unknown model" in text:
        raise EncoderSpecError(f"encoder {spec.text}: timm knows no model {spec.target!r} ({text})") from first
    if "No pretrained weights exist" in text or "pretrained weights" in text.lower() and "no " in text.lower():
        raise EncoderSpecError(f"encoder {spec.text}: timm has no pretrained weights for {spec.target!r} ({text}); "
                               "name a pretrained tag (timm.list_pretrained()) or pass local:PATH@ARCH") from first
    if not hub_reachable():
        if lenient and spec.scheme == "timm":
            return (_create_timm(name, False),
                    f"random init: {spec.text} weights unreachable (hub offline, not in the local cache)")
        raise EncoderSpecError(_hub_failure(spec, first)) from first
    try:
        with hub_session(offline=False):
            return _create_timm(name, True), f"pretrained weights downloaded from the Hugging Face hub ({spec.text})"
    except Exception as exc:
        if lenient and spec.scheme == "timm" and not _is_gated(exc):
            return _create_timm(name, False), f"random init: {spec.text} weights unreachable ({type(exc).__name__})"
        raise EncoderSpecError(_hub_failure(spec, exc)) from exc


def _is_gated(exc: BaseException) -> bool:
    from huggingface_hub.errors import GatedRepoError

    while exc is not None:
        if isinstance(exc, GatedRepoError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _create_open_clip(spec: EncoderSpec):
    import open_clip

    if spec.target.startswith("hf-hub:"):
        return open_clip.create_model_from_pretrained(spec.target)
    return open_clip.create_model_from_pretrained(spec.target, pretrained=spec.arch)


def _resolve_open_clip(spec: EncoderSpec) -> tuple[Encoder, str, Any]:
    """(the image tower as an Encoder, its weights in words, open_clip's preprocess transform); no random fallback:
    an open_clip model is named for its weights."""
    from .hub import hub_reachable, hub_session

    try:
        import open_clip  # noqa: F401
    except ImportError as exc:
        raise EncoderSpecError(f"encoder {spec.text}: open_clip is not installed "
                               "(pip install open-clip-torch)") from exc
    try:
        with hub_session(offline=True):
            model, preprocess = _create_open_clip(spec)
        source = f"pretrained weights from the local Hugging Face cache ({spec.text})"
    except Exception as exc:
        first = exc
        if isinstance(first, RuntimeError) and "Model config" in str(first) and "not found" in str(first):
            raise EncoderSpecError(f"encoder {spec.text}: open_clip knows no model {spec.target!r} "
                                   "(open_clip.list_models())") from first
        if not hub_reachable():
            raise EncoderSpecError(_hub_failure(spec, first)) from first
        try:
            with hub_session(offline=False):
                model, preprocess = _create_open_clip(spec)
            source = f"pretrained weights downloaded from the Hugging Face hub ({spec.text})"
        except Exception as exc2:
            raise EncoderSpecError(_hub_failure(spec, exc2)) from exc2
    size = getattr(model.visual, "image_size", None)
    size = int(size[-1] if isinstance(size, (tuple, list)) else size) if size else None
    return OpenClipImageEncoder(model, size), source, preprocess


# --------------------------------------------------------------------------------------------- local files


def read_local_weights(path: Path) -> dict:
    """A checkpoint file through the kit's safe path (``weights_only=True``, LFS / HTML refused); safetensors too."""
    from .checkpoints import check_checkpoint_file, read_checkpoint

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        check_checkpoint_file(path, "an interrupted copy or download; fetch it again")
        return dict(load_file(str(path)))
    return read_checkpoint(path)


def _resolve_local(spec: EncoderSpec) -> tuple[nn.Module, str, dict]:
    import timm

    from ..io import sha256_file
    from .checkpoints import ENCODER_EXTRA_KEYS, CheckpointMismatch, load_into

    path = Path(spec.target)
    if spec.arch not in timm.list_models() and spec.arch.split(".")[0] not in timm.list_models():
        raise EncoderSpecError(f"encoder {spec.text}: {spec.arch!r} after @ is not a timm architecture "
                               "(timm.list_models() lists them)")
    model = _create_timm(spec.arch, False)
    state = read_local_weights(path)
    trained_size = checkpoint_image_size(state, model)
    if trained_size:  # a ViT trained at another size (the kit's 64 px smoke runs): built at that size, no resampling
        model = _create_timm(spec.arch, False, img_size=trained_size)
    try:
        report = load_into(TimmEncoder(model), state, allow_unexpected=HEAD_PREFIXES + ENCODER_EXTRA_KEYS)
    except CheckpointMismatch as exc:
        raise EncoderSpecError(f"encoder {spec.text}: the checkpoint {path} does not fit the architecture "
                               f"{spec.arch!r} — is the name after @ the one it was trained as?\n{exc}") from exc
    digest = sha256_file(path)
    extra = [k for k in report.unexpected]
    words = f"local checkpoint {path.name} (sha256 {digest[:12]}, {len(report.loaded)} tensors"
    words += f", {len(extra)} keys beside the trunk left out: {', '.join(sorted({k.split('.')[0] for k in extra}))})" \
        if extra else ")"
    if report.unwrapped:
        words = words[:-1] + f"; unwrapped {', '.join(report.unwrapped)})"
    if trained_size:
        words = words[:-1] + f"; its position embedding is for {trained_size} px, the model is built at that size)"
    return model, words, {"sha256": digest, **({"input_size": trained_size} if trained_size else {})}


def checkpoint_image_size(state: dict, model: nn.Module) -> Optional[int]:
    """The input size a ViT checkpoint's absolute position embedding was trained for, when it is not the size
    ``model`` was built at (None otherwise, or for a model without one): (grid x patch) px of a square grid."""
    from .checkpoints import unwrap_state_dict

    expected = model.state_dict()
    if "pos_embed" not in expected or not hasattr(model, "patch_embed"):
        return None
    found = unwrap_state_dict(state, expected).get("pos_embed")
    if found is None or tuple(found.shape) == tuple(expected["pos_embed"].shape):
        return None
    tokens = int(found.shape[1]) - (0 if getattr(model, "no_embed_class", False) else
                                    int(getattr(model, "num_prefix_tokens", 1)))
    grid = int(round(tokens ** 0.5))
    if grid * grid != tokens:
        return None  # not a square grid: load_into's shape check reports it
    return grid * int(model.patch_embed.patch_size[0])


# --------------------------------------------------------------------------------------------- entry points


def _transform_normalisation(transform) -> Optional[tuple[tuple, tuple, Optional[int]]]:
    """(mean, std, size) read off a torchvision transform (a Compose's Normalize and Resize / CenterCrop)."""
    steps = list(getattr(transform, "transforms", [transform]))
    mean = std = size = None
    for step in steps:
        if hasattr(step, "mean") and hasattr(step, "std"):
            mean, std = tuple(float(v) for v in step.mean), tuple(float(v) for v in step.std)
        got = getattr(step, "size", None)
        if got is not None:
            size = int(got if isinstance(got, int) else list(got)[-1])
    return (mean, std, size) if mean is not None else None


def _resolve_module(spec: EncoderSpec, image_size: int) -> tuple[Encoder, dict]:
    module_name, _, function = spec.target.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as exc:
        raise EncoderSpecError(f"encoder {spec.text}: cannot import {function} from {module_name} ({exc}); the "
                               "module must be importable (on PYTHONPATH or installed)") from exc
    kwargs = {"image_size": image_size} if "image_size" in inspect.signature(fn).parameters else {}
    out = fn(**kwargs)
    transform = None
    if isinstance(out, tuple):
        if len(out) != 2:
            raise EncoderSpecError(f"encoder {spec.text}: the entry point returned a {len(out)}-tuple; expected an "
                                   "nn.Module or (nn.Module, transform or None)")
        out, transform = out
    if not isinstance(out, nn.Module):
        raise EncoderSpecError(f"encoder {spec.text}: the entry point returned {type(out).__name__}, not an "
                               "nn.Module")
    info: dict = {"transform": transform}
    if isinstance(out, Encoder):
        return out, info
    if getattr(out, "pretrained_cfg", None) and hasattr(out, "forward_head"):
        return TimmEncoder(out), info
    out.eval()
    with torch.no_grad():
        probe = out(torch.zeros(1, 3, image_size, image_size))
    if not torch.is_tensor(probe) or probe.ndim != 2:
        shape = tuple(probe.shape) if torch.is_tensor(probe) else type(probe).__name__
        raise EncoderSpecError(f"encoder {spec.text}: forward gave {shape}; an entry point's module must return one "
                               "(B, D) embedding per image (pool inside it, or return a histokit Encoder)")
    return ModuleEncoder(out, probe.shape[1]), info


# --------------------------------------------------------------------------------------------- resolving


def encoder_identity(text: str) -> dict:
    """What decides the weights of a spec, without building it (feature sidecars, fingerprints): the spec, a local
    file's sha256, whether hub weights are in the local cache."""
    from ..io import sha256_file

    spec = parse_encoder_spec(text)
    out: dict = {"kind": "encoder", "spec": spec.text}
    if spec.scheme == "local" and Path(spec.target).is_file():
        out["sha256"] = sha256_file(Path(spec.target))
    elif spec.scheme in ("timm", "hf-hub", "open_clip"):
        out["cached"] = hub_weights_cached(spec)
    return out


def resolve_encoder(text: str, *, image_size: int = 224, lenient: bool = False) -> ResolvedEncoder:
    """Build the encoder a spec names, with its weights; ``lenient`` (the smoke profile) lets a ``timm:`` name whose
    weights are unreachable stand as a random initialisation, said so in ``source``."""
    spec = parse_encoder_spec(text)
    identity = encoder_identity(text)
    if spec.scheme in ("timm", "hf-hub"):
        model, source = _resolve_hub(spec, lenient)
        encoder: Encoder = TimmEncoder(model)
    elif spec.scheme == "local":
        model, source, extra = _resolve_local(spec)
        trained_size = extra.pop("input_size", None)
        identity.update(extra)
        encoder = TimmEncoder(model)
        if trained_size:
            _, mean, std, where = timm_data_config(model)
            return ResolvedEncoder(spec, encoder.eval(), source, timm_pooling(model), trained_size, mean, std, where,
                                   identity)
    elif spec.scheme == "open_clip":
        encoder, source, preprocess = _resolve_open_clip(spec)
        norm = _transform_normalisation(preprocess)
        if norm is None:
            raise EncoderSpecError(f"encoder {spec.text}: open_clip's preprocess has no Normalize step to read the "
                                   "input normalisation from")
        mean, std, _ = norm
        return ResolvedEncoder(spec, encoder.eval(), source, "open_clip encode_image (projected image embedding)",
                               encoder.input_size, mean, std, "open_clip preprocess (Normalize)", identity)
    else:
        encoder, info = _resolve_module(spec, image_size)
        source = f"entry point {spec.target}"
        transform = info.get("transform")
        if not isinstance(encoder, TimmEncoder):
            norm = _transform_normalisation(transform) if transform is not None else None
            from ..papers.recipe import IMAGENET_MEAN, IMAGENET_STD

            mean, std, size = norm if norm else (IMAGENET_MEAN, IMAGENET_STD, None)
            where = "the entry point's transform (Normalize)" if norm else "ImageNet statistics (no transform given)"
            return ResolvedEncoder(spec, encoder.eval(), source, "the module's own forward", size, tuple(mean),
                                   tuple(std), where, identity)
    size, mean, std, where = timm_data_config(encoder.model)
    return ResolvedEncoder(spec, encoder.eval(), source, timm_pooling(encoder.model), size, mean, std, where,
                           identity)
