"""Stage 04: extract each model's features for every image of each dataset, index the galleries, time it.

Features are stored per image for the whole dataset (``features/<model>/<dataset>.npz``), so every split and
split variant is an index array into them; a separate official test set gets its own file. Each file's ``.json``
sidecar names what it is (model, dataset, official test set or not, the run: paper, profile, label, run directory,
recipe digest) and which weights made it; every reader checks that against what it asked for
(:func:`check_feature_sidecar`), so a feature file copied over another model's stops the run, naming it.
The gallery index is built for the timings and not saved (stage 05 builds its own from the checked features): exact
up to ``exact_index_max`` vectors, above it FAISS IVF with its recall against exact search in the timing record and
a note on every table that reports the timing (:func:`histokit.retrieval.scale.gallery_index`).

Where several models extract features of one dataset at one input size, its images are decoded and resized once into
a tile cache (:mod:`histokit.data.tile_cache`: uint8 pixels, each model's mean / std applied after; the same
features as decoding each time) under ``tile_cache/`` of the run, deleted when the stage ends.
"""
from __future__ import annotations

import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.datasets import PatchDataset
from ..data.tile_cache import build_tile_cache
from ..data.transforms import eval_transform
from ..io import atomic_write_json, atomic_write_text
from ..retrieval.features import FeatureSet, extract_features, load_features, measure_latency, save_features
from ..retrieval.metrics import retrieval_latency_ms
from ..retrieval.scale import EXACT_MAX_GALLERY, approximate_note, gallery_index
from ..run_identity import run_identity
from ..sidecars import SidecarError, check_sidecar, mismatches, read_sidecar
from .common import init_identity, load_model, load_recipe_dataset, slug, split_indices, weights_normalization
from .context import StageContext


@dataclass
class IndexSummary:
    features: pd.DataFrame
    timing: pd.DataFrame


SMOKE_TIMING_REPEATS = 5
# A rehearsal's timings prove the measurement runs; on a CPU they mean nothing, so one timed pass, no warm-up, and
# the amortized figure at a batch of at most REHEARSAL_TIMING_BATCH images (the code path is the same at any batch).
REHEARSAL_TIMING_REPEATS = 1
REHEARSAL_TIMING_BATCH = 8
# A CPU rehearsal extracts at this batch at most: an eval-mode forward gives the same features at any batch, and a
# full-size ConvNeXt V2-B at the recipe's 256 x 224 px runs at half the speed per image (memory-bound) on a CPU.
REHEARSAL_CPU_EXTRACTION_BATCH = 32


def extraction_batch(ctx: StageContext) -> int:
    """The batch features are extracted at: the recipe's, capped in a CPU rehearsal (recorded in every sidecar)."""
    batch = ctx.recipe.extraction_batch_size
    if ctx.rehearsal and str(ctx.device).startswith("cpu"):
        batch = min(batch, REHEARSAL_CPU_EXTRACTION_BATCH)
    return batch


def exact_index_max(ctx: StageContext) -> int:
    """The largest gallery searched exactly: the recipe's ``exact_index_max`` where it sets one, else
    :data:`~histokit.retrieval.scale.EXACT_MAX_GALLERY` (1,000,000 vectors)."""
    return int(ctx.recipe.exact_index_max or EXACT_MAX_GALLERY)


def timing_tables(ctx: StageContext, model: str, dataset: str) -> list[str]:
    """The tables that report (model, dataset)'s timings (an evaluation or ablation with ``timing``)."""
    return [spec.table for spec in ctx.recipe.evaluations + ctx.recipe.ablations
            if getattr(spec, "timing", False) and model in spec.models and dataset in spec.datasets]


def index_fields(approximate: dict | None) -> dict:
    """What a timing record says of the gallery index it searched: exact, or the IVF index and its recall@10
    against exact search (:attr:`~histokit.retrieval.scale.GalleryIndex.approximate`)."""
    if not approximate:
        return {"gallery_index": "Flat (exact)", "gallery_index_recall@10": None}
    return {"gallery_index": f"{approximate['factory']} nprobe={approximate['nprobe']}",
            "gallery_index_recall@10": approximate["recall@10"]}


