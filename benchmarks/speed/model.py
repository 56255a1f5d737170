"""Section 1: model-only throughput per backbone (bare timm forward on in-memory tensors) against the kit's
extraction path (``extract_features``) on the same tensors, in the same process, interleaved."""
from __future__ import annotations

import copy
import sys

import torch
from torch.utils.data import TensorDataset

from histokit.models.backbones import create_encoder
from histokit.retrieval.features import autocast_context, extract_features, is_convnet
from .rows import Row, SectionResult
from .targets import EXTRACT_RATIO_MIN
from .timing import median, paired_ratio, paired_ratio_iqr, profile_top, spread, timed_runs


def _bare_forward(model, batches, device, precision):
    def run():
        with torch.inference_mode(), autocast_context(device, precision):
            for x in batches:
                model(x)
    return run


def bench_backbone(name: str, cfg, device: torch.device) -> tuple[list, dict]:
    """Rows for one backbone, and the kit's last timing dict (its model share explains a miss)."""
    torch.manual_seed(0)
    encoder = create_encoder(name, img_size=cfg.image_size).eval().to(device)
    n, bs = cfg.batch_size * cfg.n_batches, cfg.batch_size
    x = torch.randn(n, 3, cfg.image_size, cfg.image_size, device=device)  # made on the device: no host copy
    dataset = TensorDataset(x, torch.zeros(n, dtype=torch.long, device=device), torch.arange(n, device=device))
    channels_last = is_convnet(encoder)  # the kit's rule; the bare loop gets the same memory format
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    encoder.to(memory_format=fmt)
    batches = [x[i:i + bs].contiguous(memory_format=fmt) for i in range(0, n, bs)]
    last = {}

    def kit(compile_=False):
        def run():
            last["timing"] = extract_features(encoder, dataset, batch_size=bs, device=device,
                                              precision=cfg.precision, progress=False, compile=compile_).timing
        return run

    fns = {"bare": _bare_forward(encoder.model, batches, device, cfg.precision), "kit": kit()}
    if channels_last and name == cfg.memory_format_backbone:
        plain = copy.deepcopy(encoder.model).to(memory_format=torch.contiguous_format)
        fns["bare_nchw"] = _bare_forward(plain, [b.contiguous() for b in batches], device, cfg.precision)
    if name == cfg.compile_backbone and device.type == "cuda":
        fns["kit_compiled"] = kit(compile_=True)
    try:
        times = timed_runs(fns, warmup=cfg.warmup, repeats=cfg.repeats, device=device, min_seconds=cfg.min_run_s)
    except Exception as exc:  # a compile failure must not sink the other numbers: report it and run eager only
        if "kit_compiled" not in fns:
            raise
        print(f"histokit speed: torch.compile failed for {name}: {exc}", file=sys.stderr)
        fns.pop("kit_compiled")
        times = timed_runs(fns, warmup=cfg.warmup, repeats=cfg.repeats, device=device, min_seconds=cfg.min_run_s)
        times["compile_error"] = str(exc).splitlines()[0][:200]

    common = dict(batch_size=bs, precision=cfg.precision, image_size=cfg.image_size, n=n)
    layout = "channels_last" if channels_last else "contiguous"
    bare_s, kit_s = median(times["bare"]), median(times["kit"])
    ratio = paired_ratio(times["bare"], times["kit"])  # kit throughput / bare throughput
    iqr = paired_ratio_iqr(times["bare"], times["kit"])
    rows = [
        Row("model", f"{name}: bare timm forward", n / bare_s, "img/s", note=(
            f"model(x) on in-memory tensors on the device, {layout}, inference_mode; median of {cfg.repeats} "
            f"samples of {times.passes} pass(es), "
            f"spread {100 * spread(times['bare']):.1f} %"), key=f"model/bare/{name}", **common),
        Row("model", f"{name}: kit extract_features", n / kit_s, "img/s", ratio, "bare timm forward (paired)",
            note=(f"TensorDataset on the device, L2 normalization, features to host; model share of kit time "
                  f"{100 * last['timing']['model_s'] / last['timing']['total_s']:.1f} %; spread "
                  f"{100 * spread(times['kit']):.1f} %; paired ratios IQR {iqr[0]:.3f}-{iqr[1]:.3f}"),
            key=f"model/ratio/{name}", **common),
        Row("model", f"{name}: kit ms / image (amortized)", 1000 * kit_s / n, "ms/img",
            note="kit wall time / images at this batch size, not a batch-1 latency", key=f"model/kit_ms/{name}",
            **common),
    ]
    if "bare_nchw" in times:
        nchw_s = median(times["bare_nchw"])
        rows.append(Row("model", f"{name}: bare timm forward, contiguous NCHW", n / nchw_s, "img/s",
                        paired_ratio(times["bare_nchw"], times["bare"]),
                        "channels_last speed-up (NCHW time / channels_last time)",
                        note="what the kit's channels_last rule for CNNs gains", key=f"model/nchw/{name}", **common))
    if "kit_compiled" in times:
        comp_s = median(times["kit_compiled"])
        rows.append(Row("model", f"{name}: kit extract_features, torch.compile", n / comp_s, "img/s",
                        paired_ratio(times["bare"], times["kit_compiled"]), "bare timm forward (eager)",
                        note="compilation in the warm-up, not timed",
                        key=f"model/compiled/{name}", **common))
    if "compile_error" in times:
        rows.append(Row("model", f"{name}: torch.compile", float("nan"), "-", note=f"failed: {times['compile_error']}",
                        key=f"model/compiled/{name}", **common))
    profile = None
    if ratio < EXTRACT_RATIO_MIN:
        t = last["timing"]
        profile = (f"{name}: kit / bare = {ratio:.3f}. Kit wall time {t['total_s']:.3f} s, of which model "
                   f"(forward + L2) {t['model_s']:.3f} s ({100 * t['model_s'] / t['total_s']:.1f} %): the rest is "
                   f"the kit's loop (slicing, copies, feature gather). Run-to-run spread of the bare forward "
                   f"{100 * spread(times['bare']):.1f} %, of the kit {100 * spread(times['kit']):.1f} %: a gap "
                   f"inside the spread is machine load, not the kit.\ncProfile of one kit call:\n"
                   + profile_top(kit()))
    return rows, profile


def run_model_section(cfg, device: torch.device, log=print) -> SectionResult:
    result = SectionResult(notes=[
        "Bare = the timm network's own forward over pre-built batches already on the device; kit = "
        "`histokit.retrieval.extract_features` over a TensorDataset of the same tensors (slicing, copy, forward, "
        "L2 normalization, features gathered to the host). Same memory format and precision for both; "
        "the two are interleaved repeat by repeat.",
    ])
    for name in cfg.backbones:
        log(f"  model: {name}")
        rows, profile = bench_backbone(name, cfg, device)
        result.rows += rows
        if profile:
            result.profiles.setdefault("extract", []).append(profile)
    return result
