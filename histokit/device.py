"""Resolve the user's ``--device`` (auto | cpu | cuda | cuda:N) once, with a clear error when CUDA is absent; set the
backend flags (cuDNN autotuning, TF32, float32 matmul precision) every training / extraction stage and the bench run
with, in one place, and say what they are for the run's provenance."""
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


def backend_settings(device) -> dict:
    """The flags :func:`configure_backends` sets for ``device`` (a policy; touches nothing).

    CUDA: cuDNN autotuning on (every run feeds fixed input sizes), TF32 for float32 matmuls and convolutions
    (``float32_matmul_precision="high"``: a 10-bit mantissa, as the references' fp16 heads; the SSL losses and
    softmaxes are not matmuls and stay fp32). CPU: full float32 ("highest", torch's default), so CPU results and the
    bit-identical resume guarantee do not depend on the CPU's oneDNN build."""
    cuda = str(device).startswith("cuda")
    return {"cudnn_benchmark": cuda, "tf32_matmul": cuda, "tf32_cudnn": cuda,
            "float32_matmul_precision": "high" if cuda else "highest"}


def current_backends() -> dict:
    """The flags as torch has them now (the keys of :func:`backend_settings`, and cuDNN determinism, not set here)."""
    return {"cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic)}


def configure_backends(device) -> dict:
    """Set :func:`backend_settings` for ``device`` in this process and return :func:`current_backends`."""
    want = backend_settings(device)
    torch.backends.cudnn.benchmark = want["cudnn_benchmark"]
    torch.set_float32_matmul_precision(want["float32_matmul_precision"])  # also sets cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = want["tf32_matmul"]
    torch.backends.cudnn.allow_tf32 = want["tf32_cudnn"]
    return current_backends()
