"""Training checkpoints: everything a resumed run needs to continue bit-identically, written atomically and read
back with ``torch.load(weights_only=True)`` (so only tensors and plain containers are stored — RNG states included).
"""
from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from histokit.io import atomic_torch_save

CHECKPOINT_NAME = "checkpoint_last.pt"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (corrupt, a Git-LFS pointer, or from a different run)."""


def checkpoint_path(checkpoint_dir: str | os.PathLike) -> Path:
    return Path(checkpoint_dir) / CHECKPOINT_NAME


def _cuda_index(device) -> Optional[int]:
    """The CUDA device whose RNG a run uses: ``device`` when it is a CUDA device (``cuda`` = the current one), else
    the current device when CUDA was initialised in this process (it drew random numbers there), else None."""
    if not torch.cuda.is_available():
        return None
    if device is not None:
        device = torch.device(device)
        if device.type != "cuda":
            return None
        return device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.current_device() if torch.cuda.is_initialized() else None


def capture_rng(generator: Optional[torch.Generator] = None, device=None) -> dict[str, Any]:
    """Python, NumPy, torch CPU RNG states, the CUDA RNG state of the device the run trains on (not of every visible
    GPU: a job resumed on fewer GPUs could not restore those) and a loader's own generator, as weights_only-safe
    values. ``device``: the training device; None = the current CUDA device if this process used CUDA."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    index = _cuda_index(device)
    if index is not None:
        state["cuda_device"] = {"index": index, "state": torch.cuda.get_rng_state(index)}
    if generator is not None:
        state["loader_generator"] = generator.get_state()
    return state


def restore_rng(state: dict[str, Any], generator: Optional[torch.Generator] = None, device=None) -> None:
    """Inverse of :func:`capture_rng`. The saved CUDA state goes to this run's training device, whatever index it had
    when saved; a checkpoint of the older format (``"cuda"``: one state per GPU visible then) gives the state at this
    device's index, or none when this index was not among them. CPU, Python, NumPy: exactly as saved."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    index = _cuda_index(device if device is not None else ("cuda" if torch.cuda.is_available() else None))
    if index is not None:
        if "cuda_device" in state:
            torch.cuda.set_rng_state(state["cuda_device"]["state"], index)
        elif index < len(state.get("cuda") or []):
            torch.cuda.set_rng_state(state["cuda"][index], index)
    if generator is not None and "loader_generator" in state:
        generator.set_state(state["loader_generator"])


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Atomic ``torch.save``: the file is either the complete new checkpoint or the previous one."""
    return atomic_torch_save(payload, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` on CPU, with a clear error for an empty file, a Git-LFS pointer, an
    HTML page or a corrupt file. The file is never deleted or moved: a bad checkpoint stays for inspection."""
    from histokit.models import checkpoints as official  # lazy: the models package imports timm

    try:  # the same checks as for official weights (empty file, LFS pointer, web page)
        path = official.check_checkpoint_file(path, "the run that wrote it was interrupted outside histokit's "
                                                    "atomic save; move it away to start over")
    except official.CheckpointError as err:
        raise CheckpointError(str(err)) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # The engine only saves tensors and plain containers, so there is no trust flag here: such a file is not ours.
        detail = [line for line in str(err).splitlines() if "GLOBAL" in line or "Unsupported" in line]
        raise CheckpointError(f"{path} is not a histokit training checkpoint: torch.load(weights_only=True) refuses "
                              f"it ({detail[0].strip() if detail else 'not a weights-only pickle'}); the engine "
                              f"never loads a checkpoint with full unpickling") from err
    except Exception as err:  # zip errors, truncation: name the file
        raise CheckpointError(f"cannot load checkpoint {path}: {type(err).__name__}: {err}") from err
