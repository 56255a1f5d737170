"""What several stages share: a recipe dataset with its splits, and an encoder with its weights resolved."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..data.datasets import PatchDataset
from ..models.backbones import create_encoder as _create_encoder
from ..models.base import Encoder
from ..papers.recipe import ModelSpec, weight_sources
from ..models import hub  # called through the module, so a test's patch of hub.hub_reachable is seen here
from .context import StageContext, slug  # noqa: F401  (slug: stages.common.slug for its callers)


def load_recipe_dataset(ctx: StageContext, key: str, *, test: bool = False) -> PatchDataset:
    """The dataset behind a recipe key (its official test set when ``test``) as stage 01 indexed it
    (``data/<key>/index.csv``, :mod:`histokit.stages.data_index`): protocol merges, a rehearsal's caps and stain
    normalization applied. No manifest is read here."""
    from .data_index import read_index

    return read_index(ctx, key).dataset(test)


def split_indices(ctx: StageContext, key: str, scheme: Optional[str] = None) -> Optional[dict]:
    """{split: indices} of a recipe dataset under ``scheme`` (the recipe's when None) as stage 01 made it, read from
    its index (:func:`histokit.stages.data_index.split_of_dataset` says how); None for the group-aware split of
    data without group ids. A dataset with a separate official test set has train / val only."""
    from .data_index import read_index

    return read_index(ctx, key).split(scheme)


def training_rows(ctx: StageContext, rows) -> np.ndarray:
    """The training split rows a training run reads: all of them, or in a rehearsal at most ``max_train_images``
    (a seeded random subset), which also caps the batch a full-size model sees on a CPU."""
    rows = np.asarray(rows, dtype=np.int64)
    cap = ctx.rehearse.get("max_train_images") if ctx.rehearsal else None
    if not cap or len(rows) <= int(cap):
        return rows
    rng = np.random.default_rng(ctx.seed)
    return np.sort(rng.permutation(rows)[: int(cap)])


@dataclass
class LoadedModel:
    encoder: Encoder
    source: str        # what the weights are, in words, for footnotes
    spec: ModelSpec
    mean: tuple = ()   # the input normalization these weights expect (weights_normalization); spec's if empty
    std: tuple = ()

    def __post_init__(self):
        self.mean = tuple(self.mean or self.spec.mean)
        self.std = tuple(self.std or self.spec.std)


def trained_weights_path(ctx: StageContext, run_name: str) -> Path:
    return ctx.path("train", run_name, "encoder.pt")


def trained_weights_identity(ctx: StageContext, run_name: str) -> dict:
    """What a training run's ``history.json`` (the sidecar of its ``encoder.pt``) records about the weights beside
    it: the run's name and the file's sha256. Written by stage 02 / 03 with the weights; checked by every reader
    (:func:`check_trained_weights`)."""
    from ..io import sha256_file

    return {"name": run_name, "encoder_sha256": sha256_file(trained_weights_path(ctx, run_name))}


def check_trained_weights(ctx: StageContext, run_name: str) -> dict:
    """Training run ``run_name``'s ``history.json``, checked to describe the ``encoder.pt`` beside it as this run's
    weights (a run's folder copied over another's, or weights replaced, stop the reader by name)."""
    from ..sidecars import check_sidecar

    path = trained_weights_path(ctx, run_name)
    return check_sidecar(path.parent / "history.json", trained_weights_identity(ctx, run_name),
                         what=f"the weights of training run {run_name!r} ({path})",
                         remedy=f"re-run the training stage (histokit reproduce), or delete {path.parent}")


def load_encoder_weights(encoder: Encoder, path: Path) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    encoder.load_state_dict(state)


# How the weights a row was computed with came about, in words: the start of every ``source`` text of the hub
# branch (table rows, timing.csv, the benchmark's ``weights`` column and the notes all quote it).
WEIGHTS_FROM_CACHE = "ImageNet weights from the local cache"
WEIGHTS_DOWNLOADED = "ImageNet weights downloaded"
WEIGHTS_UNREACHABLE = "random init: ImageNet weights unreachable"
BUNDLED_WORDS = "bundled Kather 2016 tiles"  # the data of a manifest with ``access: bundled``, in words


def cached_hub_encoder(encoder_name: str, **kwargs) -> Optional[Encoder]:
    """``encoder_name`` with its timm hub weights read from the local Hugging Face cache, or None when they are not
    there (never a network request)."""
    try:
        with hub.hub_session(offline=True):
            return _create_encoder(encoder_name, pretrained=True, **kwargs)
    except Exception:  # not cached (LocalEntryNotFoundError), or not loadable: the caller falls back
        return None


def _training_data_words(ctx: StageContext, run_name: str) -> str:
    """What a training run of this recipe read, e.g. "80 bundled Kather 2016 tiles" ("" when it cannot be said)."""
    try:
        from .data_index import read_index

        run = ctx.recipe.train_spec(run_name)
        data = ctx.recipe.dataset(run.dataset)
        bundled = read_index(ctx, run.dataset).meta["manifests"][data.dataset]["access"] == "bundled"
        what = BUNDLED_WORDS if bundled else f"{data.dataset} images"
        if data.stain:
            what += f" ({data.stain}-normalized)"
        return f"{len(training_rows(ctx, split_indices(ctx, run.dataset)['train']))} {what}"
    except (KeyError, OSError, ValueError):
        return ""


def trained_source(ctx: StageContext, run_name: str) -> str:
    """The weights of training run ``run_name`` in words: the run, what it trained on, and what it started from
    (its own source text, from its history.json), e.g. "trained here on 80 bundled Kather 2016 tiles (simclr_CRC)
    ← random init: ImageNet weights unreachable (...)"."""
    import json

    data = _training_data_words(ctx, run_name)
    text = f"trained here on {data} ({run_name})" if data else f"trained here ({run_name})"
    history = trained_weights_path(ctx, run_name).parent / "history.json"
    try:
        init = json.loads(history.read_text()).get("init")
    except (OSError, ValueError):
        init = None
    return f"{text} ← {init}" if init else text


def resolve_weights(ctx: StageContext, encoder_name: str, spec: str, dataset: str, *, image_size: int,
                    pooling: Optional[str] = None, scope: str = "all",
                    encoder_kwargs: Optional[dict] = None) -> tuple[Encoder, str]:
    """Build ``encoder_name`` and load the first available weight source of ``spec`` (see recipe.weight_sources);
    returns the encoder and its weights as used, in words (``source``: every table row that uses them says so).

    ``timm`` hub weights come from the local Hugging Face cache when they are there (no network needed), else from
    the hub; weights that can be had neither way are an error in the full profile, while in the smoke profile and
    a rehearsal the encoder stays randomly initialised and the source and a footnote say so.
    """
    tried = []
    kwargs = dict(encoder_kwargs or {})

    def create_encoder(name, **kw):  # every branch builds the same architecture
        return _create_encoder(name, **kw, **kwargs)

    for kind, value in weight_sources(spec, dataset):
        if tried and kind != "checkpoint" and any("--checkpoint" in t for t in tried):
            # The paper's official weights were not given: the table must say what stands in for them.
            missing = [t for t in tried if "--checkpoint" in t]
            ctx.add_note(scope, f"{encoder_name}: {'; '.join(missing)} — the kit's fallback ({kind}"
                                f"{':' + value if value else ''}) is used instead, never silently another model.")
        if kind == "checkpoint":
            path = ctx.checkpoints.get(value)
            if not path:
                tried.append(f"no --checkpoint {value}=PATH given")
                continue
            from ..models.checkpoints import load_official
            from ..preflight import MOCK_SUFFIX

            encoder = create_encoder(encoder_name, img_size=image_size, pooling=pooling)
            mock = ctx.rehearsal and str(path).endswith(MOCK_SUFFIX)
            # a rehearsal's mock file has the official layout but not the published bytes: its own digest is kept
            load_official(value, path, encoder, verify=not mock)
            if mock:
                ctx.add_note(scope, f"REHEARSAL: {value} is a mock file in the official layout ({Path(path).name}, "
                                    "random weights written by `histokit data mock`), not the published weights.")
                return encoder, f"mock official-layout checkpoint {value} ({Path(path).name}, random weights)"
            return encoder, f"official checkpoint {value} ({Path(path).name})"
        if kind == "train":
            path = trained_weights_path(ctx, value)
            if not path.exists():
                tried.append(f"training run {value} has not produced {path}")
                continue
            check_trained_weights(ctx, value)
            encoder = create_encoder(encoder_name, img_size=image_size, pooling=pooling)
            load_encoder_weights(encoder, path)
            return encoder, trained_source(ctx, value)
        if kind == "timm":
            encoder = cached_hub_encoder(encoder_name, img_size=image_size, pooling=pooling, **kwargs)
            if encoder is not None:
                return encoder, f"{WEIGHTS_FROM_CACHE} (timm {encoder_name})"
            lenient = ctx.profile == "smoke" or ctx.rehearsal
            if lenient and not hub.hub_reachable():
                ctx.add_note(scope, f"{encoder_name}: ImageNet weights could not be fetched (no network to the "
                                    f"Hugging Face hub, none in the local cache); the {ctx.label} run uses random "
                                    "initialisation instead.")
                return (create_encoder(encoder_name, img_size=image_size, pooling=pooling),
                        f"{WEIGHTS_UNREACHABLE} (hub offline, not in the local cache)")
            try:
                with hub.hub_session(offline=False):
                    encoder = create_encoder(encoder_name, pretrained=True, img_size=image_size, pooling=pooling)
                return encoder, f"{WEIGHTS_DOWNLOADED} from the Hugging Face hub (timm {encoder_name})"
            except Exception as exc:  # no network, no cache: say exactly what happened
                if not lenient:
                    raise RuntimeError(f"timm weights for {encoder_name} could not be loaded ({exc}); put them in "
                                       "the Hugging Face cache or pass a local checkpoint") from exc
                ctx.add_note(scope, f"{encoder_name}: ImageNet weights could not be fetched "
                                    f"({type(exc).__name__}); the {ctx.label} run uses random initialisation instead.")
                return (create_encoder(encoder_name, img_size=image_size, pooling=pooling),
                        f"{WEIGHTS_UNREACHABLE} ({type(exc).__name__})")
        if kind == "random":
            return create_encoder(encoder_name, img_size=image_size, pooling=pooling), "random initialisation"
        if kind == "encoder":  # a user's encoder (histokit evaluate / benchmark --encoder SPEC)
            from ..models.encoder_spec import resolve_encoder

            resolved = resolve_encoder(value, image_size=image_size, lenient=ctx.profile == "smoke" or ctx.rehearsal)
            if resolved.source.startswith("random init"):
                ctx.add_note(scope, f"{value}: pretrained weights unreachable (hub offline, not in the local "
                                    f"cache); the {ctx.label} run uses random initialisation instead.")
            return resolved.encoder, resolved.source
    raise RuntimeError(f"no weights available for {encoder_name} from {spec!r}: " + "; ".join(tried))


def init_identity(ctx: StageContext, spec: str, dataset: str, encoder: Optional[str] = None,
                  encoder_kwargs: Optional[dict] = None) -> dict:
    """What a training run would start from, without building it: the first available source of ``spec`` as
    :func:`resolve_weights` picks it, with the file's sha256 for a checkpoint or an earlier run's weights. Hub
    weights of ``encoder`` in the local cache count as hub weights even with the hub offline."""
    from ..io import sha256_file

    for kind, value in weight_sources(spec, dataset):
        if kind == "checkpoint":
            path = ctx.checkpoints.get(value)
            if path:
                return {"kind": kind, "name": value, "sha256": sha256_file(Path(path))}
        elif kind == "train":
            path = trained_weights_path(ctx, value)
            if path.exists():
                return {"kind": kind, "name": value, "sha256": sha256_file(path)}
        elif kind == "timm":
            offline = (ctx.profile == "smoke" or ctx.rehearsal) and not hub.hub_reachable()
            if offline and encoder and cached_hub_encoder(encoder, **(encoder_kwargs or {})) is not None:
                offline = False
            return {"kind": "random (hub offline)" if offline else kind}
        elif kind == "random":
            return {"kind": kind}
        elif kind == "encoder":
            from ..models.encoder_spec import encoder_identity

            return encoder_identity(value)
    return {"kind": "unavailable", "spec": spec}


def training_fingerprint(ctx: StageContext, spec) -> str:
    """Everything that decides a training run's weights: its TrainSpec, the recipe's entry of the dataset it trains
    on (split, training splits, validation fraction, merges, stain normalization decide which images it sees), its
    resolved initialisation, the step and image caps and the seed. Finished weights are reused only under the same
    fingerprint."""
    import hashlib
    import json
    from dataclasses import asdict

    init = init_identity(ctx, spec.init, spec.dataset, spec.encoder, spec.encoder_kwargs)
    try:
        dataset = asdict(ctx.recipe.dataset(spec.dataset))
    except KeyError:  # a run on a dataset the recipe does not list (a test's ad-hoc TrainSpec)
        dataset = spec.dataset
    payload = {"spec": asdict(spec), "dataset": dataset, "init": init, "seed": ctx.seed,
               "rehearse": ctx.rehearse or None}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def weights_normalization(ctx: StageContext, spec: ModelSpec, dataset: str) -> tuple[tuple, tuple, str]:
    """``(mean, std, why)``: the input normalization of the weights :func:`resolve_weights` loads for ``spec``.

    Official weights carry their own (:data:`histokit.models.checkpoints.OFFICIAL_WEIGHTS`: mean = std = 0.5 for
    Chen & Krishnan's DINO and SimCLR, ImageNet statistics for EsViT ...), which win whenever that checkpoint is the
    first available source — the model row's ``mean`` / ``std`` are then not read. Otherwise (hub, kit-trained or
    random weights) the row's own."""
    for kind, value in weight_sources(spec.weights, dataset):
        if kind == "checkpoint":
            if not ctx.checkpoints.get(value):
                continue
            from ..models.checkpoints import official_weights

            entry = official_weights(value)
            return tuple(entry.mean), tuple(entry.std), f"official weights {value}"
        if kind == "train" and not trained_weights_path(ctx, value).exists():
            continue
        break
    return tuple(spec.mean), tuple(spec.std), f"model row {spec.name!r}"


def load_model(ctx: StageContext, model_name: str, dataset: str, scope: str = "all") -> LoadedModel:
    spec = ctx.recipe.model(model_name)
    encoder, source = resolve_weights(ctx, spec.encoder, spec.weights, dataset, image_size=ctx.recipe.image_size,
                                      pooling=spec.pooling, scope=scope, encoder_kwargs=spec.encoder_kwargs)
    mean, std, _ = weights_normalization(ctx, spec, dataset)
    return LoadedModel(encoder.eval(), source, spec, mean, std)
