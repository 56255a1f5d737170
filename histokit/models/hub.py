"""The Hugging Face hub as timm's weight downloads meet it: is it reachable, where its cache is, and a block in which
downloads use that cache (or only it, offline). Used by the stages, `--encoder` specs and the preflight check."""
from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """One quick TCP probe, so an offline smoke run does not sit through the hub client's retries per model."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_cache_dir() -> str:
    """The Hugging Face hub cache as the environment names it now: ``HF_HUB_CACHE``, else ``HF_HOME``/hub, else
    ``XDG_CACHE_HOME``/huggingface/hub, else ~/.cache/huggingface/hub (huggingface_hub's own rule, read at call time
    rather than at its import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "huggingface", "hub")


@contextmanager
def hub_session(*, offline: bool):
    """timm's hub downloads inside this block read and write :func:`hub_cache_dir`; ``offline``: the local cache
    only (huggingface_hub's offline mode, HF_HUB_OFFLINE=1 — no request leaves the machine, a file that is not
    cached raises). A block that raises leaves the random number generator as it found it, so a failed attempt
    (the model is built before its weights are looked for) changes no later draw, a random fallback included."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE
    rng = torch.random.get_rng_state()
    constants.HF_HUB_CACHE = hub_cache_dir()
    constants.HF_HUB_OFFLINE = bool(offline or saved[0])
    try:
        yield
    except BaseException:
        torch.random.set_rng_state(rng)
        raise
    finally:
        constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE = saved
