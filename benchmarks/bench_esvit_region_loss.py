"""Peak host memory of EsViT's loss (view + region level) at full size, before and after the region loss computed
each student view's log-softmax once (commit 953e2ec), measured on the CPU.

``python benchmarks/bench_esvit_region_loss.py`` runs each variant in its own process (so one variant's freed memory
cannot hide the other's peak) and writes ``results/speed/esvit_region_loss_memory.md``. Shapes are a batch-32
EsViT step of the paper's recipe: Swin-T at 224 px (7 x 7 = 49 final regions, 768-d features) for 2 global views,
96 px (3 x 3 = 9 regions) for 8 local views, 65,536 prototypes, the student and teacher logits as the heads emit them
(fp32). Only the loss (forward + backward) is measured, on logits of the real shapes, because that is where the
memory goes; a whole Swin-T step at batch 32 does not fit this machine's time. Peak = ``ru_maxrss`` of the child
after the loss minus its resident set once the inputs exist.

    before: the formula of histokit 037b74d (per teacher-student pair: an fp32 copy and a log-softmax of the
            student's (B, T, K) logits, and the matched teacher rows gathered into another (B, T, K) tensor)
    after:  histokit.ssl.esvit.EsViTLoss (one log-softmax per student view; the matched cross-entropy read off
            log P_s @ P_t^T)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

B, K, D = 32, 65536, 768
GLOBAL_T, LOCAL_T, N_GLOBAL, N_LOCAL = 49, 9, 2, 8
REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "speed" / "esvit_region_loss_memory.md"


def _gib(n_floats: int) -> str:
    return f"{n_floats * 4 / 2**30:.2f}"


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _inputs(torch):
    g = torch.Generator().manual_seed(0)
    regions = [GLOBAL_T] * N_GLOBAL + [LOCAL_T] * N_LOCAL
    s_view = [torch.randn(B, K, generator=g).requires_grad_() for _ in regions]
    s_region = [torch.randn(B, t, K, generator=g).requires_grad_() for t in regions]
    s_feat = [torch.randn(B, t, D, generator=g) for t in regions]
    t_view = [torch.randn(B, K, generator=g) for _ in range(N_GLOBAL)]
    t_region = [torch.randn(B, GLOBAL_T, K, generator=g) for _ in range(N_GLOBAL)]
    t_feat = [torch.randn(B, GLOBAL_T, D, generator=g) for _ in range(N_GLOBAL)]
    return s_view, s_region, s_feat, t_view, t_region, t_feat


def _before(loss_fn, s_view, s_region, s_feat, t_view, t_region, t_feat, teacher_temp):
    """EsViTLoss.forward and region_loss as they were at 037b74d."""
    import torch
    import torch.nn.functional as F

    from histokit.ssl.dino import cross_entropy_soft
    from histokit.ssl.esvit import match_regions

    def region_loss(student_logits, teacher_probs, student_feats, teacher_feats):
        idx = match_regions(student_feats, teacher_feats)
        matched = torch.gather(teacher_probs, 1, idx.unsqueeze(-1).expand(-1, -1, teacher_probs.shape[-1]))
        return cross_entropy_soft(matched, student_logits).mean(dim=-1)

    t_view_probs = [F.softmax((t.float() - loss_fn.center) / teacher_temp, dim=-1).detach() for t in t_view]
    t_region_probs = [F.softmax((t.float() - loss_fn.center_grid) / teacher_temp, dim=-1).detach() for t in t_region]
    total, n_terms = 0.0, 0
    for iq, (q_view, q_region) in enumerate(zip(t_view_probs, t_region_probs)):
        for v in range(len(s_view)):
            if v == iq:
                continue
            view_term = cross_entropy_soft(q_view, s_view[v].float() / loss_fn.student_temp)
            region_term = region_loss(s_region[v].float() / loss_fn.student_temp, q_region, s_feat[v].detach(),
                                      t_feat[iq])
            total = total + (0.5 * view_term + 0.5 * region_term).mean()
            n_terms += 1
    loss_fn.update_centers(torch.cat(list(t_view)), torch.cat([t.flatten(0, 1) for t in t_region]))
    return total / n_terms


def child(variant: str) -> dict:
    import torch

    from histokit.ssl.esvit import EsViTLoss

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    inputs = _inputs(torch)
    loss_fn = EsViTLoss(K)
    base = _rss_mib()
    start = time.perf_counter()
    loss = _before(loss_fn, *inputs, 0.04) if variant == "before" else loss_fn(*inputs, 0.04)[0]
    loss.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    grad = sum(float(t.grad.double().abs().sum()) for t in inputs[1])
    return {"variant": variant, "inputs_mib": round(base, 0), "peak_mib": round(peak, 0),
            "peak_above_inputs_mib": round(peak - base, 0), "seconds": round(seconds, 1), "loss": float(loss),
            "region_grad_abs_sum": grad}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=("before", "after"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    rows = []
    for variant in ("before", "after"):
        out = subprocess.run([sys.executable, __file__, "--child", variant], capture_output=True, text=True,
                             env=env, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1], file=sys.stderr)
    import torch

    before, after = rows
    lines = [
        "# EsViT loss: peak host memory at full size, before and after one log-softmax per student view",
        "",
        f"Command: `OMP_NUM_THREADS={env['OMP_NUM_THREADS']} python benchmarks/bench_esvit_region_loss.py` — "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "",
        f"- Machine: CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} logical cores), Python "
        f"{platform.python_version()}, torch {torch.__version__}; each variant in its own process.",
        f"- Shapes (a batch-{B} step of the paper's recipe): Swin-T, {N_GLOBAL} global views of 224 px "
        f"({GLOBAL_T} regions) + {N_LOCAL} local views of 96 px ({LOCAL_T} regions), K = {K:,} prototypes, "
        f"{D}-d region features; fp32 logits (as the heads emit them), student logits requiring grad.",
        "- Measured: the EsViT loss alone (view + region level, forward + backward, center update) on logits of "
        "those shapes: that is where the memory goes. A whole Swin-T step at batch 32 was not run (2 shared CPU "
        "cores); its backbone and heads are the same in both variants.",
        "- peak above inputs: `ru_maxrss` after backward minus the resident set once the inputs exist (inputs: "
        "every student and teacher logit and feature tensor). Both variants include the gradients of the student "
        f"region logits ({_gib(B * (N_GLOBAL * GLOBAL_T + N_LOCAL * LOCAL_T) * K)} GiB, any backward needs them) and "
        f"the teacher region softmaxes ({_gib(B * N_GLOBAL * GLOBAL_T * K)} GiB); after adds one log-softmax per "
        f"student view ({_gib(B * (N_GLOBAL * GLOBAL_T + N_LOCAL * LOCAL_T) * K)} GiB).",
        "- before: the formula of 037b74d (per teacher-student pair, an fp32 copy and a log-softmax of the student's "
        "(B, T, K) logits and a gather of the matched teacher rows, all kept for backward); after: "
        "`histokit.ssl.esvit.EsViTLoss` (each student view's log-softmax once, the matched cross-entropy read off "
        "log P_s @ P_t^T).",
        "",
        "| variant | inputs (MiB) | peak (MiB) | peak above inputs (MiB) | forward + backward (s) | loss |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['inputs_mib']:.0f} | {r['peak_mib']:.0f} | "
                     f"{r['peak_above_inputs_mib']:.0f} | {r['seconds']} | {r['loss']:.6f} |")
    rel = abs(before["loss"] - after["loss"]) / abs(before["loss"])
    grel = abs(before["region_grad_abs_sum"] - after["region_grad_abs_sum"]) / before["region_grad_abs_sum"]
    lines += ["", f"Peak above inputs: {before['peak_above_inputs_mib'] / 1024:.2f} GiB before, "
                  f"{after['peak_above_inputs_mib'] / 1024:.2f} GiB after. The two losses agree to a relative "
                  f"{rel:.1e} and the sums of |grad| over the region logits to {grel:.1e} (float32 summation order).",
              ""]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
