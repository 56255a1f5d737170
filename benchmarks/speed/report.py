"""The benchmark report: ``<slug>.md`` (targets first, one table per section, profiles of missed targets) and
``<slug>.csv`` (every row, with device, versions, threads, batch size and precision), both written atomically.
One pair per device slug, so a run never overwrites another device's report."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from histokit.io import atomic_write_text
from histokit.tables import markdown_table
from .environment import threads_text, versions_text

SECTION_TITLES = {
    "model": "1. Model-only throughput vs the kit's extraction path",
    "extraction": "2. End-to-end extraction from files and from the decoded-tile cache",
    "search": "3. Search: the kit vs bare FAISS; exact vs approximate",
    "metrics": "4. Metric evaluation (mAP@10, P@10, nDCG@10)",
    "latency": "5. Batch-1 query latency (feature + search)",
    "growth": "6. Search time vs gallery size",
    "training": "7. Training input: the loader vs the training step, per SSL method",
}
GROUP_TITLES = {
    "extraction": "Throughput and ratio to model-only", "decode": "Decode throughput",
    "search": "Kit overhead over bare FAISS", "ann": "Exact vs IVF / HNSW: recall@10 vs queries/s",
}
CSV_COLUMNS = ["section", "measurement", "value", "unit", "ratio", "ratio_to", "status", "batch_size", "precision",
               "image_size", "n", "device", "device_name", "torch", "torchvision", "timm", "faiss", "numpy",
               "torch_threads", "faiss_threads", "mode", "note"]


def _table(rows, env) -> list:
    head = ["measurement", "value", "unit", "ratio", "ratio to", "batch", "precision", "px", "n", "device",
            "threads", "versions", "note"]
    return [markdown_table(head, ([r.measurement, r.value, r.unit, r.ratio, r.ratio_to, r.batch_size, r.precision,
                                   r.image_size, r.n, env["device"], threads_text(env), versions_text(env), r.note]
                                  for r in rows))]


def _load_warning(env: dict) -> str:
    load = max(env["load_average_start"], env.get("load_average_end", 0.0))
    if not load > env["cpu_cores"]:
        return ""
    return (f" **The machine was shared** (load {load} on {env['cpu_cores']} cores): absolute CPU numbers are lower "
            "and noisier than on an idle machine; ratios are taken within this run from interleaved, paired repeats.")


def render_markdown(env: dict, cfg, sections: dict, targets: list, wall_s: float) -> str:
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    gpus = f" ({env['faiss_gpus']} FAISS GPUs)" if env["faiss_gpus"] else " (CPU build)"
    lines = [
        f"# histokit performance benchmark: {env['device_name']} ({env['device']}, {cfg.mode} mode)", "",
        f"Written by `histokit speed` at {when} in {wall_s:.0f} s. Machine: {env['cpu']}, {env['cpu_cores']} usable "
        f"cores{', CUDA ' + env['cuda'] if env['cuda'] else ''}; load average {env['load_average_start']} at the "
        "start, "
        f"{env.get('load_average_end', '-')} at the end (other processes share this machine: each row's note gives "
        "the spread of its repeats)." + _load_warning(env),
        "",
        f"Versions: torch {env['torch']}, torchvision {env['torchvision']}, timm {env['timm']}, faiss {env['faiss']}"
        f"{gpus}, numpy {env['numpy']}, Pillow {env['pillow']}, Python {env['python']}. Threads: torch "
        f"{env['torch_threads']}, FAISS OpenMP {env['faiss_threads']} "
        f"({env.get('threads_reason', 'library defaults')}). Backend flags (histokit.device, as the stages set "
        f"them): {_backends_text(env.get('backends'))}. Timing: warm-up, then repeats interleaved "
        f"across the paths being compared, median ({cfg.repeats} repeats for models). Backbones are randomly "
        "initialized timm models (speed does not depend on the weights). Device, threads, versions, batch size and "
        f"precision are on every row here and in `{env['slug']}{'' if cfg.mode == 'full' else '-' + cfg.mode}.csv`.",
        "",
        "## Targets", "",
        markdown_table(["target", "measured", "status", "note"],
                       ([t.target, t.measured, t.status, t.note] for t in targets)),
    ]
    lines.append("")
    for name, title in SECTION_TITLES.items():
        result = sections[name]
        lines += [f"## {title}", ""]
        lines += [note + "\n" for note in result.notes]
        groups = list(dict.fromkeys(r.section for r in result.rows))
        for group in groups:
            if len(groups) > 1:
                lines += [f"### {GROUP_TITLES.get(group, group)}", ""]
            lines += _table([r for r in result.rows if r.section == group], env) + [""]
    lines += ["## Profiles of missed targets", ""]
    missed = [t for t in targets if t.status == "missed"]
    if not missed:
        lines += ["No measured target was missed, so nothing was profiled.", ""]
    for t in missed:
        texts = [p for s in sections.values() for p in s.profiles.get(t.id, [])]
        lines += [f"### {t.target}", ""]
        lines += [f"```text\n{p}\n```\n" for p in texts] or ["(no profile recorded for this target)", ""]
    return "\n".join(lines).rstrip() + "\n"


def csv_frame(env: dict, cfg, sections: dict, targets: list) -> pd.DataFrame:
    shared = {"device": env["device"], "device_name": env["device_name"], "torch": env["torch"],
              "torchvision": env["torchvision"], "timm": env["timm"], "faiss": env["faiss"], "numpy": env["numpy"],
              "torch_threads": env["torch_threads"], "faiss_threads": env["faiss_threads"], "mode": cfg.mode}
    records = [{**shared, "section": "targets", "measurement": t.target, "value": t.value, "unit": "",
                "ratio": None, "ratio_to": "", "status": t.status, "batch_size": None, "precision": cfg.precision,
                "image_size": None, "n": None, "note": f"measured {t.measured}; {t.note}"} for t in targets]
    for result in sections.values():
        for r in result.rows:
            records.append({**shared, "section": r.section, "measurement": r.measurement, "value": r.value,
                            "unit": r.unit, "ratio": r.ratio, "ratio_to": r.ratio_to, "status": "",
                            "batch_size": r.batch_size, "precision": r.precision, "image_size": r.image_size,
                            "n": r.n, "note": r.note})
    frame = pd.DataFrame.from_records(records, columns=CSV_COLUMNS)
    for col in ("batch_size", "image_size", "n"):
        frame[col] = frame[col].astype("Int64")
    return frame


def write_report(out_dir: Path, slug: str, env: dict, cfg, sections: dict, targets: list,
                 wall_s: float) -> dict:
    out_dir = Path(out_dir)
    md_path, csv_path = out_dir / f"{slug}.md", out_dir / f"{slug}.csv"
    atomic_write_text(csv_path, csv_frame(env, cfg, sections, targets).to_csv(index=False))
    atomic_write_text(md_path, render_markdown(env, cfg, sections, targets, wall_s))
    return {"md": md_path, "csv": csv_path}


def _backends_text(flags) -> str:
    if not flags:
        return "not recorded"
    return ", ".join(f"{k} {v}" for k, v in flags.items())
