"""The machine and software a benchmark ran on, and the file name its report gets (one per device)."""
from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import faiss
import numpy as np
import PIL
import timm
import torch
import torchvision

from histokit.gpucheck import slugify  # noqa: F401  (one definition: gpucheck names its report the same way)
from histokit.retrieval.features import usable_cpus


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown cpu"


def device_slug(device: str) -> str:
    """``cpu-<cpu model>`` or ``cuda-<gpu name>``: the report's file name, so devices never overwrite each other."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return "cuda-" + slugify(torch.cuda.get_device_name(dev).replace("NVIDIA", ""))
    model = re.sub(r"\((r|tm)\)|\b(cpu|processor)\b|@.*$|\d+-core", "", cpu_model(), flags=re.I)
    return "cpu-" + slugify(model)


def bench_threads(cores: int, load: float) -> tuple[int, str]:
    """Intra-op threads for a CPU benchmark: the cores the 1-minute load average leaves free, at least one.

    With more runnable threads than cores, an OpenMP team whose member another process preempts stalls at every
    parallel region: on a shared 2-core machine at load 5, a ViT-S forward ran 2-6x slower on 2 threads than on 1.
    ``OMP_NUM_THREADS`` set by the user wins.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads(), "OMP_NUM_THREADS set by the user"
    free = max(1, min(cores, int(cores - load + 0.5)))
    if free == cores:
        return free, "all usable cores (the machine was idle)"
    return free, (f"{free} of {cores} cores: the load average ({load:.1f}) showed other processes on the rest, and "
                  "oversubscribed OpenMP teams stall")


def environment(device: str) -> dict:
    dev = torch.device(device)
    on_cuda = dev.type == "cuda"
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if on_cuda else cpu_model(),
        "slug": device_slug(device),
        "cpu": cpu_model(),
        "cpu_cores": usable_cpus(),
        "cuda": torch.version.cuda if on_cuda else "",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "faiss": faiss.__version__,
        "faiss_gpus": faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "load_average_start": round(load[0], 2),
    }


def versions_text(env: dict) -> str:
    return f"torch {env['torch']}, timm {env['timm']}, faiss {env['faiss']}, numpy {env['numpy']}"


def threads_text(env: dict) -> str:
    return f"torch {env['torch_threads']} / faiss {env['faiss_threads']}"
