"""``histokit doctor``: the NVIDIA driver, CUDA runtime, torch / torchvision / faiss builds and GPUs, with a clear
warning where they do not fit together.

The pinned torch is a CUDA 13 build: on an older driver ``torch.cuda.is_available()`` is just False and
``--device cuda`` fails at once with no hint why. The doctor reads the driver's CUDA version itself (from
``libcuda``, and ``nvidia-smi`` for names and memory) so it can say so, and points at the CUDA 12 lock
(``make install CUDA=12``). Each probe is a module-level function, so tests replace them with fakes.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
import warnings
from typing import Any, Optional

CUDA12_INSTALL = "make install CUDA=12"
# The oldest Linux driver of each CUDA major (NVIDIA's CUDA toolkit release notes, "minor version compatibility").
MIN_DRIVER = {12: "525.60.13", 13: "580.65.06"}


def _version_tuple(text: Optional[str]) -> tuple[int, ...]:
    out = []
    for part in str(text or "").split("."):
        digits = "".join(c for c in part if c.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def probe_driver_cuda() -> Optional[str]:
    """The newest CUDA version the installed driver supports ("12.4"), from ``cuDriverGetVersion`` in libcuda;
    None when no driver library loads. Needs no GPU context, so it works where torch's CUDA init fails."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        version = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(version)) == 0 and version.value > 0:
            return f"{version.value // 1000}.{(version.value % 1000) // 10}"
    return None


def probe_nvidia_smi() -> Optional[dict]:
    """``{"driver": "550.54.15", "gpus": [{"name", "memory_mib"}]}`` from nvidia-smi, or None without it."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"driver": None, "gpus": [], "error": str(exc)}
    if out.returncode != 0:
        return {"driver": None, "gpus": [], "error": (out.stderr or out.stdout).strip()[:300]}
    gpus, driver = [], None
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3:
            driver = parts[1]
            gpus.append({"name": parts[0], "memory_mib": int(float(parts[2])) if parts[2].replace(".", "").isdigit()
                         else None})
    return {"driver": driver, "gpus": gpus}


def probe_torch() -> dict:
    import torch

    with warnings.catch_warnings(record=True) as caught:  # torch says why CUDA failed only as a warning
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    info = {"version": torch.__version__, "cuda": torch.version.cuda, "cuda_available": available,
            "cuda_init_warning": " ".join(str(w.message) for w in caught)[:500] or None,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "arch_list": torch.cuda.get_arch_list() if torch.version.cuda else [], "devices": []}
    if available:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["devices"].append({"name": p.name, "memory_mib": int(p.total_memory // 2 ** 20),
                                    "capability": f"{p.major}.{p.minor}"})
    return info


def probe_torchvision() -> dict:
    import torch

    try:
        import torchvision
    except Exception as exc:  # an ABI mismatch with torch can raise anything at import
        return {"version": None, "ops": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    # A torchvision built for another torch imports but has no C++ ops ("operator torchvision::nms does not exist").
    return {"version": torchvision.__version__, "ops": hasattr(torch.ops.torchvision, "nms")}


def probe_faiss() -> dict:
    from .retrieval.index import faiss_build_info

    return faiss_build_info()


def collect() -> dict[str, Any]:
    """Every probe's answer, in one dict (what :func:`diagnose` reads)."""
    return {"driver_cuda": probe_driver_cuda(), "nvidia_smi": probe_nvidia_smi(), "torch": probe_torch(),
            "torchvision": probe_torchvision(), "faiss": probe_faiss()}


