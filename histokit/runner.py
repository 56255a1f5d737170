"""``histokit reproduce``: run the stage notebooks with papermill, one run directory per paper + profile.

A run directory holds the scratch (splits, checkpoints, features, indexes, executed notebooks) and a ``results/``
folder; when every stage has finished, the results are published to ``results/<paper>/<profile>/`` with
``run.json``. A stage that finished with the same parameters and the same notebook is skipped, so a killed run
resumes at the stage it was in.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from . import paths
from .io import atomic_write_json
from .provenance import device_info, git_commit, now_iso, package_versions

STAGES = ("01_data", "02_pretrain", "03_finetune", "04_index", "05_evaluate", "06_ablations", "07_visualize")
PROFILES = ("smoke", "full")
KERNEL_NAME = "python3"


class RunnerError(RuntimeError):
    """A refused request (unknown paper / profile / stage / parameter) or a failed stage."""


class StageFailed(RunnerError):
    def __init__(self, stage: str, notebook: Path, cell: Optional[int], ename: str, evalue: str):
        self.stage, self.notebook, self.cell = stage, notebook, cell
        where = f"cell {cell}" if cell is not None else "an unknown cell"
        super().__init__(f"stage {stage} failed in {where} of the executed notebook {notebook}: {ename}: {evalue}\n"
                         f"The executed copy is kept there; fix the cause and re-run: finished stages are skipped.")


@dataclass
class StageRecord:
    stage: str
    status: str  # ran | skipped
    seconds: float
    executed_notebook: str


@dataclass
class RunResult:
    paper: str
    profile: str
    run_dir: Path
    results_dir: Optional[Path]
    stages: list[StageRecord] = field(default_factory=list)


def notebook_path(stage: str) -> Path:
    return paths.NOTEBOOK_DIR / f"{stage}.ipynb"


def declared_parameters(notebook: Path) -> dict:
    """Parameters a notebook declares in its cell tagged ``parameters`` (name -> default)."""
    import papermill

    params = papermill.inspect_notebook(str(notebook))
    return {name: spec.get("default") for name, spec in params.items()}


def select_stages(only: Optional[Iterable[str]] = None, start: Optional[str] = None) -> list[str]:
    def check(name: str) -> str:
        matches = [s for s in STAGES if s == name or s.split("_", 1)[1] == name or s.split("_", 1)[0] == name]
        if not matches:
            raise RunnerError(f"unknown stage {name!r}; stages are {', '.join(STAGES)} "
                              "(the number or the name after it also works, e.g. 04 or index)")
        return matches[0]

    stages = list(STAGES)
    if start:
        stages = stages[STAGES.index(check(start)):]
    if only:
        wanted = {check(s) for s in only}
        stages = [s for s in stages if s in wanted]
    return stages


def _fingerprint(notebook: Path, params: dict) -> str:
    h = hashlib.sha256(notebook.read_bytes())
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    return h.hexdigest()


def finished_fingerprint(marker: Path) -> Optional[str]:
    """The fingerprint a stage's done-marker records; None when there is none or it cannot be read (a marker
    edited by hand or damaged on disk): the stage then simply runs again, it never aborts the run."""
    try:
        return json.loads(marker.read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def _failed_cell(source: Path, executed: Path) -> Optional[int]:
    """Index (0-based, in the *source* notebook) of the cell that raised; papermill's executed copy has extra
    cells (injected parameters, an error banner), so the failed cell is matched back by its source text."""
    try:
        ran = json.loads(executed.read_text())
        original = json.loads(source.read_text())
    except (OSError, ValueError):
        return None
    for cell in ran.get("cells", []):
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            text = "".join(cell.get("source", []))
            for i, orig in enumerate(original.get("cells", [])):
                if "".join(orig.get("source", [])) == text:
                    return i
    return None


def run_stage(stage: str, params: dict, run_dir: Path, *, force: bool = False, log_output: bool = False) -> StageRecord:
    """Execute one stage notebook into ``run_dir/notebooks``; skip it if its done-marker matches."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    notebook = notebook_path(stage)
    if not notebook.exists():
        raise RunnerError(f"stage notebook not found: {notebook}")
    declared = declared_parameters(notebook)
    unknown = sorted(set(params) - set(declared))
    if unknown:  # papermill would only warn; a typo must not silently run the defaults
        raise RunnerError(f"{notebook.name} does not declare parameter(s) {unknown}; it declares {sorted(declared)}")
    executed = run_dir / "notebooks" / notebook.name
    if executed.resolve() == notebook.resolve():
        raise RunnerError(f"run directory {run_dir} would write executed notebooks over the sources in "
                          f"{notebook.parent}; choose another --run-dir")
    marker = run_dir / "stages" / f"{stage}.done.json"
    fingerprint = _fingerprint(notebook, params)
    if not force and finished_fingerprint(marker) == fingerprint:
        return StageRecord(stage, "skipped", 0.0, str(executed))
    marker.unlink(missing_ok=True)
    executed.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        papermill.execute_notebook(str(notebook), str(executed), parameters=params, kernel_name=KERNEL_NAME,
                                   cwd=str(notebook.parent), progress_bar=False, log_output=log_output)
    except PapermillExecutionError as exc:
        raise StageFailed(stage, executed, _failed_cell(notebook, executed), exc.ename, exc.evalue) from None
    seconds = time.perf_counter() - start
    atomic_write_json(marker, {"stage": stage, "fingerprint": fingerprint, "params": params, "seconds": seconds,
                               "finished": now_iso()})
    return StageRecord(stage, "ran", seconds, str(executed))


