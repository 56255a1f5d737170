"""What a reader needs to trust a result: git commit, package versions, device, parameters, timings."""
from __future__ import annotations

import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata

from . import paths

TRACKED_PACKAGES = ("histokit", "torch", "torchvision", "timm", "faiss-cpu", "scikit-learn", "scipy", "numpy",
                    "pandas", "pytorch-metric-learning", "torchstain", "grad-cam", "umap-learn", "papermill")


def git_commit() -> dict:
    """The repository's HEAD and whether the working tree had uncommitted changes (``None`` outside a checkout: an
    installed histokit is identified by its version, and the work directory may sit in some other repository).

    ``results/`` does not count: it is what runs write (``histokit reproduce all`` publishes one paper, then the
    report, before the next paper's run.json is written), so only changes to the code, recipes, notebooks and
    manifests make a run "dirty"."""
    def git(*args: str) -> str | None:
        if not paths.IN_CLONE:
            return None
        try:
            return subprocess.run(["git", *args], cwd=paths.REPO_DIR, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def package_versions() -> dict:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_info(device: str) -> dict:
    info = {"requested": device, "platform": platform.platform(), "python": sys.version.split()[0],
            "processor": platform.processor() or platform.machine()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name(0)
            info["cuda_version"] = torch.version.cuda
        from .device import backend_settings, resolve_device

        # what every stage's open_stage set (configure_backends); resolved here, as the stages resolved it
        info["backends"] = backend_settings(resolve_device(device))
    except (ImportError, ValueError):  # provenance must never fail a run
        pass
    return info


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