def pairs_needed(ctx: StageContext) -> dict[tuple[str, str], bool]:
    """(model, dataset) pairs whose features an evaluation, ablation or figure reads -> whether a table reports
    their timing (only those pay for the latency measurements)."""
    pairs: dict = {}
    for protocol in ctx.recipe.evaluations + ctx.recipe.ablations:
        if protocol.needs_images:  # fine-tuning reads the images, not stored features
            continue
        for pair in protocol.feature_pairs():
            pairs[pair] = pairs.get(pair, False) or bool(getattr(protocol, "timing", False))
    for figure in ctx.recipe.figures:
        if figure.needs_features:
            for model in figure.model_rows():
                pairs.setdefault((model, figure.dataset), False)
    return pairs


def feature_path(ctx: StageContext, model: str, dataset: str, test: bool = False):
    return ctx.path("features", slug(model), slug(dataset) + ("__test" if test else "") + ".npz")


# What a feature sidecar must say for its file to be read as (model, dataset) of this run; the rest of the run's
# identity (run directory, recipe digest) is vetted and re-stamped by stage 04 (:func:`_restamp`).
OWN_RUN_KEYS = ("paper", "profile", "label")
RERUN = "re-run stage 04 (histokit reproduce), or delete {path} and its .json sidecar"


def feature_identity(ctx: StageContext, model: str, dataset: str, test: bool = False) -> dict:
    """What every feature sidecar records about what the file is: the recipe model and dataset key, whether it
    holds the official test set, and the run it was extracted in (:func:`histokit.run_identity.run_identity`:
    paper, profile, label, run directory, recipe digest). Readers check it all (:func:`check_feature_sidecar`)."""
    return {"model": model, "dataset": dataset, "test": bool(test),
            "run": run_identity(ctx.paper, ctx.profile, ctx.label, ctx.run_dir, ctx.recipe)}


def check_feature_sidecar(ctx: StageContext, model: str, dataset: str, test: bool = False) -> dict:
    """The sidecar of (model, dataset)'s feature file, checked to describe exactly that file of this run; else
    :class:`~histokit.sidecars.SidecarError` naming the sidecar, the field, the expected and the found value."""
    path = feature_path(ctx, model, dataset, test)
    meta = check_sidecar(path.with_suffix(".json"), feature_identity(ctx, model, dataset, test),
                         what=f"the features of {model!r} on {dataset!r}" + (" (official test set)" if test else "")
                         + f" of this {ctx.paper} {ctx.label} run", remedy=RERUN.format(path=path))
    if not isinstance(meta.get("sha256"), str):
        raise SidecarError(f"sidecar {path.with_suffix('.json')} lacks field 'sha256'; {RERUN.format(path=path)}")
    return meta


def load_feature_set(ctx: StageContext, model: str, dataset: str, test: bool = False) -> FeatureSet:
    """(model, dataset)'s features, after checking that the sidecar names this model, dataset and run and that the
    file is the one the sidecar describes (sha256)."""
    meta = check_feature_sidecar(ctx, model, dataset, test)
    return load_features(feature_path(ctx, model, dataset, test), expected_sha256=meta["sha256"])


def gallery_and_queries(ctx: StageContext, model: str, dataset: str, gallery: str = "train", queries: str = "test",
                        scheme: str | None = None):
    """(gallery FeatureSet, query FeatureSet) for a split scheme; the official test set when the recipe has one."""
    full = load_feature_set(ctx, model, dataset)
    split = split_indices(ctx, dataset, scheme)
    if split is None:
        return None

    def part(name: str) -> FeatureSet:
        if name == "test" and ctx.recipe.dataset(dataset).test_dataset:
            return load_feature_set(ctx, model, dataset, test=True)
        rows = np.asarray(split[name])
        return FeatureSet(full.features[rows], full.labels[rows], full.indices[rows], full.timing)

    return part(gallery), part(queries)