def publish_results(run_dir: Path, target: Path, provenance: dict) -> Path:
    """Copy ``run_dir/results`` to ``target`` with ``run.json``. A previous publication from other parameters is
    moved to ``run_dir/superseded/<time>`` first, so no run silently overwrites another's results."""
    source = run_dir / "results"
    if not source.is_dir():
        raise RunnerError(f"the run wrote no results folder at {source}")
    staging = target.parent / f".{target.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        shutil.copytree(source, staging)
        atomic_write_json(staging / "run.json", provenance)
    except BaseException:  # full disk, no permission, interrupted: the previous publication stays untouched
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        old = target / "run.json"
        old_params = json.loads(old.read_text()).get("parameters") if old.exists() else None
        if old_params != provenance["parameters"]:
            keep = run_dir / "superseded" / time.strftime("%Y%m%d-%H%M%S")
            keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(target), str(keep))
            print(f"[histokit] results at {target} came from other parameters; moved them to {keep}")
        else:
            shutil.rmtree(target)
    staging.rename(target)
    return target


def reproduce(paper: str, profile: str = "smoke", *, data_root: Optional[str] = None, run_dir: Optional[str] = None,
              device: str = "auto", seed: int = 0, only: Optional[Iterable[str]] = None, start: Optional[str] = None,
              force: bool = False, extra: Optional[dict] = None, publish: bool = True,
              log_output: bool = False) -> RunResult:
    """Run the stages of one paper's recipe; publish its tables and figures when all stages have run."""
    from .papers import get_recipe, list_papers

    if paper not in list_papers():
        raise RunnerError(f"unknown paper {paper!r}; papers are {', '.join(list_papers())} (or 'all')")
    if profile not in PROFILES:
        raise RunnerError(f"unknown profile {profile!r}; profiles are {', '.join(PROFILES)}")
    get_recipe(paper, profile)  # validates the recipe before any work starts
    run_path = Path(run_dir) if run_dir else paths.default_run_dir(paper, profile)
    params = {"paper": paper, "profile": profile, "data_root": str(data_root or paths.DATA_ROOT),
              "run_dir": str(run_path), "device": device, "seed": int(seed)}
    params.update(extra or {})
    stages = select_stages(only, start)
    result = RunResult(paper, profile, run_path, None)
    print(f"[histokit] {paper} / {profile}: run directory {run_path}")
    for stage in stages:
        print(f"[histokit] {paper} / {profile}: {stage} ...", flush=True)
        record = run_stage(stage, params, run_path, force=force, log_output=log_output)
        print(f"[histokit] {paper} / {profile}: {stage} {record.status}"
              + (f" in {record.seconds:.1f} s" if record.status == "ran" else " (finished earlier, same parameters)"))
        result.stages.append(record)
    all_done = all((run_path / "stages" / f"{s}.done.json").exists() for s in STAGES)
    if publish and all_done:
        provenance = {"paper": paper, "profile": profile, "parameters": params, "git": git_commit(),
                      "packages": package_versions(), "device": device_info(device), "published": now_iso(),
                      "stages": [json.loads((run_path / "stages" / f"{s}.done.json").read_text()) for s in STAGES]}
        for stage in provenance["stages"]:
            stage.pop("params", None)
        result.results_dir = publish_results(run_path, paths.results_dir(paper, profile), provenance)
        print(f"[histokit] {paper} / {profile}: results in {result.results_dir}")
    return result
