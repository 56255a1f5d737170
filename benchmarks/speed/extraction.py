"""Section 2: end-to-end extraction from image files (PNG, TIFF, JPEG) and from the decoded-tile cache, each as a
ratio to model-only throughput in the same process, and decode throughput per core.

The images are the bundled real Kather 2016 tiles (224 px), written once as uncompressed TIFF (the NCT-CRC-HE
layout) and JPEG (quality 90) beside the PNG originals, repeated to the configured count; the kit's
``eval_transform`` resizes them to the benchmark size (the resize is inside every file-based number).
"""
from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path

import pandas as pd
import torch
from PIL import Image

from histokit.data.datasets import PatchDataset, Sample
from histokit.data.images import load_image
from histokit.data.tile_cache import build_tile_cache, decode_resize_torchvision
from histokit.data.transforms import eval_transform
from histokit.models.backbones import create_encoder
from histokit.paths import BUNDLED_TILES_DIR
from histokit.retrieval.features import auto_num_workers, autocast_context, extract_features, is_convnet, synchronize
from .rows import Row, SectionResult
from .targets import E2E_CACHE_RATIO_MIN
from .timing import median, paired_ratio, profile_top, spread, timed_runs

FORMATS = ("png", "tiff", "jpeg")


def write_tile_files(workdir: Path, n_unique: int) -> tuple[dict, list]:
    """The first ``n_unique`` bundled tiles as PNG (copied), uncompressed TIFF and JPEG q90; {fmt: paths}, labels."""
    table = pd.read_csv(BUNDLED_TILES_DIR / "labels.csv")
    table = table.iloc[:: max(1, len(table) // n_unique)].head(n_unique)
    paths = {fmt: [] for fmt in FORMATS}
    for i, rel in enumerate(table["path"]):
        src = BUNDLED_TILES_DIR / rel
        stem = workdir / f"tile_{i:04d}"
        shutil.copyfile(src, stem.with_suffix(".png"))
        img = Image.open(src).convert("RGB")
        img.save(stem.with_suffix(".tiff"), compression=None)
        img.save(stem.with_suffix(".jpeg"), quality=90)
        for fmt in FORMATS:
            paths[fmt].append(str(stem.with_suffix(f".{fmt}")))
    return paths, [int(v) for v in table["label"]]


def _per_core_rate(fn, items, repeats: int) -> tuple[float, float]:
    """Items per second of ``fn`` applied to every item sequentially in this process (one core): median, spread."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        times.append(time.perf_counter() - t0)
    return len(items) / median(times), spread(times)


def _decode_rows(paths: dict, cfg, device: torch.device) -> list:
    from torchvision.io import decode_jpeg, read_file

    rows, n = [], len(paths["png"])
    one = dict(batch_size=1, precision="uint8", n=n)  # decoding is per image, on uint8 pixels
    transform = eval_transform(cfg.image_size)
    reps = max(2, cfg.repeats)
    for fmt in FORMATS:
        rate, sp = _per_core_rate(load_image, paths[fmt], reps)
        rows.append(Row("decode", f"{fmt.upper()} decode (kit load_image, PIL), 224 px", rate, "img/s/core", **one,
                        note=f"one process, files in the page cache; spread {100 * sp:.1f} %",
                        key=f"decode/pil/{fmt}"))
        rate, sp = _per_core_rate(lambda p: transform(load_image(p)), paths[fmt], reps)
        rows.append(Row("decode", f"{fmt.upper()} decode + eval_transform to {cfg.image_size} px", rate,
                        "img/s/core", **{**one, "image_size": cfg.image_size},
                        note=f"what one DataLoader worker delivers; spread {100 * sp:.1f} %",
                        key=f"decode/transform/{fmt}"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 flags its codecs for TorchCodec
        rate, sp = _per_core_rate(lambda p: decode_jpeg(read_file(p)), paths["jpeg"], reps)
        rows.append(Row("decode", "JPEG decode, torchvision.io.decode_jpeg on the CPU, 224 px", rate, "img/s/core",
                        **one, note=f"libjpeg-turbo; spread {100 * sp:.1f} %", key="decode/torchvision_cpu/jpeg"))
        if device.type == "cuda":
            data = [read_file(p) for p in paths["jpeg"]]
            decode_jpeg(data, device=device)  # nvJPEG initialization
            synchronize(device)
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                decode_jpeg(data, device=device)
                synchronize(device)
                times.append(time.perf_counter() - t0)
            rows.append(Row("decode", "JPEG decode on the GPU, torchvision.io.decode_jpeg(device='cuda'), batched",
                            n / median(times), "img/s", batch_size=n, precision="uint8", n=n,
                            note=f"whole GPU (nvJPEG), bytes already in memory; spread {100 * spread(times):.1f} %",
                            key="decode/cuda/jpeg"))
            def decode_resize(batch):
                decode_resize_torchvision(batch, cfg.image_size, device)
                synchronize(device)
            rate, _ = _per_core_rate(decode_resize, [paths["jpeg"]], reps)
            rows.append(Row("decode", f"JPEG read + GPU decode + resize to {cfg.image_size} px (tile-cache builder)",
                            rate * n, "img/s", batch_size=n, precision="uint8", image_size=cfg.image_size, n=n,
                            note="histokit.data.tile_cache.decode_resize_torchvision", key="decode/cuda_resize/jpeg"))
    return rows


def run_extraction_section(cfg, device: torch.device, workdir: Path, log=print) -> SectionResult:
    result = SectionResult()
    n, bs, size = cfg.e2e_images, cfg.e2e_batch_size, cfg.image_size
    n_unique = min(n, 100)
    paths, labels = write_tile_files(Path(workdir), n_unique)
    reps = [i % n_unique for i in range(n)]
    classes = [f"class_{i}" for i in range(max(labels) + 1)]
    datasets = {fmt: PatchDataset([Sample(paths[fmt][i], labels[i]) for i in reps], classes,
                                  eval_transform(size), name=f"kather2016-tiny-{fmt}") for fmt in FORMATS}

    log("  extraction: tile cache build")
    t0 = time.perf_counter()
    cache = build_tile_cache(datasets["png"].with_transform(None), Path(workdir) / "tiles.npy", size)
    build_s = time.perf_counter() - t0
    result.rows.append(Row("extraction", f"tile cache build from PNG ({size} px, PIL)", n / build_s, "img/s",
                           batch_size=1, precision="uint8", image_size=size, n=n,
                           note="decode + resize + write + sha256, one process, once per dataset",
                           key="extraction/cache_build"))

    torch.manual_seed(0)
    encoder = create_encoder(cfg.e2e_backbone, img_size=size).eval().to(device)
    fmt_layout = torch.channels_last if is_convnet(encoder) else torch.contiguous_format
    encoder.to(memory_format=fmt_layout)
    x = torch.randn(n, 3, size, size, device=device)
    batches = [x[i:i + bs].contiguous(memory_format=fmt_layout) for i in range(0, n, bs)]
    workers = auto_num_workers(device)
    last = {}

    def model_only():
        with torch.inference_mode(), autocast_context(device, cfg.precision):
            for b in batches:
                encoder.model(b)

    def kit(ds, name):
        def run():
            last[name] = extract_features(encoder, ds, batch_size=bs, device=device, precision=cfg.precision,
                                          num_workers="auto", progress=False).timing
        return run

    fns = {"model": model_only, **{fmt: kit(datasets[fmt], fmt) for fmt in FORMATS}, "cache": kit(cache, "cache")}
    log(f"  extraction: {cfg.e2e_backbone}, {n} images, model-only vs files vs cache")
    times = timed_runs(fns, warmup=cfg.warmup, repeats=cfg.repeats, device=device, min_seconds=cfg.min_run_s)
    model_s = median(times["model"])
    common = dict(batch_size=bs, precision=cfg.precision, image_size=size, n=n)
    result.rows.append(Row("extraction", f"{cfg.e2e_backbone}: model-only (bare timm forward, in-memory tensors)",
                           n / model_s, "img/s", note=f"median of {cfg.repeats} samples of {times.passes} "
                                                     f"pass(es); spread {100 * spread(times['model']):.1f} %",
                           key="extraction/model", **common))
    for name in (*FORMATS, "cache"):
        s = median(times[name])
        t = last[name]
        what = f"{name.upper()} files (load_image + eval_transform)" if name in FORMATS else \
            "decoded-tile cache (uint8 memmap, normalized on the device)"
        result.rows.append(Row(
            "extraction", f"{cfg.e2e_backbone}: kit end-to-end from {what}", n / s, "img/s",
            paired_ratio(times["model"], times[name]), "model-only (paired)",
            note=(f"{t['num_workers']} DataLoader workers (num_workers='auto'); "
                                f"model share {100 * t['model_s'] / t['total_s']:.1f} %; "
                                f"spread {100 * spread(times[name]):.1f} %"),
            key=f"extraction/ratio/{name}", **common))
    ratio = paired_ratio(times["model"], times["cache"])
    if device.type == "cuda" and ratio < E2E_CACHE_RATIO_MIN:
        t = last["cache"]
        result.profiles["e2e_cache"] = [
            f"cache path / model-only = {ratio:.3f}; kit wall {t['total_s']:.3f} s, GPU model time "
            f"{t['model_s']:.3f} s "
            f"({100 * t['model_s'] / t['total_s']:.1f} %): the remainder is loading + host-to-device copy.\n"
            "cProfile of one cache run:\n" + profile_top(kit(cache, "cache"))]

    log("  extraction: decode throughput per core")
    result.rows += _decode_rows(paths, cfg, device)
    result.notes.append(
        f"{n} images ({n_unique} distinct real tiles, repeated), batch {bs}; DataLoader workers = "
        f"`num_workers='auto'` = {workers} here (a CPU device gives the cores to the forward pass). Ratios are "
        "throughput relative to model-only on random in-memory tensors of the same size, same process.")
    return result
