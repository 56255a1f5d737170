"""Sharded feature extraction: each rank embeds whole slides (groups) of the dataset into its own shard, a finished
shard is marked done, a re-run skips it, and a merge builds the one feature store the retrieval stages read.

Shard ``r`` of ``w`` is ``shard_<r>_of_<w>.npz`` (a :func:`histokit.retrieval.features.save_features` file, written
atomically) plus ``shard_<r>_of_<w>.done.json`` = ``{count, sha256, indices_sha256, fingerprint}``, written after the
``.npz``. A shard counts as finished only if its marker exists, the ``.npz`` still has that sha256 and the
fingerprint (encoder, weights, image size, dataset, ...) is this run's: a killed rank leaves no marker (or a stale
one), so only its shard is redone. :func:`merge_shards` verifies every shard's sha256 and count, refuses an index seen
twice or missing, and writes ``features.npz`` in dataset order (equal to a single-process extraction) with
``features.json`` beside it.

Shards are independent: run them as ranks of one torchrun job (rank 0 merges after a barrier), or as the tasks of
a job array (``--num-shards N --shard-rank R``) followed by ``--merge-only``. docs/scaling.md shows both.

``python -m histokit.distributed.extract stage --paper P --profile PROF --model M --dataset-key D ...`` is what
stage 04 launches under torchrun when its ``distributed`` flags ask for several processes: the recipe's model and
dataset through the stage's own code, merged into the stage's feature file.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import record
from torch.utils.data import Dataset, Subset

from histokit.io import atomic_write_json, sha256_file
from histokit.retrieval.features import FeatureFileError, FeatureSet, extract_features, load_features, save_features

from .launch import barrier, cleanup, init_distributed
from .stage import EXTRACT_COMMAND

MERGED_NAME = "features.npz"


def shard_paths(out_dir: str | Path, rank: int, world: int) -> tuple[Path, Path]:
    """``(shard .npz, its done marker)`` of shard ``rank`` of ``world``."""
    stem = Path(out_dir) / f"shard_{rank}_of_{world}"
    return stem.with_suffix(".npz"), stem.with_suffix(".done.json")


def group_keys(dataset: Dataset) -> list[str]:
    """What must stay on one rank, per item: the dataset's group (slide / patient / source image) where it has one,
    else the item's file, else the item itself."""
    n = len(dataset)
    groups = list(getattr(dataset, "groups", None) or [None] * n)
    paths = list(getattr(dataset, "paths", None) or [None] * n)
    if len(groups) != n or len(paths) != n:
        raise ValueError(f"dataset has {n} items but {len(groups)} groups / {len(paths)} paths")
    return [f"group:{g}" if g is not None else f"file:{p}" if p is not None else f"item:{i}"
            for i, (g, p) in enumerate(zip(groups, paths))]


def assign_shards(keys: Sequence[str], world: int) -> list[np.ndarray]:
    """Item indices of each of ``world`` shards; every group whole on one shard, shards balanced by item count.

    Greedy longest-processing-time: the largest group first, each to the shard holding the fewest items so far (ties:
    the lower shard), so the result depends on the groups alone, never on the order of arrival.
    """
    if world < 1:
        raise ValueError(f"world must be >= 1, got world={world}")
    members: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        members.setdefault(k, []).append(i)
    load = [0] * world
    shards: list[list[int]] = [[] for _ in range(world)]
    for key in sorted(members, key=lambda k: (-len(members[k]), k)):
        target = min(range(world), key=lambda r: (load[r], r))
        shards[target].extend(members[key])
        load[target] += len(members[key])
    return [np.array(sorted(s), dtype=np.int64) for s in shards]


