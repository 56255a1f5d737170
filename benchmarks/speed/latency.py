"""Section 5: batch-1 query latency (feature extraction of one tile + top-10 search of the gallery), the quantity
Habijan et al. report as retrieval latency (8.7-16.7 ms on an A100), through the kit's ``retrieval_latency_ms``."""
from __future__ import annotations

import time

import numpy as np
import torch

from histokit.models.backbones import create_encoder
from histokit.retrieval.features import synchronize
from histokit.retrieval.index import build_index
from histokit.retrieval.metrics import retrieval_latency_ms
from .rows import Row, SectionResult
from .synthetic import make_retrieval_data
from .targets import LATENCY_H100_MAX_MS, PAPER_LATENCY_MS
from .timing import median, profile_top


def _torch_exact_search_ms(gallery: np.ndarray, device: torch.device, k: int, repeats: int) -> float:
    """Batch-1 exact top-k as one matmul + topk on a device-resident gallery: the search a GPU could do in place of
    CPU FAISS (faiss-cpu is the pinned build)."""
    g = torch.from_numpy(gallery).to(device)
    q = g[:1].clone()
    times = []
    with torch.inference_mode():
        for i in range(repeats + 3):
            synchronize(device)
            t0 = time.perf_counter()
            torch.topk(q @ g.T, k, dim=1)
            synchronize(device)
            if i >= 3:
                times.append(1000 * (time.perf_counter() - t0))
    return median(times)


def run_latency_section(cfg, device: torch.device, flat_index, gallery: np.ndarray, log=print) -> SectionResult:
    result = SectionResult()
    size = cfg.latency_image_size
    for name in cfg.latency_backbones:
        log(f"  latency: {name}")
        torch.manual_seed(0)
        encoder = create_encoder(name, img_size=size).eval()
        index = flat_index
        if encoder.embed_dim != flat_index.d:  # e.g. Swin-T's 768-d: a gallery of the same size in its dimension
            index = build_index(make_retrieval_data(int(flat_index.ntotal), 1, dim=encoder.embed_dim)[0],
                                device=str(device))
        elif device.type == "cuda":  # the kit searches on the run's device (GPU FAISS, else the torch search)
            index = build_index(gallery, device=str(device))
        out = retrieval_latency_ms(encoder, index, size, device=device, repeats=cfg.latency_repeats, k=cfg.k,
                                   warmup=3, precision=cfg.precision)
        common = dict(batch_size=1, precision=cfg.precision, image_size=size, n=int(index.ntotal))
        result.rows += [
            Row("latency", f"{name}: batch-1 query latency (feature + search)", out["latency_ms"], "ms",
                PAPER_LATENCY_MS / out["latency_ms"], "Habijan et al.'s fastest (8.7 ms, A100) / this",
                note=f"median of {cfg.latency_repeats}, p90 {out['latency_ms_p90']:.2f} ms; in-memory tensor, "
                     "no decoding", key=f"latency/total/{name}", **common),
            Row("latency", f"{name}: of which feature extraction", out["extraction_ms"], "ms",
                key=f"latency/extract/{name}", **common),
            Row("latency", f"{name}: of which exact search ({out['search_backend']} on {out['search_device']})",
                out["search_ms"], "ms",
                note=f"{index.d}-d gallery" + ("; faiss-cpu: one query scans the gallery on one thread"
                                               if out["search_backend"] == "faiss-cpu" else ""),
                key=f"latency/search/{name}", **common),
        ]
        if device.type == "cuda" and "H100" in torch.cuda.get_device_name(device) and \
                out["latency_ms"] > LATENCY_H100_MAX_MS:
            x = torch.randn(1, 3, size, size, device=device)
            q = np.zeros((1, index.d), dtype=np.float32)

            def one_query():
                with torch.inference_mode():
                    encoder(x).float().cpu()
                index.search(q, cfg.k)
            result.profiles.setdefault("latency", []).append(
                f"{name}: {out['latency_ms']:.2f} ms = extraction {out['extraction_ms']:.2f} ms + search "
                f"{out['search_ms']:.2f} ms.\ncProfile of one query:\n" + profile_top(one_query))
    if device.type == "cuda":
        ms = _torch_exact_search_ms(gallery, device, cfg.k, cfg.latency_repeats)
        result.rows.append(Row("latency", "exact top-10 as a torch matmul on the GPU (gallery on the device)", ms,
                               "ms", batch_size=1, precision="fp32", n=gallery.shape[0],
                               note="not the kit's FAISS path: what a GPU-resident search would cost",
                               key="latency/torch_gpu_search"))
    result.notes.append(
        f"One {size} px tile as an in-memory tensor -> encoder -> L2 -> top-{cfg.k} of the {flat_index.ntotal:,}-item "
        "exact index; CUDA synchronized before every clock read; no image decoding (add section 2's per-core decode "
        "time for a query arriving as a file).")
    return result
