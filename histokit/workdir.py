"""``histokit init DIR`` and ``--workdir``: a user's own directory for an installed histokit.

``histokit init DIR`` makes DIR a work directory (:data:`histokit.paths.WORKDIR_MARKER`), copies the stage
notebooks into ``DIR/notebooks/`` for JupyterLab, and says what to run next. Inside DIR (or any folder below it, such
as ``notebooks/``, where JupyterLab starts its kernels) ``runs/`` and ``results/`` are DIR's, so the notebooks and
``histokit reproduce`` share them. ``--workdir DIR`` (any command) names the work directory explicitly.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence


def apply_workdir(argv: Optional[Sequence[str]]) -> None:
    """Before the parser reads any folder default: ``--workdir DIR`` anywhere in ``argv`` (or, for an installed
    package, the work directory found from the current one) is exported as ``HISTOKIT_WORKDIR``, so the notebook
    kernels the command starts (in the notebooks' own folder) write to the same ``runs/`` and ``results/``."""
    from . import paths

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--workdir", default=None)
    known, _ = pre.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    if known.workdir:
        paths.set_workdir(known.workdir)
    elif not paths.IN_CLONE:
        paths.set_workdir(paths.WORK_DIR)


def init_workdir(directory: str | Path, *, force: bool = False) -> list[Path]:
    """Mark ``directory`` as a work directory and copy the stage notebooks into ``directory/notebooks``; returns
    the notebooks written. An existing notebook is kept (a user's edits) unless ``force``."""
    from . import paths

    root = Path(directory).expanduser().resolve()
    source = paths.NOTEBOOK_DIR
    notebooks = sorted(source.glob("*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"no stage notebooks in {source}: the installation is incomplete (reinstall "
                                "histokit) or HISTOKIT_NOTEBOOK_DIR points elsewhere")
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root} exists and is not a directory")
    target = root / "notebooks"
    target.mkdir(parents=True, exist_ok=True)
    marker = root / paths.WORKDIR_MARKER
    if not marker.exists():
        marker.write_text("# histokit work directory (histokit init): runs/ and results/ live here.\n")
    written = []
    for nb in notebooks:
        dest = target / nb.name
        if dest.exists() and not force:
            continue
        shutil.copyfile(nb, dest)
        written.append(dest)
    return written


def cmd_init(args: argparse.Namespace) -> int:
    try:
        written = init_workdir(args.directory, force=args.force)
    except OSError as exc:
        print(f"histokit: init: {exc}", file=sys.stderr)
        return 1
    from . import paths

    root = Path(args.directory).expanduser().resolve()
    kept = len(list(paths.NOTEBOOK_DIR.glob("*.ipynb"))) - len(written)
    print(f"[histokit] work directory {root}: {len(written)} notebook(s) copied to {root / 'notebooks'}"
          + (f"; {kept} already there kept (--force overwrites them)" if kept else ""))
    print(f"  cd {root} && histokit reproduce esvit      # tables in {root / 'results'}")
    print(f"  cd {root} && jupyter lab notebooks/        # the same stages, interactively")
    return 0


def add_init_subcommand(sub) -> None:
    init = sub.add_parser("init", help="make DIR a work directory (runs/, results/) and copy the stage notebooks "
                                       "there for JupyterLab")
    init.add_argument("directory", metavar="DIR")
    init.add_argument("--force", action="store_true", help="overwrite notebooks already in DIR/notebooks")
    init.set_defaults(func=cmd_init)