def feature_parts(ctx: StageContext, model: str, dataset: str, scheme: str | None = None) -> dict[str, FeatureSet]:
    """{"train", "val", "test"} FeatureSets of a dataset's split (test = the official test set when there is one)."""
    full = load_feature_set(ctx, model, dataset)
    split = split_indices(ctx, dataset, scheme)
    parts = {name: FeatureSet(full.features[np.asarray(rows)], full.labels[np.asarray(rows)],
                              full.indices[np.asarray(rows)], full.timing) for name, rows in split.items()}
    if ctx.recipe.dataset(dataset).test_dataset:
        parts["test"] = load_feature_set(ctx, model, dataset, test=True)
    return parts


def feature_files(ctx: StageContext, model: str, dataset_key: str) -> list[tuple[bool, Path]]:
    """(is_test, path) of every feature file of (model, dataset): the dataset, and its official test set if any."""
    tests = [False, True] if ctx.recipe.dataset(dataset_key).test_dataset else [False]
    return [(t, feature_path(ctx, model, dataset_key, t)) for t in tests]


def _done(path) -> bool:
    return path.exists() and path.with_suffix(".json").exists()


def extraction_settings(ctx: StageContext, model_name: str, dataset_key: str) -> dict:
    """What decides a feature file besides the weights, recorded in its sidecar: ``image_size`` (the dataset's own
    where the recipe sets one — BreastPathQ at its native 512 px for Chen & Krishnan — else the recipe's), the input
    ``mean`` / ``std`` of the weights (:func:`~histokit.stages.common.weights_normalization`: an official checkpoint's
    own) and ``l2_normalized`` (``Recipe.feature_l2_normalize``; Chen & Krishnan's probes read raw embeddings)."""
    spec = ctx.recipe.model(model_name)
    mean, std, _ = weights_normalization(ctx, spec, dataset_key)
    return {"image_size": int(ctx.recipe.dataset(dataset_key).image_size or ctx.recipe.image_size),
            "mean": [float(v) for v in mean], "std": [float(v) for v in std],
            "l2_normalized": bool(ctx.recipe.feature_l2_normalize)}


def weights_identity(ctx: StageContext, model_name: str, dataset_key: str) -> dict:
    """Which weights extract (model, dataset), without building the model (:func:`~histokit.stages.common.
    init_identity`: a checkpoint's or a training run's sha256, hub or random), recorded in every feature sidecar."""
    spec = ctx.recipe.model(model_name)
    return init_identity(ctx, spec.weights, dataset_key, spec.encoder, spec.encoder_kwargs)


def _current(ctx: StageContext, path, model_name: str, settings: dict, weights: dict | None = None) -> bool:
    """A finished feature file of this (model, dataset), extracted under ``settings`` (and ``weights``, its
    :func:`weights_identity`, when given); a sidecar written before the settings were recorded counts as the kit's
    behaviour then (recipe image size, the row's mean / std, L2-normalized), one written before the file's identity
    was recorded is extracted again. A sidecar naming another model, dataset or run (a file copied here by hand)
    stops the stage: :class:`~histokit.sidecars.SidecarError` names it."""
    if not _done(path):
        return False
    side = path.with_suffix(".json")
    try:
        meta = read_sidecar(side)
    except SidecarError:
        return False  # damaged: extracted again, over it
    test = path.stem.endswith("__test")
    own = feature_identity(ctx, model_name, _dataset_of(ctx, path, test), test)
    own["run"] = {k: own["run"][k] for k in OWN_RUN_KEYS}
    if "run" not in meta or "test" not in meta:
        return False  # written before the kit recorded what the file is: nothing vouches for it
    check_sidecar(side, own, meta=meta, what=f"the features of {model_name!r} on {own['dataset']!r} of this "
                                             f"{ctx.paper} {ctx.label} run", remedy=RERUN.format(path=path))
    spec = ctx.recipe.model(model_name)
    legacy = {"image_size": int(ctx.recipe.image_size), "mean": [float(v) for v in spec.mean],
              "std": [float(v) for v in spec.std], "l2_normalized": True}
    if weights is not None and meta.get("weights_identity") != weights:
        return False  # other weights (a retrained run, a checkpoint given now, hub weights reachable now)
    return all(meta.get(k, legacy[k]) == v for k, v in settings.items())