def _indices_sha256(indices: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()


@dataclass(frozen=True)
class ShardResult:
    rank: int
    world: int
    status: str     # "extracted" | "skipped" (finished by an earlier run)
    path: Path
    count: int
    sha256: str


def finished_shard(npz: Path, done: Path, *, indices: np.ndarray, fingerprint: dict) -> Optional[dict]:
    """The done marker if shard ``npz`` is finished for exactly these items and this fingerprint, else None."""
    if not (npz.is_file() and done.is_file()):
        return None
    try:
        marker = json.loads(done.read_text())
    except (json.JSONDecodeError, OSError):
        return None
    if (marker.get("fingerprint") != fingerprint or marker.get("count") != len(indices)
            or marker.get("indices_sha256") != _indices_sha256(indices)):
        return None
    return marker if sha256_file(npz) == marker.get("sha256") else None


def extract_shard(encoder: nn.Module, dataset: Dataset, out_dir: str | Path, *, rank: int, world: int,
                  fingerprint: Optional[dict] = None, keys: Optional[Sequence[str]] = None, batch_size: int = 64,
                  device: str | torch.device = "cpu", precision: str = "fp32", num_workers: int | str = 0,
                  progress: bool = True, normalize: bool = True) -> ShardResult:
    """Embed shard ``rank`` of ``world`` of ``dataset`` (items yield ``(image, label, index)``) unless already done.

    ``keys``: the group of each item (default :func:`group_keys`). ``fingerprint``: what makes two extractions the
    same (JSON-serialisable); a marker written under another fingerprint is stale and the shard is redone.
    ``normalize``: L2-normalize the embeddings (:func:`~histokit.retrieval.features.extract_features`).
    """
    if not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank={rank}, world={world}")
    fingerprint = json.loads(json.dumps(fingerprint or {}, sort_keys=True, default=str))  # as it reads back
    indices = assign_shards(group_keys(dataset) if keys is None else keys, world)[rank]
    npz, done = shard_paths(out_dir, rank, world)
    marker = finished_shard(npz, done, indices=indices, fingerprint=fingerprint)
    if marker is not None:
        return ShardResult(rank, world, "skipped", npz, marker["count"], marker["sha256"])
    done.unlink(missing_ok=True)  # a marker must never describe a shard being rewritten
    if len(indices):
        fs = extract_features(encoder, Subset(dataset, indices.tolist()), batch_size=batch_size, device=device,
                              precision=precision, num_workers=num_workers, progress=progress, normalize=normalize)
    else:  # more ranks than groups: an empty shard, still marked done so the merge knows it is complete
        fs = FeatureSet(np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64), {})
    if not np.array_equal(np.sort(fs.indices), indices):
        raise FeatureFileError(f"shard {rank} of {world}: the dataset returned indices other than the items asked "
                               f"for (its __getitem__ must return (image, label, index) with the item's own index)")
    sha = save_features(npz, fs)
    atomic_write_json(done, {"count": len(fs), "sha256": sha, "indices_sha256": _indices_sha256(indices),
                             "rank": rank, "world": world, "file": npz.name, "fingerprint": fingerprint})
    return ShardResult(rank, world, "extracted", npz, len(fs), sha)


def merge_shards(out_dir: str | Path, world: int, *, expected_count: Optional[int] = None,
                 out_path: Optional[str | Path] = None, meta: Optional[dict] = None) -> tuple[FeatureSet, str]:
    """Merge the ``world`` finished shards in ``out_dir`` into one feature store (rows in dataset-index order).

    Every shard must have its done marker, its sha256 and count; every index must appear exactly once and, with
    ``expected_count``, the indices must be exactly ``0 .. expected_count - 1``. Returns the merged set and the
    sha256 of ``out_path`` (default ``<out_dir>/features.npz``; the ``.json`` beside it records the shards, the
    merged timing and ``meta``). The merged ``total_s`` / ``ms_per_image`` are the slowest shard's wall clock over
    all images: the throughput of the parallel extraction.
    """
    parts, markers = [], []
    for r in range(world):
        npz, done = shard_paths(out_dir, r, world)
        if not done.is_file():
            raise FeatureFileError(f"{done} is missing: shard {r} of {world} has not finished; re-run the extraction "
                                   f"(finished shards are skipped)")
        try:
            marker = json.loads(done.read_text())
        except json.JSONDecodeError as err:
            raise FeatureFileError(f"done marker {done} is not valid JSON: {err}") from err
        fs = load_features(npz, expected_sha256=marker["sha256"])
        if len(fs) != marker["count"]:
            raise FeatureFileError(f"{npz} holds {len(fs)} rows, its marker {done} says count={marker['count']}")
        parts.append(fs)
        markers.append(marker)
    prints = {json.dumps(m.get("fingerprint"), sort_keys=True) for m in markers}
    if len(prints) > 1:
        raise FeatureFileError(f"shards in {out_dir} come from different extractions (fingerprints differ): re-run")
    filled = [p for p in parts if len(p)]
    if not filled:
        raise FeatureFileError(f"all {world} shards in {out_dir} are empty")
    indices = np.concatenate([p.indices for p in filled])
    values, counts = np.unique(indices, return_counts=True)
    if (counts > 1).any():
        dup = values[counts > 1][:10].tolist()
        owners = [r for r, p in enumerate(parts) if np.isin(dup[0], p.indices)]
        raise FeatureFileError(f"dataset indices {dup} appear in more than one shard (index {dup[0]}: shards "
                               f"{owners}); shards of different runs are mixed in {out_dir}")
    if expected_count is not None and not np.array_equal(values, np.arange(expected_count)):
        missing = np.setdiff1d(np.arange(expected_count), values)[:10].tolist()
        raise FeatureFileError(f"merged shards hold {len(values)} items, the dataset has {expected_count}; missing "
                               f"indices (first 10) {missing}")
    order = np.argsort(indices, kind="stable")
    first = filled[0].timing
    timing = {k: first.get(k) for k in ("device", "device_name", "batch_size", "precision", "decode_included")}
    totals = [p.timing.get("total_s") for p in parts]
    timing.update(n_images=int(len(indices)), world=world, sharded=True, shard_total_s=totals)
    if totals and all(t is not None for t in totals):
        timing.update(total_s=max(totals), ms_per_image=1000.0 * max(totals) / len(indices))
    merged = FeatureSet(features=np.concatenate([p.features for p in filled])[order],
                        labels=np.concatenate([p.labels for p in filled])[order], indices=indices[order],
                        timing=timing)
    out_path = Path(out_path) if out_path is not None else Path(out_dir) / MERGED_NAME
    sha = save_features(out_path, merged)
    atomic_write_json(out_path.with_suffix(".json"), {
        "file": out_path.name, "sha256": sha, "count": len(merged), "world": world,
        "shards": [{"file": shard_paths(out_dir, r, world)[0].name, "count": m["count"], "sha256": m["sha256"]}
                   for r, m in enumerate(markers)],
        "fingerprint": markers[0].get("fingerprint"), "timing": timing, **(meta or {})})
    return merged, sha


