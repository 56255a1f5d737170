"""Resolve the user's ``--device`` (auto | cpu | cuda | cuda:N) once, with a clear error when CUDA is absent."""
from __future__ import annotations

import torch


def resolve_device(device: str = "auto") -> str:
    if device in ("", "auto", None):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for, but torch sees no CUDA GPU on this machine; "
                         "use --device cpu (or auto)")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N; got device={device!r}")
    return device