def diagnose(facts: dict[str, Any]) -> list[str]:
    """Warnings, each a sentence with what to do; empty when the stack fits together (or is a plain CPU setup)."""
    warn = []
    t, tv, fa = facts["torch"], facts["torchvision"], facts["faiss"]
    smi = facts.get("nvidia_smi") or {}
    driver_cuda = _version_tuple(facts.get("driver_cuda"))
    torch_cuda = _version_tuple(t.get("cuda"))
    driver_present = bool(driver_cuda) or bool(smi.get("gpus"))
    driver = smi.get("driver") or "unknown"

    if torch_cuda and driver_cuda and driver_cuda[0] < torch_cuda[0]:
        fix = (f"install the CUDA 12 build: `{CUDA12_INSTALL}`" if driver_cuda[0] == 12 else
               f"upgrade the driver to >= {MIN_DRIVER.get(torch_cuda[0], 'a newer release')}")
        warn.append(f"torch {t['version']} is built for CUDA {t['cuda']} but the NVIDIA driver ({driver}) supports "
                    f"CUDA up to {facts['driver_cuda']}: CUDA is unusable (--device cuda fails); {fix}.")
    elif driver_present and torch_cuda and not t.get("cuda_available"):
        why = f" torch says: {t['cuda_init_warning']}" if t.get("cuda_init_warning") else ""
        warn.append(f"an NVIDIA driver ({driver}, CUDA {facts.get('driver_cuda') or '?'}) is present but "
                    f"torch.cuda.is_available() is False (CUDA_VISIBLE_DEVICES, permissions on /dev/nvidia*, or a "
                    f"driver / runtime mismatch).{why}")
    if driver_present and not torch_cuda:
        warn.append(f"a GPU is present but torch {t['version']} is a CPU-only build: reinstall with `make install` "
                    f"(the CUDA build from requirements.lock), or `{CUDA12_INSTALL}` on a CUDA 12 driver.")
    if tv.get("version") is None or not tv.get("ops"):
        warn.append(f"torchvision {tv.get('version')} does not load its C++ ops against torch {t['version']} "
                    f"({tv.get('error') or 'operator torchvision::nms does not exist'}): the two are not a matching "
                    f"pair; reinstall both from one lock (`make install`).")
    else:
        tv_local, t_local = _local(tv["version"]), _local(t["version"])
        if t_local and tv_local and (t_local == "cpu") != (tv_local == "cpu"):
            warn.append(f"torch {t['version']} and torchvision {tv['version']} mix a CPU and a CUDA build.")
    gpu_faiss = [n for n in fa.get("installed", {}) if n not in ("faiss-cpu", "faiss")]
    if gpu_faiss and "faiss-cpu" in fa.get("installed", {}):
        warn.append(f"both faiss-cpu and {gpu_faiss[0]} are installed: they overwrite each other's `faiss` package; "
                    f"the one command in docs/scaling.md (GPU FAISS) leaves only {gpu_faiss[0]}.")
    if fa.get("gpu_support") and not torch_cuda:
        warn.append(f"FAISS is a GPU build ({fa.get('package')}) but torch is CPU-only: training and extraction "
                    f"stay on the CPU.")
    if fa.get("gpu_support") and t.get("cuda_available") and not fa.get("num_gpus"):
        warn.append(f"torch sees {len(t.get('devices', []))} GPU(s) but the FAISS GPU build sees none: faiss-gpu is "
                    f"a CUDA 12 build and needs a driver >= {MIN_DRIVER[12]}; the search falls back to torch on the GPU.")
    return warn


def _local(version: Optional[str]) -> Optional[str]:
    return str(version).split("+", 1)[1] if version and "+" in str(version) else None


def format_report(facts: dict[str, Any], warnings_: list[str]) -> str:
    t, tv, fa = facts["torch"], facts["torchvision"], facts["faiss"]
    smi = facts.get("nvidia_smi")
    lines = ["histokit doctor"]
    if smi is None:
        lines.append("  nvidia-smi:   not found")
    elif smi.get("error"):
        lines.append(f"  nvidia-smi:   failed: {smi['error']}")
    lines.append(f"  driver:       {(smi or {}).get('driver') or 'none found'}; supports CUDA "
                 f"{facts.get('driver_cuda') or '- (no libcuda)'}")
    lines.append(f"  torch:        {t['version']} (CUDA runtime {t.get('cuda') or 'none: CPU build'}, cuDNN "
                 f"{t.get('cudnn') or '-'}); cuda available: {t.get('cuda_available')}")
    if t.get("arch_list"):
        lines.append(f"  torch archs:  {' '.join(t['arch_list'])}")
    lines.append(f"  torchvision:  {tv.get('version')} (C++ ops {'load' if tv.get('ops') else 'missing'})")
    lines.append(f"  faiss:        {fa.get('package')} {fa.get('package_version')} (faiss {fa.get('version')}, GPU "
                 f"support {fa.get('gpu_support')}, GPUs seen {fa.get('num_gpus')})")
    gpus = t.get("devices") or [dict(g, capability="?") for g in (smi or {}).get("gpus", [])]
    lines.append(f"  GPUs:         {len(gpus)}")
    for i, g in enumerate(gpus):
        mem = f"{g['memory_mib'] / 1024:.1f} GiB" if g.get("memory_mib") else "? GiB"
        lines.append(f"    {i}: {g['name']}, {mem}, compute capability {g.get('capability', '?')}")
    if not gpus and not warnings_:
        lines.append("  no NVIDIA GPU: the kit runs on the CPU (--device cpu).")
    search = ("faiss-gpu" if fa.get("gpu_support") and fa.get("num_gpus") else
              "torch exact search on the GPU" if t.get("cuda_available") else "faiss-cpu (no usable GPU)")
    lines.append(f"  search with --device cuda: {search}")
    lines += [f"WARNING: {w}" for w in warnings_] or ["OK: no mismatch found."]
    return "\n".join(lines)


def run_doctor() -> tuple[str, int]:
    """(report text, exit status: 1 when there is a warning, else 0)."""
    facts = collect()
    found = diagnose(facts)
    return format_report(facts, found), 1 if found else 0