def _dataset_of(ctx: StageContext, path, test: bool) -> str:
    """The recipe dataset key whose feature file ``path`` is (feature files are named by its slug)."""
    stem = path.stem[: -len("__test")] if test else path.stem
    for spec in ctx.recipe.datasets:
        if slug(spec.key) == stem:
            return spec.key
    return stem


def _restamp(ctx: StageContext, model_name: str, dataset_key: str) -> None:
    """After stage 04 found a feature file current (same model, dataset, paper, profile, settings and weights),
    record this run's directory and recipe digest in its sidecar: a run directory moved, or a recipe edited in
    what does not touch these features, keeps them; readers accept only sidecars stamped by this run's stage 04."""
    for is_test, path in feature_files(ctx, model_name, dataset_key):
        side = path.with_suffix(".json")
        meta = read_sidecar(side)
        run = feature_identity(ctx, model_name, dataset_key, is_test)["run"]
        if mismatches({"run": run}, meta):
            atomic_write_json(side, {**meta, "run": run})


def extraction_targets(ctx: StageContext, model_name: str, dataset_key: str):
    """``(model, record, [(path, dataset)])``: the model with its weights resolved, the fields every feature
    sidecar carries besides the file's identity (:func:`feature_sidecar` adds it), and each feature file still to extract with its dataset under the evaluation transform. The
    single-process stage and each torchrun rank (``histokit.distributed.extract stage``) both start here; seeded
    first, so a randomly initialised model is the same in every rank and in one process, whatever ran before."""
    from .context import seed_everything

    seed_everything(ctx.seed)
    weights = weights_identity(ctx, model_name, dataset_key)  # before the model: a download would change it
    model = load_model(ctx, model_name, dataset_key)
    settings = extraction_settings(ctx, model_name, dataset_key)
    transform = eval_transform(settings["image_size"], settings["mean"], settings["std"])
    record = {"model": model_name, "dataset": dataset_key, "weights": model.source, "weights_identity": weights,
              **settings}
    targets = []
    for is_test, path in feature_files(ctx, model_name, dataset_key):
        if _current(ctx, path, model_name, settings, weights):
            continue
        dataset = load_recipe_dataset(ctx, dataset_key, test=is_test)
        dataset.transform = transform
        targets.append((path, dataset))
    return model, record, targets


def feature_sidecar(ctx: StageContext, record: dict, path) -> dict:
    """The identity fields of feature file ``path`` (:func:`feature_identity`) over ``record``: what the
    single-process stage and the torchrun merge write beside every feature file."""
    test = Path(path).stem.endswith("__test")
    return {**record, **feature_identity(ctx, record["model"], record["dataset"], test)}


def _extract_under_torchrun(ctx: StageContext, model_name: str, dataset_key: str) -> None:
    import shlex

    from ..distributed.stage import extract_module_args
    from ..distributed.launch import TorchrunError, run_torchrun, torchrun_command

    log_dir = ctx.path("logs", "torchrun", f"extract_{slug(model_name)}_{slug(dataset_key)}")
    cmd = torchrun_command(ctx.distributed, extract_module_args(ctx, model_name, dataset_key), log_dir=log_dir)
    print(f"[histokit] features of {model_name} on {dataset_key}: {shlex.join(cmd)}", flush=True)
    run_torchrun(cmd, what=f"feature extraction of {model_name!r} on {dataset_key!r}", log_dir=log_dir,
                 echo=ctx.progress)
    settings = extraction_settings(ctx, model_name, dataset_key)
    weights = weights_identity(ctx, model_name, dataset_key)
    missing = [str(p) for _, p in feature_files(ctx, model_name, dataset_key)
               if not _current(ctx, p, model_name, settings, weights)]
    if missing:
        raise TorchrunError(f"feature extraction of {model_name!r} on {dataset_key!r}: torchrun ended without error "
                            f"but {missing} are missing (rank 0 merges them; is the run directory on a filesystem "
                            f"every node sees?)")


