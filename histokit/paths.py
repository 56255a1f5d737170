"""Where things live: the bundled assets, the repository's results/ folder, run directories."""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"
BUNDLED_TILES_DIR = ASSETS_DIR / "kather2016_tiny" / "kather2016_tiles_224"
REPO_DIR = PACKAGE_DIR.parent
# Manifests live at the repository's top level (the user's layout); a copy is not needed for an editable install.
MANIFEST_DIR = Path(os.environ.get("HISTOKIT_MANIFEST_DIR", REPO_DIR / "data_manifests"))
NOTEBOOK_DIR = Path(os.environ.get("HISTOKIT_NOTEBOOK_DIR", REPO_DIR / "notebooks"))
RESULTS_DIR = Path(os.environ.get("HISTOKIT_RESULTS_DIR", REPO_DIR / "results"))
RUNS_DIR = Path(os.environ.get("HISTOKIT_RUNS_DIR", REPO_DIR / "runs"))
DATA_ROOT = Path(os.environ.get("HISTOKIT_DATA_ROOT", Path.home() / "histokit_data"))


def default_run_dir(paper: str, profile: str) -> Path:
    """Scratch for one paper+profile (checkpoints, features, executed notebooks): never committed."""
    return RUNS_DIR / paper / profile


def results_dir(paper: str, profile: str) -> Path:
    """Committed outputs (tables, figures, run.json) for one paper+profile."""
    return RESULTS_DIR / paper / profile