# ------------------------------------------------------------------------------------------------------ the CLI


def _build(args: argparse.Namespace):
    """The encoder (with ``--weights``) and the evaluation dataset the CLI extracts, and the run's fingerprint."""
    from histokit.data.datasets import load_dataset
    from histokit.data.transforms import eval_transform
    from histokit.models.backbones import create_encoder
    from histokit.models.checkpoints import read_checkpoint

    torch.manual_seed(args.seed)  # without --weights every rank builds the same random encoder
    encoder = create_encoder(args.encoder, img_size=args.image_size)
    weights_sha = None
    if args.weights:
        state = read_checkpoint(args.weights)
        try:
            encoder.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"--weights {args.weights} does not fit encoder {args.encoder!r}: {err}") from err
        weights_sha = sha256_file(args.weights)
    dataset = load_dataset(args.dataset, args.data_root, split=args.split,
                           transform=eval_transform(args.image_size, tuple(args.mean), tuple(args.std)))
    fingerprint = {"encoder": args.encoder, "weights_sha256": weights_sha, "seed": args.seed if not args.weights
                   else None, "image_size": args.image_size, "mean": list(args.mean), "std": list(args.std),
                   "dataset": args.dataset, "split": args.split, "n_items": len(dataset),
                   "precision": args.precision}
    return encoder, dataset, fingerprint


def run_extraction(args: argparse.Namespace) -> Optional[ShardResult]:
    """What ``python -m histokit.distributed.extract`` does in this process (one rank or one array task)."""
    if args.merge_only:
        _, dataset, _ = _build(args)
        merge_shards(args.out, args.num_shards, expected_count=len(dataset))
        return None
    encoder, dataset, fingerprint = _build(args)
    if args.num_shards is not None:  # a job-array task: no process group, no merge (unless it is the only shard)
        rank, world, device = args.shard_rank, args.num_shards, args.device or (
            "cuda" if torch.cuda.is_available() else "cpu")
    else:  # gloo only for the final barrier, also on GPUs; the timeout covers waiting for the slowest shard
        env = init_distributed(args.device, backend="gloo", timeout=timedelta(minutes=args.timeout_min))
        rank, world, device = env.rank, env.world_size, env.device
    result = extract_shard(encoder, dataset, args.out, rank=rank, world=world, fingerprint=fingerprint,
                           batch_size=args.batch_size, device=device, precision=args.precision,
                           num_workers=args.num_workers, progress=args.progress and rank == 0)
    if args.num_shards is None:
        barrier()
    if rank == 0 and (args.num_shards is None or world == 1):
        merge_shards(args.out, world, expected_count=len(dataset))
    return result


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m histokit.distributed.extract",
                                description="Sharded feature extraction; run alone, under torchrun, or as a job array "
                                            "(docs/scaling.md).")
    p.add_argument("--dataset", required=True, help="manifest name (histokit.data.load_dataset)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--split", default=None, help="keep one official split")
    p.add_argument("--encoder", required=True, help="encoder name (histokit.models.backbones)")
    p.add_argument("--weights", default=None, help="encoder state dict, e.g. pretrain's encoder.pt")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--mean", type=float, nargs=3, default=(0.485, 0.456, 0.406))
    p.add_argument("--std", type=float, nargs=3, default=(0.229, 0.224, 0.225))
    p.add_argument("--out", required=True, help="folder for the shards and the merged features.npz")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda (GPU LOCAL_RANK under torchrun) when available")
    p.add_argument("--seed", type=int, default=0, help="initialises the encoder when no --weights are given")
    p.add_argument("--num-shards", type=int, default=None, help="job-array mode: total shards (no torchrun)")
    p.add_argument("--shard-rank", type=int, default=None, help="job-array mode: this task's shard")
    p.add_argument("--merge-only", action="store_true", help="merge --num-shards finished shards and exit")
    p.add_argument("--timeout-min", type=float, default=24 * 60, help="how long rank 0 waits for the other shards")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    if (args.num_shards is None) != (args.shard_rank is None) and not args.merge_only:
        p.error("--num-shards and --shard-rank go together (job-array mode)")
    if args.merge_only and args.num_shards is None:
        p.error("--merge-only needs --num-shards")
    if args.num_shards is not None and not (args.merge_only or 0 <= args.shard_rank < args.num_shards):
        p.error(f"--shard-rank must be in [0, {args.num_shards}), got {args.shard_rank}")
    return args


