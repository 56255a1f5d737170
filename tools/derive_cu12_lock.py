"""Derive requirements-cu12.lock (``make install CUDA=12``, for NVIDIA drivers older than CUDA 13's r580) from
requirements.lock: the same pins, torch / torchvision as PyTorch's CUDA 12.6 builds, and without the CUDA 13
runtime wheels (cuda-*, nvidia-*, triton) that only PyPI's cu130 torch brings.

Why derived, not resolved: the cu126 wheels live on PyTorch's own index, which this project's machines cannot reach
(they reach PyPI only), so `uv pip compile` cannot resolve them here. Each torch wheel pins its CUDA runtime wheels
and triton exactly in its own metadata, so the Makefile installs torch and torchvision from that index first and
then this lock from PyPI, which keeps the installed torch (tests/test_cu12_lock.py checks the two locks agree).

    python tools/derive_cu12_lock.py            # rewrite requirements-cu12.lock
    python tools/derive_cu12_lock.py --check    # exit 1 if it is stale
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CUDA12_TAG = "cu126"
TORCH_CUDA12_INDEX = f"https://download.pytorch.org/whl/{CUDA12_TAG}"
REBUILT = ("torch", "torchvision")  # pinned to the +cu126 builds of the main lock's versions
# Brought in by torch's CUDA 13 build only; the cu126 wheel pins its own CUDA 12 runtime wheels and triton.
TORCH_CUDA_STACK = re.compile(r"^(nvidia-.*|cuda-.*|triton)$")

HEADER = f"""# Derived from requirements.lock by tools/derive_cu12_lock.py (make lock-cu12); do not edit.
# The CUDA 12 variant for NVIDIA drivers older than CUDA 13's (r580). `make install CUDA=12` installs torch and
# torchvision below from {TORCH_CUDA12_INDEX}
# first (with the CUDA 12 runtime wheels their metadata pins), then this file from PyPI.
# Not resolved here: that index is out of reach of this project's machines.
"""


def _blocks(text: str) -> list[str]:
    """Each pin with its '# via' lines; the header comment dropped."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    blocks: list[list[str]] = []
    for ln in lines:
        if not ln.startswith((" ", "#")):
            blocks.append([ln])
        elif blocks and ln.startswith(" "):
            blocks[-1].append(ln)
    return ["\n".join(b) for b in blocks]


def derive(main_lock: str) -> str:
    out = []
    for block in _blocks(main_lock):
        name, _, version = block.split("\n", 1)[0].partition("==")
        if TORCH_CUDA_STACK.match(name.lower()):
            continue
        if name.lower() in REBUILT:
            block = block.replace(f"{name}=={version}", f"{name}=={version.split('+')[0]}+{CUDA12_TAG}", 1)
        out.append(block)
    return HEADER + "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    target = ROOT / "requirements-cu12.lock"
    text = derive((ROOT / "requirements.lock").read_text())
    if "--check" in argv:
        if not target.is_file() or target.read_text() != text:
            print(f"{target.name} is stale: run python tools/derive_cu12_lock.py", file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    print(f"wrote {target.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
