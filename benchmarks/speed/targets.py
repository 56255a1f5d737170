"""The issue's targets, each checked against a measured row: met, missed, or not measurable here (never invented).

Habijan et al. (EUSIPCO 2025, Table I) report 7.1-14.2 ms per image for feature extraction and 8.7-16.7 ms retrieval
latency on an A100; the kit aims an order of magnitude below that on a GPU, and within a few percent of the bare
libraries it calls everywhere.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

EXTRACT_RATIO_MIN = 0.95       # kit extract_features / bare timm forward, in-memory tensors
E2E_CACHE_RATIO_MIN = 0.80     # kit from the decoded-tile cache / model-only, on a GPU
SEARCH_OVERHEAD_MAX = 0.05     # kit search / bare FAISS search - 1
EVAL_SPEEDUP_MIN = 10.0        # per-query loop / kit evaluate_retrieval, 10,000 queries x 100,000 items, CPU
LATENCY_H100_MAX_MS = 3.0      # batch-1 query (feature + search), 100k gallery, H100
PAPER_EXTRACT_MS = 7.1         # Habijan et al.'s fastest extraction, ms / image (A100)
PAPER_LATENCY_MS = 8.7         # Habijan et al.'s fastest retrieval latency, ms (A100)
NO_GPU = "not measured: no GPU on this machine"


@dataclass
class Target:
    id: str
    target: str
    measured: str
    status: str
    note: str = ""
    value: Optional[float] = None


def _status(ok: bool) -> str:
    return "met" if ok else "missed"


def evaluate_targets(sections: dict, env: dict, cfg) -> list[Target]:
    """``sections`` maps section name -> SectionResult; returns one :class:`Target` per issue target."""
    on_gpu = env["device"].startswith("cuda")
    gpu = env["device_name"] if on_gpu else ""
    out = []

    ratio_rows = [r for r in sections["model"].rows if r.key.startswith("model/ratio/")]
    if ratio_rows:
        worst = min(ratio_rows, key=lambda r: r.ratio)
        name = worst.key.rsplit("/", 1)[1]
        listed = ", ".join(f"{r.key.rsplit('/', 1)[1]} {r.ratio:.3f}" for r in ratio_rows)
        note = f"{listed}; {env['device']}, {cfg.precision}, batch {cfg.batch_size}, {cfg.image_size} px"
        iqr = re.search(r"IQR ([\d.]+)-([\d.]+)", worst.note)
        if worst.ratio < EXTRACT_RATIO_MIN and iqr and float(iqr.group(2)) >= EXTRACT_RATIO_MIN:
            note += (f". {name}'s paired ratios spread {iqr.group(1)}-{iqr.group(2)} (IQR) in this run: the miss is "
                     "inside the machine's noise; see its profile for the kit's own share")
        out.append(Target("extract", f"kit extraction >= {EXTRACT_RATIO_MIN} x bare timm throughput (every backbone)",
                          f"min {worst.ratio:.3f} ({name})", _status(worst.ratio >= EXTRACT_RATIO_MIN), note,
                          worst.ratio))

    cache = sections["extraction"].find("extraction/ratio/cache")
    if on_gpu and cache is not None:
        out.append(Target("e2e_cache", f"end-to-end from the tile cache >= {E2E_CACHE_RATIO_MIN} x model-only (GPU)",
                          f"{cache.ratio:.3f}", _status(cache.ratio >= E2E_CACHE_RATIO_MIN), gpu, cache.ratio))
    else:
        ref = f"CPU value {cache.ratio:.3f} in section 2, not the target's device" if cache is not None else ""
        out.append(Target("e2e_cache", f"end-to-end from the tile cache >= {E2E_CACHE_RATIO_MIN} x model-only (GPU)",
                          "-", NO_GPU, ref))

    overheads = [r for r in sections["search"].rows if r.key.startswith("search/overhead/")]
    if overheads:
        worst = max(overheads, key=lambda r: r.value)
        listed = ", ".join(f"{r.key.rsplit('/', 1)[1]} {r.value:+.2f} %" for r in overheads)
        out.append(Target("search", f"kit search overhead <= {100 * SEARCH_OVERHEAD_MAX:.0f} % over bare FAISS",
                          f"{worst.value:+.2f} %", _status(worst.value <= 100 * SEARCH_OVERHEAD_MAX),
                          f"{listed} (exact IndexFlatIP, {cfg.gallery:,} items)", worst.value))

    speedup = sections["metrics"].find("metrics/speedup/end_to_end")
    if speedup is not None:
        size = f"{cfg.eval_queries:,} queries x {cfg.gallery:,} items"
        status = _status(speedup.ratio >= EVAL_SPEEDUP_MIN) if cfg.at_target_size else \
            f"not measured at the target size ({cfg.mode} mode ran {size})"
        out.append(Target("eval", f"evaluation of 10,000 queries vs 100,000 items on CPU >= {EVAL_SPEEDUP_MIN:.0f}x "
                                  "faster than a per-query loop",
                          f"{speedup.ratio:.1f}x", status, f"{size}; {speedup.note}", speedup.ratio))

    lat = [r for r in sections["latency"].rows if r.key.startswith("latency/total/")]
    if on_gpu and lat:
        best = min(lat, key=lambda r: r.value)
        status = _status(best.value <= LATENCY_H100_MAX_MS) if "H100" in gpu else f"measured on {gpu}, not an H100"
        out.append(Target("latency", f"batch-1 query latency (feature + search, 100k gallery) <= "
                                     f"{LATENCY_H100_MAX_MS} ms on an H100",
                          f"{best.value:.2f} ms ({best.key.rsplit('/', 1)[1]})", status, gpu, best.value))
    else:
        ref = ", ".join(f"{r.key.rsplit('/', 1)[1]} {r.value:.1f} ms" for r in lat)
        out.append(Target("latency", f"batch-1 query latency (feature + search, 100k gallery) <= "
                                     f"{LATENCY_H100_MAX_MS} ms on an H100", "-", NO_GPU,
                          f"CPU values for reference: {ref}" if ref else ""))

    fastest = [r for r in sections["model"].rows if r.key.startswith("model/kit_ms/")]
    goal = PAPER_EXTRACT_MS / 10
    if on_gpu and fastest:
        worst = max(fastest, key=lambda r: r.value)
        out.append(Target("paper_extract", f"extraction 10x faster than Habijan et al. (<= {goal:.2f} ms / image, "
                                           "every backbone; theirs on an A100)",
                          f"max {worst.value:.3f} ms / image ({worst.key.rsplit('/', 1)[1]})",
                          _status(worst.value <= goal), gpu, worst.value))
    else:
        out.append(Target("paper_extract", f"extraction 10x faster than Habijan et al. (<= {goal:.2f} ms / image, "
                                           "every backbone; theirs on an A100)", "-", NO_GPU))
    return out
