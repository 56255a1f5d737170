"""Before any stage runs: are the checkpoints the user named real, and is every dataset and weight file the recipe
needs where it should be? ``histokit reproduce <paper|all> --profile full --check`` lists everything missing at once,
each with its manual steps, in seconds; a full run refuses to start until the list is empty.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from .papers.recipe import Recipe, weight_sources

MOCK_WEIGHTS_DIR = "weights"          # <data root>/weights/<name>.MOCK.pth, written by `histokit data mock all`
MOCK_SUFFIX = ".MOCK.pth"


class PreflightError(ValueError):
    """A request that cannot run as given: unknown checkpoint name, missing file, missing dataset or weights."""


@dataclass(frozen=True)
class Missing:
    what: str          # "dataset" | "weights"
    name: str
    needed_by: str     # recipe key / model / training run that needs it
    how: str           # the manual steps


def checkpoint_names(recipe: Recipe) -> dict[str, bool]:
    """Every ``checkpoint:NAME`` the recipe reads -> whether a fallback follows it (``checkpoint:x|train:y``)."""
    out: dict[str, bool] = {}
    specs = [(t.init, t.dataset) for t in recipe.pretrain + recipe.finetune]
    specs += [(m.weights, d.key) for m in recipe.models for d in recipe.datasets]
    for spec, dataset in specs:
        sources = weight_sources(spec, dataset)
        for i, (kind, value) in enumerate(sources):
            if kind == "checkpoint":
                out[value] = out.get(value, False) or i < len(sources) - 1
    return out


def validate_checkpoints(checkpoints: dict, recipes: Iterable[Recipe]) -> None:
    """Refuse, before any stage runs, a ``--checkpoint NAME=PATH`` whose NAME no selected recipe reads or whose PATH
    is not a usable file (:func:`histokit.models.checkpoints.validate_checkpoint_args`: every problem at once)."""
    from .models.checkpoints import CheckpointArgumentError, validate_checkpoint_args

    try:
        validate_checkpoint_args(checkpoints or {}, list(recipes))
    except CheckpointArgumentError as exc:
        raise PreflightError(str(exc)) from None


def mock_checkpoints(recipe: Recipe, data_root: Optional[str]) -> dict[str, str]:
    """Rehearsal only: the mock official-layout files that ``histokit data mock all`` wrote, for the checkpoints a
    recipe cannot run without (no fallback). Checkpoints with a fallback are left out so the fallback's training
    chain is what the rehearsal exercises."""
    from . import paths

    folder = Path(data_root or paths.DATA_ROOT) / MOCK_WEIGHTS_DIR
    out = {}
    for name, has_fallback in checkpoint_names(recipe).items():
        candidate = folder / f"{name}{MOCK_SUFFIX}"
        if not has_fallback and candidate.is_file():
            out[name] = str(candidate)
    return out


def _dataset_names(recipe: Recipe, checkpoints: Optional[dict] = None) -> list[tuple[str, str]]:
    """(manifest, recipe key) of every dataset the run reads: one that only a pretraining replaced by a given
    checkpoint reads is not needed (``Recipe.datasets_needed``)."""
    out = []
    for d in recipe.datasets_needed(checkpoints):
        out.append((d.dataset, d.key))
        if d.test_dataset:
            out.append((d.test_dataset, f"{d.key} (test set)"))
    return out


def _timm_cached(encoder: str) -> bool:
    """Whether timm's hub weights for ``encoder`` are in the local Hugging Face cache (no network is touched)."""
    try:
        import timm
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    from .models.backbones import hub_weights_name

    try:
        cfg = timm.models.get_pretrained_cfg(hub_weights_name(encoder))
    except Exception:  # not a timm name (a histokit wrapper): the encoder factory decides
        cfg = None
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        return False
    for filename in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(hub_id, filename)
        if isinstance(hit, str):
            return True
    return False


def find_missing(recipe: Recipe, data_root: Optional[str], checkpoints: dict, *, rehearse: bool = False) -> list[Missing]:
    """Every dataset and weight file the recipe needs that is not there (nothing is downloaded or read whole)."""
    from .data.datasets import load_dataset
    from .data.errors import DataError
    from .data.manifests import load_manifest

    missing: list[Missing] = []
    seen = set()
    for name, key in _dataset_names(recipe, checkpoints):
        if name in seen:
            continue
        seen.add(name)
        root = None if load_manifest(name).access == "bundled" else data_root
        try:
            load_dataset(name, root=root)
        except (DataError, FileNotFoundError, ValueError) as exc:
            missing.append(Missing("dataset", name, key, str(exc).strip()))
    given = dict(checkpoints or {})
    if rehearse:
        given = {**mock_checkpoints(recipe, data_root), **given}
    for name, has_fallback in checkpoint_names(recipe).items():
        if name in given or has_fallback:
            continue
        from .models.checkpoints import official_weights

        try:
            source = official_weights(name).source
        except ValueError:
            source = "no registry entry"
        missing.append(Missing("weights", name, recipe.paper,
                               f"pass --checkpoint {name}=PATH (official file: {source})"
                               + (f"; or write mock weights with `histokit data mock all --root {data_root}`"
                                  if rehearse else "")))
    if not rehearse:  # a rehearsal runs offline: timm weights it cannot fetch are replaced and footnoted
        timm_users = {(m.encoder, m.name) for m in recipe.models if any(k == "timm" for k, _ in weight_sources(m.weights))}
        timm_users |= {(t.encoder, t.name) for t in recipe.pretrain + recipe.finetune
                       if any(k == "timm" for k, _ in weight_sources(t.init, t.dataset))}
        from .models.hub import hub_reachable

        online = hub_reachable()
        from .models.backbones import hub_weights_name

        for encoder, user in sorted(timm_users):
            if not online and not _timm_cached(encoder):
                hub_name = hub_weights_name(encoder)   # resnet50_trunc: timm's resnet50.tv_in1k
                missing.append(Missing("weights", f"timm:{encoder}", user,
                                       "the Hugging Face hub is unreachable and the weights are not in its cache: "
                                       "run `python -c \"import timm; "
                                       f"timm.create_model('{hub_name}', pretrained=True)\"`"
                                       " on a machine with network and copy ~/.cache/huggingface here"))
    return missing


def format_missing(recipe: Recipe, missing: list[Missing]) -> str:
    head = f"{recipe.paper} / {recipe.profile}: {len(missing)} missing"
    lines = [head]
    for m in missing:
        lines.append(f"- {m.what} {m.name} (needed by {m.needed_by}):")
        lines += [f"    {line}" for line in m.how.splitlines()]
    return "\n".join(lines)


def check_run(recipe: Recipe, data_root: Optional[str], checkpoints: dict, *, rehearse: bool = False,
              raise_on_missing: bool = False) -> list[Missing]:
    missing = find_missing(recipe, data_root, checkpoints, rehearse=rehearse)
    if missing and raise_on_missing:
        raise PreflightError(format_missing(recipe, missing) + "\n(`histokit reproduce "
                             f"{recipe.paper} --profile {recipe.profile} --check` lists this without running)")
    return missing