def tile_cache_dir(ctx: StageContext) -> Path:
    return ctx.path("tile_cache")


def shared_inputs(ctx: StageContext, pairs) -> set[str]:
    """The datasets that more than one model of ``pairs`` still has to extract (all at the dataset's one input
    size, :func:`extraction_settings`): decoding them once into a tile cache serves them all. A model whose feature
    files exist is not counted (a re-run extracts nothing, or one model: a cache would only add a copy)."""
    pending = Counter(d for m, d in pairs if not all(_done(p) for _, p in feature_files(ctx, m, d)))
    return {dataset for dataset, n in pending.items() if n > 1}


def cached_tiles(ctx: StageContext, path: Path, dataset, settings: dict):
    """``dataset`` decoded and resized once into a tile cache beside the other models' (reused when its source
    fingerprint matches), served with this model's mean / std; ``dataset`` itself where a cache cannot hold it (a
    regression target, a dataset that is not a PatchDataset). Returns (dataset to extract from, seconds decoding)."""
    if not isinstance(dataset, PatchDataset) or dataset.is_regression or not len(dataset):
        return dataset, None
    size = settings["image_size"]
    t = time.perf_counter()
    cache = build_tile_cache(dataset, tile_cache_dir(ctx) / f"{path.stem}_{size}px.npy", size,
                             mean=settings["mean"], std=settings["std"])
    return cache, time.perf_counter() - t


