"""Where things live: the bundled assets, the manifests and notebooks, the results/ folder, run directories.

Two layouts, one rule each:

* **A clone** (``histokit/`` next to ``pyproject.toml`` and ``data_manifests/``, e.g. an editable install): the
  manifests and notebooks are the repository's own, and ``results/`` and ``runs/`` are the repository's.
* **An installed wheel** (``pip install histokit``): the manifests and notebooks ship inside the package
  (``histokit/_shipped/``, copied there by setup.py's build step), and a **work directory** holds ``runs/`` and
  ``results/``: ``--workdir DIR`` (which sets ``HISTOKIT_WORKDIR``), else the nearest directory from the current one
  upwards that ``histokit init`` marked (:data:`WORKDIR_MARKER`), else the current directory.

``HISTOKIT_WORKDIR`` moves ``runs/`` and ``results/`` in a clone too; ``HISTOKIT_MANIFEST_DIR``,
``HISTOKIT_NOTEBOOK_DIR``, ``HISTOKIT_RESULTS_DIR`` and ``HISTOKIT_RUNS_DIR`` override one folder each.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"
BUNDLED_TILES_DIR = ASSETS_DIR / "kather2016_tiny" / "kather2016_tiles_224"
SHIPPED_DIR = PACKAGE_DIR / "_shipped"          # the wheel's copies of data_manifests/ and notebooks/
WORKDIR_MARKER = ".histokit-workdir"            # written by `histokit init DIR`
_CLONE_DIR = PACKAGE_DIR.parent
IN_CLONE = (_CLONE_DIR / "pyproject.toml").is_file() and (_CLONE_DIR / "data_manifests").is_dir()


def find_workdir(start: Optional[Path] = None) -> Path:
    """The work directory of an installed histokit: ``HISTOKIT_WORKDIR``, else the nearest directory from ``start``
    (default: the current one) upwards holding :data:`WORKDIR_MARKER`, else ``start`` itself."""
    if os.environ.get("HISTOKIT_WORKDIR"):
        return Path(os.environ["HISTOKIT_WORKDIR"]).expanduser().resolve()
    start = Path.cwd() if start is None else Path(start)
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / WORKDIR_MARKER).is_file():
            return folder
    return start


def _resolve() -> None:
    """(Re)compute the folders from the environment: at import, and after :func:`set_workdir`."""
    global WORK_DIR, REPO_DIR, MANIFEST_DIR, NOTEBOOK_DIR, RESULTS_DIR, RUNS_DIR, DATA_ROOT
    if IN_CLONE and not os.environ.get("HISTOKIT_WORKDIR"):
        WORK_DIR = _CLONE_DIR
    else:
        WORK_DIR = find_workdir()
    # The project root that run.json and fingerprints make paths relative to: the clone, or the work directory.
    REPO_DIR = _CLONE_DIR if IN_CLONE else WORK_DIR
    shipped_from = _CLONE_DIR if IN_CLONE else SHIPPED_DIR
    MANIFEST_DIR = Path(os.environ.get("HISTOKIT_MANIFEST_DIR", shipped_from / "data_manifests"))
    NOTEBOOK_DIR = Path(os.environ.get("HISTOKIT_NOTEBOOK_DIR", shipped_from / "notebooks"))
    RESULTS_DIR = Path(os.environ.get("HISTOKIT_RESULTS_DIR", WORK_DIR / "results"))
    RUNS_DIR = Path(os.environ.get("HISTOKIT_RUNS_DIR", WORK_DIR / "runs"))
    DATA_ROOT = Path(os.environ.get("HISTOKIT_DATA_ROOT", Path.home() / "histokit_data"))


WORK_DIR: Path
REPO_DIR: Path
MANIFEST_DIR: Path
NOTEBOOK_DIR: Path
RESULTS_DIR: Path
RUNS_DIR: Path
DATA_ROOT: Path
_resolve()


def set_workdir(directory: str | os.PathLike) -> Path:
    """``--workdir DIR``: ``runs/`` and ``results/`` under DIR, for this process and the kernels it starts (it sets
    ``HISTOKIT_WORKDIR``). Call it before anything reads the folders (the CLI does, first thing)."""
    path = Path(directory).expanduser().resolve()
    os.environ["HISTOKIT_WORKDIR"] = str(path)
    _resolve()
    return path


def default_run_dir(paper: str, profile: str) -> Path:
    """Scratch for one paper+profile (checkpoints, features, executed notebooks): never committed."""
    return RUNS_DIR / paper / profile


def results_dir(paper: str, profile: str) -> Path:
    """Outputs (tables, figures, run.json) for one paper+profile (committed, in the clone)."""
    return RESULTS_DIR / paper / profile


def portable(value, root: Optional[Path] = None):
    """``value`` with every absolute path under ``root`` made relative to it (``runs/esvit/smoke``) and every path
    under the home directory written ``~/...``, so a fingerprint or a published ``run.json`` is the same in every
    clone and for every user; paths elsewhere stay absolute."""
    root = REPO_DIR if root is None else root
    if isinstance(value, dict):
        return {k: portable(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v, root) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        resolved = Path(value).resolve()
        for base, prefix in ((root.resolve(), ""), (Path.home().resolve(), "~/")):
            try:
                return prefix + resolved.relative_to(base).as_posix()
            except ValueError:
                continue
    return value