# ------------------------------------------------------------------------------ stage 04 under torchrun (recipe)

def state_digest(module: nn.Module) -> str:
    """sha256 over a module's state dict (names and bytes): which weights extracted a shard."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def run_stage_extraction(ctx, model_name: str, dataset_key: str, *,
                         timeout: timedelta = timedelta(hours=24)) -> list[Path]:
    """This rank's share of stage 04's extraction of (model, dataset): the stage's own model, weights, datasets
    and transform (:func:`histokit.stages.index.extraction_targets`), whole groups per rank into
    ``features/<model>/<dataset>.shards/``; after a barrier rank 0 merges each into the feature file the
    single-process stage writes (same rows, same sidecar fields). Returns the merged files (rank 0) or []."""
    from histokit.stages.index import extraction_batch, extraction_targets, feature_sidecar

    from .stage import mute_notes_off_main

    env = init_distributed(ctx.device, backend="gloo", timeout=timeout)  # gloo: only barriers go through it
    mute_notes_off_main(ctx, env)
    model, record, targets = extraction_targets(ctx, model_name, dataset_key)
    weights = state_digest(model.encoder)
    jobs = []
    for path, dataset in targets:
        shard_dir = path.with_suffix(".shards")
        # record: model, dataset, weights and the extraction settings (image size, mean / std, L2 normalization)
        fingerprint = {**record, "file": path.name, "weights_sha256": weights,
                       "n_items": len(dataset), "batch_size": extraction_batch(ctx)}
        extract_shard(model.encoder, dataset, shard_dir, rank=env.rank, world=env.world_size, fingerprint=fingerprint,
                      batch_size=extraction_batch(ctx), device=env.device, num_workers="auto",
                      progress=ctx.progress and env.is_main, normalize=record["l2_normalized"])
        jobs.append((path, shard_dir, len(dataset)))
    barrier()
    merged = []
    if env.is_main:
        for path, shard_dir, count in jobs:
            # the sidecar the single-process stage writes: record + what the file is (model, dataset, test, run)
            merge_shards(shard_dir, env.world_size, expected_count=count, out_path=path,
                         meta=feature_sidecar(ctx, record, path))
            merged.append(path)
    barrier()
    return merged


def parse_stage_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from .stage import add_context_arguments

    p = argparse.ArgumentParser(prog=f"python -m histokit.distributed.extract {EXTRACT_COMMAND}",
                                description="One rank of stage 04's feature extraction of a recipe's (model, "
                                            "dataset) under torchrun; started by the stage (docs/scaling.md).")
    add_context_arguments(p)
    p.add_argument("--model", required=True, help="a ModelSpec name of the recipe")
    p.add_argument("--dataset-key", required=True, help="a DatasetSpec key of the recipe")
    p.add_argument("--timeout-min", type=float, default=24 * 60, help="how long rank 0 waits for the other shards")
    return p.parse_args(argv)


@record
def stage_main(argv: Sequence[str]) -> None:
    from .stage import worker_context

    args = parse_stage_args(argv)
    try:
        env = init_distributed(None if args.device in ("", "auto") else args.device, backend="gloo",
                               timeout=timedelta(minutes=args.timeout_min))
        ctx = worker_context(args, env)
        run_stage_extraction(ctx, args.model, args.dataset_key, timeout=timedelta(minutes=args.timeout_min))
    finally:
        cleanup()


def main(argv: Optional[Sequence[str]] = None) -> None:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [EXTRACT_COMMAND]:
        stage_main(argv[1:])
        return
    args = parse_args(argv)
    try:
        run_extraction(args)
    finally:
        cleanup()


if __name__ == "__main__":
    main()