def extract_pair(ctx: StageContext, model_name: str, dataset_key: str, timed: bool = True,
                 tile_cache: bool = False) -> dict:
    """Features (+ official test set), the gallery index and (``timed``) the timings of one (model, dataset).

    With ``ctx.distributed`` asking for several processes the missing feature files are extracted by a torchrun
    job (each rank whole groups of images, rank 0 merges); otherwise here, in one process, from a tile cache
    shared with the dataset's other models when ``tile_cache`` (:func:`shared_inputs`)."""
    from ..distributed.launch import is_multiprocess

    batch = extraction_batch(ctx)
    settings = extraction_settings(ctx, model_name, dataset_key)
    if is_multiprocess(ctx.distributed):
        weights = weights_identity(ctx, model_name, dataset_key)
        pending = [p for _, p in feature_files(ctx, model_name, dataset_key)
                   if not _current(ctx, p, model_name, settings, weights)]
        if pending:
            _extract_under_torchrun(ctx, model_name, dataset_key)
        if not head_node(ctx):  # the other nodes' notebooks only join the torchrun jobs; node 0 indexes and times
            return {"model": model_name, "dataset": dataset_key}
        model = load_model(ctx, model_name, dataset_key)
        record = {"model": model_name, "dataset": dataset_key, "weights": model.source, "weights_identity": weights,
                  **settings}
    else:
        model, record, targets = extraction_targets(ctx, model_name, dataset_key)
        for path, dataset in targets:
            source, decode_s = cached_tiles(ctx, path, dataset, settings) if tile_cache else (dataset, None)
            fs = extract_features(model.encoder, source, batch_size=batch, device=ctx.device, num_workers="auto",
                                  progress=ctx.progress, normalize=record["l2_normalized"])
            if decode_s is not None:  # decoded into (or read back from) the shared cache, outside this clock
                fs.timing.update(tile_cache=source.path.name, tile_cache_s=decode_s)
            sha = save_features(path, fs)
            atomic_write_json(path.with_suffix(".json"),
                              {"sha256": sha, **feature_sidecar(ctx, record, path), "timing": fs.timing})
    _restamp(ctx, model_name, dataset_key)
    gallery = feature_parts(ctx, model_name, dataset_key)["train"]
    # Built for the timings only and never saved: retrieval evaluation (stage 05) builds its own index from the
    # checked feature files, so no index file exists that nothing would read (and whose checksum nothing would run).
    if not timed:  # no timing: no index to time
        return {**record, "gallery_size": len(gallery.features)}
    built = gallery_index(gallery.features, metric="ip", device=ctx.device, exact_max=exact_index_max(ctx))
    index = built.index  # exact (GPU FAISS if built) up to exact_index_max vectors, IVF above
    if built.approximate:
        for table in timing_tables(ctx, model_name, dataset_key):
            ctx.add_note(table, f"{model_name} on {dataset_key}: retrieval latency: {approximate_note(built.approximate)}")
    repeats = {}
    if ctx.rehearsal:  # a rehearsal times one pass at a small batch, no larger than its capped gallery
        repeats = dict(repeats=REHEARSAL_TIMING_REPEATS, warmup=0)
        batch = min(batch, int(index.ntotal), REHEARSAL_TIMING_BATCH)
    elif ctx.profile == "smoke":  # smoke timings compare nothing (tiny images, CPU): a few passes show the column
        repeats = dict(repeats=SMOKE_TIMING_REPEATS, warmup=1)
    # feature_extraction_ms: one image at a time (batch 1), the per-image time a query pays and the figure compared
    # with a paper's per-image extraction time; the amortized per-image time at the extraction batch is kept apart.
    single = measure_latency(model.encoder, ctx.recipe.image_size, device=ctx.device, batch_size=1, **repeats)
    amortized = measure_latency(model.encoder, ctx.recipe.image_size, device=ctx.device, batch_size=batch, **repeats)
    latency = retrieval_latency_ms(model.encoder, index, ctx.recipe.image_size, device=ctx.device, **repeats)
    end_to_end = check_feature_sidecar(ctx, model_name, dataset_key).get("timing") or {}
    # device: the run's; where each timed part ran is recorded apart (the search may stay on the CPU under CUDA);
    # device_name: the extraction device's model ("NVIDIA H200", "cpu"), which a table compares with the paper's.
    timing = {**record, "device": ctx.device, "extraction_device": latency["extraction_device"],
              "search_device": latency["search_device"], "search_backend": latency["search_backend"],
              "device_name": single.get("device_name", str(ctx.device)), "precision": "fp32",
              "feature_extraction_ms": single["ms_per_image"], "feature_extraction_batch_size": 1,
              "feature_extraction_amortized_ms": amortized["ms_per_image"], "extraction_batch_size": batch,
              "extraction_decode_included": False,
              "end_to_end_ms_per_image": end_to_end.get("ms_per_image"),
              "end_to_end_decode_included": end_to_end.get("decode_included", True),
              "retrieval_latency_ms": latency["latency_ms"], "latency_batch_size": 1,
              "timing_repeats": repeats.get("repeats", 20),
              "latency_search_ms": latency.get("search_ms"), "gallery_size": int(index.ntotal),
              **index_fields(built.approximate)}
    atomic_write_json(ctx.path("timing", slug(model_name), slug(dataset_key) + ".json"), timing)
    return timing


def head_node(ctx: StageContext) -> bool:
    """False on the nodes other than node 0 of a multi-node job (``distributed["node_rank"] > 0``): their stage 04
    joins each torchrun extraction and writes nothing itself (the run directory is shared; node 0 writes)."""
    return int((ctx.distributed or {}).get("node_rank") or 0) == 0


def run(ctx: StageContext) -> IndexSummary:
    pairs = pairs_needed(ctx)
    shared = shared_inputs(ctx, pairs)
    try:
        timings = [extract_pair(ctx, m, d, timed, tile_cache=d in shared) for (m, d), timed in pairs.items()]
    finally:  # the caches only serve this stage's models: a full dataset's would hold its pixels twice on disk
        shutil.rmtree(tile_cache_dir(ctx), ignore_errors=True)
    if not head_node(ctx):
        return IndexSummary(pd.DataFrame(timings), pd.DataFrame())
    timing = pd.DataFrame(timings)
    atomic_write_json(ctx.path("timing", "all.json"), timings)
    atomic_write_text(ctx.results_dir / "timing.csv", timing.to_csv(index=False))
    features = timing[["model", "dataset", "weights", "gallery_size"]]
    return IndexSummary(features, timing)
