"""``histokit gpucheck``: the GPU path checked in one command, in minutes, written to
``results/speed/gpucheck-<gpu>.md`` (``gpucheck-cpu.md`` on a machine without CUDA).

Parts, each through the kit's own code (the SSL registry, the training engine, its checkpoints, the retrieval
index and latency measurement; nothing reimplemented):

- ``environment``: ``histokit doctor``'s report (driver, CUDA runtime, builds, GPUs) and its warnings.
- ``ssl_step/<method>``: full-size DINO (ViT-S/16) and EsViT (Swin-T) training steps with the papers' views (2 x 224
  + 8 x 96 px) and 65,536 prototypes, through ``histokit.train.engine.train``: step time and peak memory.
- ``bf16_vs_fp32/<method>``: the same batch with and without bf16 autocast: loss and prototype-head agreement.
- ``resume_fewer_devices``: a checkpoint carrying CUDA RNG states of more GPUs than this process sees is resumed,
  and the resumed run must end where an uninterrupted one does.
- ``latency``: batch-1 retrieval latency split into feature extraction and search, with where each ran.
- ``faiss_gpu_vs_cpu`` and ``torch_search_vs_faiss``: the GPU searches return FAISS CPU's ids.

On a CPU the parts that need a GPU are skipped (said so in the report) and the others run reduced (batch 2, a
smaller gallery, CPU bf16 autocast), each saying what was reduced.
"""
from __future__ import annotations

import copy
import datetime as _dt
import os
import resource
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from .io import slug


def slugify(text: str, max_len: int = 48) -> str:
    """A file-name-safe form of a device name (``NVIDIA H200`` -> ``nvidia-h200``), as the speed benchmark names its."""
    return slug(text)[:max_len].rstrip("-") or "unknown"


PASS, FAIL, MEASURED, SKIPPED, ERROR = "pass", "FAIL", "measured", "skipped", "ERROR"
TIME_TARGET_S = 300.0


@dataclass
class GpuCheckConfig:
    """Sizes of each part; ``None`` = the size for the device (CUDA full, CPU reduced)."""

    ssl: tuple = (("dino", "vit_small_patch16_224"), ("esvit", "swin_tiny_patch4_window7_224"))
    ssl_cfg: dict = field(default_factory=dict)  # method kwargs over the paper defaults (out_dim 65,536 ...)
    batch: Optional[int] = None  # per step: 32 on CUDA (the papers' per-GPU batch), 2 on a CPU
    global_size: int = 224
    local_size: int = 96
    n_local: int = 8
    steps: int = 3  # the first warms up; step time = median of the others
    # Loose bounds that catch a broken path (overflow, a bf16 loss, NaN), not bf16's ordinary rounding: the backbone
    # and the head's MLP run in bf16 by design, and at batch 2 their rounding moved the loss by 2-3e-3 (CPU).
    bf16_loss_bound: float = 1e-2  # |loss_bf16 - loss_fp32| / |loss_fp32|
    bf16_head_bound: float = 2e-2  # total variation of the teacher softmax at temperature 0.04
    resume_encoder: str = "vit_test"  # the RNG bookkeeping is what is checked, not the model's size
    resume_cfg: dict = field(default_factory=lambda: dict(out_dim=256, hidden_dim=64, bottleneck_dim=32))
    resume_size: int = 32
    latency_encoder: str = "vit_small_patch16_224"
    latency_size: int = 224
    gallery: Optional[int] = None  # 100,000 on CUDA, 10,000 on a CPU
    latency_repeats: Optional[int] = None  # 20 on CUDA, 5 on a CPU
    search_gallery: int = 20000
    search_queries: int = 256
    search_dim: int = 384
    k: int = 10


@dataclass
class Part:
    name: str
    status: str
    result: str = ""
    note: str = ""
    values: dict = field(default_factory=dict)


def _on_cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def _peak_reset(device: torch.device) -> None:
    if _on_cuda(device):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> tuple[float, str]:
    if _on_cuda(device):
        return torch.cuda.max_memory_allocated(device) / 2 ** 20, "torch.cuda.max_memory_allocated during the steps"
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return rss_kib / 1024, "the process's peak RSS so far (a CPU has no per-step allocator statistics)"


