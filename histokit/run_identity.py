"""A run directory's identity: which paper, profile and recipe it is a run of, and where it is.

``histokit reproduce`` fixes the identity (no ``--param`` may set ``paper``, ``profile``, ``run_dir`` or any other
parameter the runner sets itself) and writes it once into ``<run_dir>/identity.json`` before any stage runs. Every
stage's :func:`~histokit.stages.context.open_stage` checks that the paper, profile and run directory it was handed,
and the digest of the recipe it builds from them, are the run directory's; a stage handed anything else stops before
it reads or writes an artifact. The recipe digest is also part of every stage's fingerprint, so a done-marker written
under another recipe never counts as finished, and nothing it made is published as this recipe's result.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Optional

IDENTITY_NAME = "identity.json"
IDENTITY_KEYS = ("paper", "profile", "label", "run_dir", "recipe")
# What makes one run directory another run's (refused), vs. what may change between two runs of the same
# paper + profile in it (the directory was moved, the recipe was edited: the identity is rewritten, every stage
# then runs again because its fingerprint holds the recipe digest and the run directory).
OWNER_KEYS = ("paper", "profile", "label")
# Set in the environment of the kernels ``histokit reproduce`` starts: there a stage must find the identity the runner
# wrote in its run directory (one without it is not the runner's run directory).
RUNNER_ENV = "HISTOKIT_RUNNER"


class IdentityError(RuntimeError):
    """A stage's parameters are not its run directory's, or the run directory's identity.json is damaged."""


def _plain(obj):
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        # a protocol or figure part names its kind (a class attribute, not a field) so recipe.json says which it is
        kind = {"kind": type(obj).kind} if isinstance(getattr(type(obj), "kind", None), str) else {}
        return {**kind, **{f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((_plain(v) for v in obj), key=lambda v: json.dumps(v, sort_keys=True, default=repr))
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return repr(obj)


def recipe_document(recipe) -> dict:
    """The resolved recipe as plain JSON (datasets, models, training specs, evaluations, tables, notes), repository
    paths written relative to it: what ``results/<paper>/<label>/recipe.json`` publishes beside the tables."""
    from .paths import portable

    return portable(_plain(recipe))


def recipe_digest(recipe) -> str:
    """sha256 of everything a recipe says (:func:`recipe_document`), independent of the process (set order) and of
    the clone (repository paths are written relative to it)."""
    text = json.dumps(recipe_document(recipe), sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def run_identity(paper: str, profile: str, label: str, run_dir, recipe) -> dict:
    from .paths import portable

    return {"paper": paper, "profile": profile, "label": label,
            "run_dir": portable(str(Path(run_dir).resolve())), "recipe": recipe_digest(recipe)}


def identity_path(run_dir) -> Path:
    return Path(run_dir) / IDENTITY_NAME


def read_identity(run_dir) -> Optional[dict]:
    """The identity recorded in ``run_dir`` (None when there is none); :class:`IdentityError` naming the file when it
    cannot be read or is not an identity."""
    path = identity_path(run_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IdentityError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise IdentityError(f"{path} is damaged (not valid JSON: {exc}); it says which paper and profile the run "
                            "directory belongs to: delete it if this directory is the run's, or choose another "
                            "--run-dir") from None
    lacks = [k for k in OWNER_KEYS if not isinstance(data, dict) or k not in data]
    if lacks:
        raise IdentityError(f"{path} is damaged (it lacks {', '.join(lacks)}); it says which paper and profile the run "
                            "directory belongs to: delete it if this directory is the run's, or choose another "
                            "--run-dir")
    return data


def differences(expected: dict, found: dict, keys=IDENTITY_KEYS) -> list[str]:
    """``["paper='chen2022' (the run directory's: 'esvit')", ...]`` for each key where ``found`` differs."""
    return [f"{k}={expected.get(k)!r} (the run directory's: {found.get(k)!r})" for k in keys
            if expected.get(k) != found.get(k)]


def check_stage_identity(run_dir, expected: dict, *, under_runner: Optional[bool] = None) -> None:
    """What :func:`~histokit.stages.context.open_stage` checks: ``run_dir``'s identity is ``expected``.

    Under ``histokit reproduce`` (``$HISTOKIT_RUNNER`` set) the runner has written the identity; a run directory
    without one is not the runner's (``run_dir`` was overridden) and is refused. A stage run by hand (Jupyter,
    papermill) writes it the first time, and is refused by a run directory that is another run's."""
    from .io import atomic_write_json

    if under_runner is None:
        under_runner = bool(os.environ.get(RUNNER_ENV))
    found = read_identity(run_dir)
    path = identity_path(run_dir)
    if found is None:
        if under_runner:
            raise IdentityError(f"this stage was handed run_dir={str(run_dir)!r}, which is not the run directory "
                                f"histokit reproduce prepared (no {IDENTITY_NAME} there): run_dir is fixed by the "
                                "runner (--run-dir), not by a parameter")
        atomic_write_json(path, expected)
        return
    wrong = differences(expected, found, OWNER_KEYS + (("run_dir", "recipe") if under_runner else ()))
    if wrong:
        raise IdentityError(f"this stage was handed {', '.join(wrong)} ({path}): a stage runs only with the paper, "
                            "profile, recipe and run directory of its run; run it through histokit reproduce, or "
                            "give it its own run directory")
    if found != expected:  # by hand, after the recipe was edited or the directory moved: the identity follows
        atomic_write_json(path, expected)
