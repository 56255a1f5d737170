"""A sidecar names what produced the file beside it; every reader checks it against what it expects.

An artifact's ``.json`` sidecar (a feature file's ``model``, ``dataset``, ``test`` and the ``run`` it was made in; a
trained encoder's ``history.json``: its run name and sha256) is written with the artifact, but a sidecar copied
along with its file vouches for the wrong thing just as well: a sha256 only proves that the file is the one the
sidecar describes, not that it is the one the reader wants. So a reader never takes a sidecar's word for *what* the
file is: :func:`check_sidecar` compares each field the reader expects (the model and dataset it asked for, the
paper, profile, recipe digest and run directory of the run reading it) with the sidecar and stops, naming the
file, the field, the expected and the found value, and what to do.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional


class SidecarError(ValueError):
    """An artifact's sidecar is missing, damaged, or describes another artifact than the one its reader expects."""


_MISSING = object()


def read_sidecar(path: str | os.PathLike, *, remedy: str = "") -> dict:
    """A sidecar's JSON object; :class:`SidecarError` naming the file when it is missing, unreadable or not one."""
    path = Path(path)
    tail = f"; {remedy}" if remedy else ""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SidecarError(f"sidecar {path} is missing{tail}") from None
    except OSError as exc:
        raise SidecarError(f"cannot read sidecar {path}: {exc.strerror or exc}{tail}") from None
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise SidecarError(f"sidecar {path} is damaged (not valid JSON: {exc}){tail}") from None
    if not isinstance(meta, dict):
        raise SidecarError(f"sidecar {path} is damaged (a JSON {type(meta).__name__}, not an object){tail}")
    return meta


def mismatches(expected: Mapping[str, Any], found: Mapping[str, Any], prefix: str = "") -> list[tuple]:
    """``[(field, expected, found), ...]`` for each field of ``expected`` that ``found`` lacks (found is
    :data:`_MISSING`) or holds another value in; a nested mapping is compared field by field (``run.recipe``)."""
    wrong = []
    for key, want in expected.items():
        name = f"{prefix}{key}"
        got = found.get(key, _MISSING) if isinstance(found, Mapping) else _MISSING
        if isinstance(want, Mapping) and isinstance(got, Mapping):
            wrong += mismatches(want, got, prefix=f"{name}.")
        elif isinstance(want, Mapping) and got is _MISSING:
            wrong += [(f"{name}.{k}", v, _MISSING) for k, v in want.items()]
        elif got is _MISSING or got != want:
            wrong.append((name, want, got))
    return wrong


def describe(wrong: list[tuple]) -> str:
    return "; ".join(f"field {name!r} is missing (expected {want!r})" if got is _MISSING
                     else f"field {name!r} is {got!r}, expected {want!r}" for name, want, got in wrong)


def check_sidecar(path: str | os.PathLike, expected: Mapping[str, Any], *, what: str = "the file beside it",
                  remedy: str = "re-run the stage that wrote it, or delete it and the file beside it",
                  meta: Optional[dict] = None) -> dict:
    """The sidecar at ``path`` (or its already-read ``meta``), after checking that every field of ``expected`` holds
    the expected value; else :class:`SidecarError`: ``sidecar P describes another artifact than WHAT: field 'model'
    is 'ResNet-50', expected 'EsViT'; REMEDY``. A field the sidecar lacks (written before the kit recorded it) is a
    mismatch too: nothing says what the file is."""
    path = Path(path)
    meta = read_sidecar(path, remedy=remedy) if meta is None else meta
    wrong = mismatches(expected, meta)
    if wrong:
        raise SidecarError(f"sidecar {path} describes another artifact than {what}: {describe(wrong)}; {remedy}")
    return meta