class _FixedViews(torch.utils.data.Dataset):
    """One synthetic multi-crop sample returned for every index: the step is timed, not the augmentation
    (``histokit speed`` measures the loader)."""

    def __init__(self, n: int, n_global: int, n_local: int, global_size: int, local_size: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.views = ([torch.randn(3, global_size, global_size, generator=g) for _ in range(n_global)]
                      + [torch.randn(3, local_size, local_size, generator=g) for _ in range(n_local)])
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return self.views


def _method(name: str, encoder: str, cfg: dict, size: int, seed: int = 0):
    from .models.backbones import create_encoder
    from .ssl import create_method

    torch.manual_seed(seed)
    return create_method(name, create_encoder(encoder, img_size=size), **cfg)


def _loader(batch: int, steps: int, cfg: GpuCheckConfig, global_size: int, local_size: int):
    return torch.utils.data.DataLoader(_FixedViews(batch * steps, 2, cfg.n_local, global_size, local_size),
                                       batch_size=batch, shuffle=False, drop_last=True)


def part_ssl_step(name: str, encoder: str, device: torch.device, cfg: GpuCheckConfig, batch: int) -> Part:
    from .train.engine import train

    method = _method(name, encoder, cfg.ssl_cfg, cfg.global_size)
    loader = _loader(batch, cfg.steps, cfg, cfg.global_size, cfg.local_size)
    _peak_reset(device)
    history = train(method, loader, epochs=1, lr=1e-4, device=device, progress=False, log_every=1,
                    amp=True, seed=0)
    seconds = [h["seconds"] for h in history if "step" in h]
    steps = np.diff([0.0] + seconds)[1:] if len(seconds) > 1 else np.asarray(seconds)
    step_ms = 1000.0 * float(np.median(steps))
    peak, how = _peak_mib(device)
    precision = "bf16 autocast" if _on_cuda(device) else "fp32 (the engine's autocast is CUDA-only)"
    views = f"2 x {cfg.global_size} + {cfg.n_local} x {cfg.local_size} px"
    note = f"{encoder}, batch {batch}, {views}, {precision}; median of {len(steps)} step(s) after a warm-up step"
    if not _on_cuda(device):
        note += "; reduced: batch 2 on a CPU"
    finite = all(np.isfinite(h["loss"]) for h in history)
    return Part(f"ssl_step/{name}", MEASURED if finite else FAIL,
                f"{step_ms:.0f} ms/step, peak {peak:,.0f} MiB, loss {history[-1]['loss']:.4f}",
                note + f"; memory: {how}", {"step_ms": step_ms, "peak_mib": peak, "batch": batch})


def part_bf16(name: str, encoder: str, device: torch.device, cfg: GpuCheckConfig, batch: int) -> Part:
    method = _method(name, encoder, cfg.ssl_cfg, cfg.global_size).to(device)
    loader = _loader(batch, 1, cfg, cfg.global_size, cfg.local_size)
    views = [v.to(device) for v in next(iter(loader))]

    def loss(amp: bool):
        m = copy.deepcopy(method)
        torch.manual_seed(5)  # the same random draws in both runs
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = m(views)[0]
        return out

    l32, l16 = loss(False), loss(True)
    rel = abs(float(l16) - float(l32)) / max(abs(float(l32)), 1e-12)
    # The prototype head alone on the same fp32 features: the teacher's softmax at its sharpest temperature (0.04).
    with torch.no_grad():
        feats = method.student_encoder(views[0]).float()
        h32 = method.student_head(feats).float()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            h16 = method.student_head(feats)
        p32, p16 = torch.softmax(h32 / 0.04, -1), torch.softmax(h16.float() / 0.04, -1)
        tv = float(0.5 * (p32 - p16).abs().sum(-1).max())
        logit_err = float((h32 - h16.float()).abs().max() / 0.04)  # in the exponent of the teacher's softmax
        argmax = float((h32.argmax(-1) == h16.float().argmax(-1)).float().mean())
    ok = rel < cfg.bf16_loss_bound and tv < cfg.bf16_head_bound and l16.dtype == torch.float32
    note = (f"loss bound {cfg.bf16_loss_bound:g}, head bound {cfg.bf16_head_bound:g} (total variation of "
            f"softmax(logits / 0.04)); loss dtype under autocast {str(l16.dtype).replace('torch.', '')}")
    if not _on_cuda(device):
        note += "; reduced: CPU bf16 autocast (the same op lists as CUDA's), batch 2"
    return Part(f"bf16_vs_fp32/{name}", PASS if ok else FAIL,
                f"loss rel. diff {rel:.2e}; head TV {tv:.2e}, max logit error / 0.04 = {logit_err:.3f}, top-1 "
                f"prototype agreement {argmax:.3f}", note,
                {"loss_rel": rel, "head_tv": tv, "logit_err_over_t": logit_err, "argmax_agreement": argmax})


def part_resume(device: torch.device, cfg: GpuCheckConfig) -> Part:
    from .train.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
    from .train.engine import train

    def run(checkpoint_dir, **kw):
        method = _method("dino", cfg.resume_encoder, cfg.resume_cfg, cfg.resume_size)
        loader = _loader(2, 2, cfg, cfg.resume_size, cfg.resume_size // 2)
        return train(method, loader, epochs=2, lr=1e-4, device=device, progress=False, seed=0,
                     checkpoint_dir=checkpoint_dir, **kw)

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    saved = visible + 4
    with tempfile.TemporaryDirectory() as tmp:
        whole = run(Path(tmp) / "whole")
        run(Path(tmp) / "resumed", max_steps=2)  # stops after epoch 1 of 2, its checkpoint written
        path = checkpoint_path(Path(tmp) / "resumed")
        ckpt = load_checkpoint(path)
        # As if saved on a bigger machine: one CUDA RNG state per GPU it had (the older format) and a training device
        # index this process does not have.
        state = torch.cuda.get_rng_state(0) if visible else torch.get_rng_state()
        for rng in [ckpt["rng"], *ckpt["rng_per_rank"]]:
            rng["cuda"] = [state.clone() for _ in range(saved)]
            rng["cuda_device"] = {"index": saved - 1, "state": state.clone()}
        save_checkpoint(path, ckpt)
        resumed = run(Path(tmp) / "resumed")
    a, b = whole[-1]["loss"], resumed[-1]["loss"]
    same = bool(np.isclose(a, b, rtol=1e-4, atol=0.0)) and whole[-1]["step"] == resumed[-1]["step"]
    note = (f"{cfg.resume_encoder} DINO, 2 epochs of 2 steps; the checkpoint after epoch 1 rewritten with {saved} "
            f"CUDA RNG states (training device index {saved - 1}), resumed with {visible} GPU(s) visible")
    return Part("resume_fewer_devices", PASS if same else FAIL,
                f"resumed to step {resumed[-1]['step']}; final loss {b:.6f} vs uninterrupted {a:.6f}", note,
                {"loss_whole": a, "loss_resumed": b, "saved_states": saved, "visible": visible})


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def part_latency(device: torch.device, cfg: GpuCheckConfig) -> Part:
    from .models.backbones import create_encoder
    from .retrieval.index import build_index
    from .retrieval.metrics import retrieval_latency_ms

    gallery = cfg.gallery or (100_000 if _on_cuda(device) else 10_000)
    repeats = cfg.latency_repeats or (20 if _on_cuda(device) else 5)
    torch.manual_seed(0)
    encoder = create_encoder(cfg.latency_encoder, img_size=cfg.latency_size).eval()
    index = build_index(_unit(gallery, encoder.embed_dim, 0), device=str(device))
    out = retrieval_latency_ms(encoder, index, cfg.latency_size, device=device, repeats=repeats, k=cfg.k, warmup=3)
    note = (f"{cfg.latency_encoder} at {cfg.latency_size} px, fp32, exact top-{cfg.k} of {gallery:,} "
            f"{encoder.embed_dim}-d vectors; median of {repeats}; in-memory tensor, no decoding")
    if not _on_cuda(device):
        note += f"; reduced: a {gallery:,}-item gallery and {repeats} repeats on a CPU"
    return Part("latency", MEASURED,
                f"{out['latency_ms']:.2f} ms = extraction {out['extraction_ms']:.2f} ms ({out['extraction_device']}) "
                f"+ search {out['search_ms']:.2f} ms ({out['search_backend']} on {out['search_device']})", note,
                {k: out[k] for k in ("latency_ms", "extraction_ms", "search_ms", "extraction_device", "search_device",
                                     "search_backend")})


def _compare(index, reference, queries: np.ndarray, k: int) -> dict:
    from .retrieval.index import search

    s, i = search(index, queries, k)
    rs, ri = search(reference, queries, k)
    return {"ids_equal": float((i == ri).mean()), "max_score_diff": float(np.abs(s - rs).max())}


def _search_part(name: str, index, cfg: GpuCheckConfig, gallery: np.ndarray, note: str) -> Part:
    from .retrieval.index import build_index

    queries = _unit(cfg.search_queries, cfg.search_dim, 1)
    got = _compare(index, build_index(gallery), queries, cfg.k)
    # Two float32 matmul orders can swap exact near-ties, so not every id need match.
    ok = got["ids_equal"] >= 0.999 and got["max_score_diff"] < 1e-4
    return Part(name, PASS if ok else FAIL,
                f"ids equal {got['ids_equal']:.4f}, max score diff {got['max_score_diff']:.1e}",
                note + f"; {len(gallery):,} x {cfg.search_dim} unit vectors, {cfg.search_queries} queries, "
                       f"top-{cfg.k}; pass: >= 99.9% ids equal, scores within 1e-4", got)


def part_faiss_gpu(device: torch.device, cfg: GpuCheckConfig) -> Part:
    from .retrieval import index as index_mod

    if not _on_cuda(device):
        return Part("faiss_gpu_vs_cpu", SKIPPED, note="no CUDA device")
    if not index_mod._gpu_available():
        return Part("faiss_gpu_vs_cpu", SKIPPED, note=f"{index_mod.no_gpu_reason()} (GPU FAISS: the gpu extra, "
                                                      f"docs/scaling.md)")
    gallery = _unit(cfg.search_gallery, cfg.search_dim, 0)
    gpu = index_mod.build_index(gallery, device=str(device), backend="faiss")
    return _search_part("faiss_gpu_vs_cpu", gpu, cfg, gallery, "FAISS IndexFlatIP on the GPU vs on the CPU")


def part_torch_search(device: torch.device, cfg: GpuCheckConfig) -> Part:
    from .retrieval.index import build_index

    gallery = _unit(cfg.search_gallery, cfg.search_dim, 0)
    index = build_index(gallery, device=str(device), backend="torch")
    note = f"the torch exact search (the CUDA path without faiss-gpu) on {device} vs FAISS CPU"
    if not _on_cuda(device):
        note += "; reduced: the torch search on the CPU"
    return _search_part("torch_search_vs_faiss", index, cfg, gallery, note)


def _guard(name: str, fn: Callable[[], Part]) -> Part:
    """One part's failure (an exception) is reported and the others still run."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - every failure becomes a report line
        last = traceback.format_exc().strip().splitlines()[-3:]
        return Part(name, ERROR, f"{type(exc).__name__}: {exc}"[:300], " | ".join(s.strip() for s in last)[:400])


def report_name(device: torch.device) -> str:
    if _on_cuda(device):
        return "gpucheck-" + slugify(torch.cuda.get_device_name(device).replace("NVIDIA", "")) + ".md"
    return "gpucheck-cpu.md"


def run_gpucheck(out_dir: Optional[str | Path] = None, device: str = "auto", cfg: Optional[GpuCheckConfig] = None,
                 log: Callable[[str], Any] = print) -> dict:
    """Run every part on ``device`` (auto: CUDA if torch sees one), write the report; returns ``{"path", "parts",
    "seconds", "status"}`` (status 1 when a part failed or raised)."""
    from .device import resolve_device
    from .doctor import collect, diagnose, format_report
    from .paths import RESULTS_DIR

    cfg = cfg or GpuCheckConfig()
    dev = torch.device(resolve_device(device))
    if _on_cuda(dev) and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    batch = cfg.batch or (32 if _on_cuda(dev) else 2)
    t0 = time.perf_counter()
    facts = collect()
    warnings_ = diagnose(facts)
    doctor_text = format_report(facts, warnings_)
    parts = [Part("environment", FAIL if warnings_ else PASS,
                  f"{len(warnings_)} warning(s)" if warnings_ else "no mismatch", "histokit doctor, below")]
    jobs: list[tuple[str, Callable[[], Part]]] = []
    for name, encoder in cfg.ssl:
        jobs.append((f"ssl_step/{name}", lambda n=name, e=encoder: part_ssl_step(n, e, dev, cfg, batch)))
    for name, encoder in cfg.ssl:
        jobs.append((f"bf16_vs_fp32/{name}", lambda n=name, e=encoder: part_bf16(n, e, dev, cfg, batch)))
    jobs += [("resume_fewer_devices", lambda: part_resume(dev, cfg)), ("latency", lambda: part_latency(dev, cfg)),
             ("faiss_gpu_vs_cpu", lambda: part_faiss_gpu(dev, cfg)),
             ("torch_search_vs_faiss", lambda: part_torch_search(dev, cfg))]
    for name, fn in jobs:
        log(f"[gpucheck] {name} ...")
        start = time.perf_counter()
        part = _guard(name, fn)
        part.values["seconds"] = round(time.perf_counter() - start, 2)
        log(f"[gpucheck] {name}: {part.status} {part.result}".rstrip())
        parts.append(part)
    seconds = time.perf_counter() - t0
    out = Path(out_dir) if out_dir is not None else RESULTS_DIR / "speed"
    out.mkdir(parents=True, exist_ok=True)
    path = out / report_name(dev)
    path.write_text(format_markdown(parts, dev, seconds, doctor_text, batch))
    status = 1 if any(p.status in (FAIL, ERROR) for p in parts) else 0
    return {"path": path, "parts": parts, "seconds": seconds, "status": status}


def format_markdown(parts: list[Part], device: torch.device, seconds: float, doctor_text: str, batch: int) -> str:
    name = torch.cuda.get_device_name(device) if _on_cuda(device) else "CPU (no CUDA device)"
    skipped = [p for p in parts if p.status == SKIPPED]
    ran = [p for p in parts if p.status != SKIPPED]
    lines = [f"# GPU check: {name}", "",
             f"`histokit gpucheck` on {device}, {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}: "
             f"{len(ran)} part(s) run, {len(skipped)} skipped, in {seconds:.0f} s "
             f"({'within' if seconds <= TIME_TARGET_S else 'over'} the {TIME_TARGET_S / 60:.0f}-minute target). "
             f"SSL steps at batch {batch}; {torch.get_num_threads()} torch thread(s), load average "
             f"{os.getloadavg()[0]:.1f} at the end (other processes share a loaded machine's cores).", ""]
    if not _on_cuda(device):
        lines += ["Reduced CPU form: the parts that need a GPU are skipped; the others run smaller (each row says how). "
                  "Its numbers show that the code runs, not what a GPU does.", ""]
    lines += ["| part | status | result | seconds | conditions |", "| --- | --- | --- | ---: | --- |"]
    for p in parts:
        cell = (lambda s: s.replace("|", "\\|"))
        lines.append(f"| {p.name} | {p.status} | {cell(p.result)} | {p.values.get('seconds', '')} | {cell(p.note)} |")
    lines += ["", "## Run", ""] + [f"- {p.name}" for p in ran]
    lines += ["", "## Skipped", ""] + ([f"- {p.name}: {p.note}" for p in skipped] or ["- none"])
    lines += ["", "## Environment (`histokit doctor`)", "", "```", doctor_text, "```", ""]
    return "\n".join(lines)
