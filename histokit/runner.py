"""``histokit reproduce``: run the stage notebooks with papermill, one run directory per paper + profile.

A run directory holds the scratch (splits, checkpoints, features, indexes, executed notebooks) and a ``results/``
folder; when every stage has finished, the results are published to ``results/<paper>/<profile>/`` with
``run.json``. A stage that finished with the same parameters and the same notebook is skipped, so a killed run
resumes at the stage it was in.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

from . import paths
from .io import atomic_write_json
from .provenance import device_info, git_commit, now_iso, package_versions
from .run_log import RunLog, format_duration, snapshot, written_since

if TYPE_CHECKING:
    from .kernel import WarmKernel

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


def portable(value, root: Optional[Path] = None):
    """``value`` with every absolute path under ``root`` made relative to it (``runs/esvit/smoke``) and every path
    under the home directory written ``~/...``, so a fingerprint or a published ``run.json`` is the same in every
    clone and for every user; paths elsewhere stay absolute."""
    root = paths.REPO_DIR if root is None else root
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


def _checkpoint_identity(checkpoints: dict) -> dict:
    """name -> {path, sha256}: a checkpoint decides what its training run starts from, so its content (not only its
    name) is part of every fingerprint; a file replaced under the same name re-runs the training it feeds."""
    from .io import sha256_file

    out = {}
    for name, path in sorted((checkpoints or {}).items()):
        try:
            digest = sha256_file(Path(path))
        except OSError:
            digest = None
        out[name] = {"path": portable(str(Path(path).resolve())), "sha256": digest}
    return out


def stage_inputs(params: dict) -> dict:
    """What decides a stage's output, as recorded in its fingerprint: the parameters with repo-relative paths and
    each checkpoint's digest."""
    inputs = portable(dict(params))
    if params.get("checkpoints"):
        inputs["checkpoints"] = _checkpoint_identity(params["checkpoints"])
    return inputs


def _upstream_tokens(run_dir: Path, stage: str) -> dict:
    """The execution token of every earlier stage: a later stage reads their artifacts, so re-running one of them
    changes this stage's fingerprint (and so re-runs it)."""
    tokens = {}
    for earlier in STAGES[: STAGES.index(stage)]:
        try:
            tokens[earlier] = json.loads((run_dir / "stages" / f"{earlier}.done.json").read_text()).get("token")
        except (OSError, ValueError, AttributeError):
            tokens[earlier] = None
    return tokens


def _fingerprint(notebook: Path, params: dict, upstream: Optional[dict] = None) -> str:
    h = hashlib.sha256(notebook.read_bytes())
    h.update(json.dumps(stage_inputs(params), sort_keys=True, default=str).encode())
    h.update(json.dumps(upstream or {}, sort_keys=True).encode())
    return h.hexdigest()


def stage_is_current(stage: str, params: dict, run_dir: Path) -> bool:
    """The stage finished with these parameters, this notebook and the upstream artifacts it read."""
    marker = run_dir / "stages" / f"{stage}.done.json"
    expected = _fingerprint(notebook_path(stage), params, _upstream_tokens(run_dir, stage))
    return finished_fingerprint(marker) == expected


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


def _execute(stage: str, notebook: Path, executed: Path, params: dict, log_output: bool,
             kernel: Optional["WarmKernel"] = None) -> float:
    """Run one notebook with papermill into ``executed``; the seconds it took, or :class:`StageFailed`.
    With ``kernel`` it runs in that warm kernel (namespace cleared first), else in a fresh kernel of its own."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from .kernel import WarmKernel

    if kernel is None:  # a kernel of its own, on IPC like the warm one, shut down when the notebook ends
        with WarmKernel(KERNEL_NAME, cwd=notebook.parent, env=kernel_env()) as own:
            return _execute(stage, notebook, executed, params, log_output, own)
    executed.parent.mkdir(parents=True, exist_ok=True)
    kernel.wait_prewarmed()  # the kernel's own start-up imports are not this stage's time
    start = time.perf_counter()
    try:
        papermill.execute_notebook(str(notebook), str(executed), parameters=params, kernel_name=KERNEL_NAME,
                                   cwd=str(notebook.parent), progress_bar=False, log_output=log_output,
                                   **kernel.papermill_args())
    except PapermillExecutionError as exc:
        kernel.discard()  # the next stage starts in a clean kernel, whatever the failed one left behind
        raise StageFailed(stage, executed, _failed_cell(notebook, executed), exc.ename, exc.evalue) from None
    except BaseException:
        kernel.discard()
        raise
    return time.perf_counter() - start


def kernel_env(quiet: bool = False) -> dict:
    """Environment of the kernels the runner starts: progress bars to this terminal (or none with ``quiet``)."""
    from .progress import MODE_VARIABLE

    return {MODE_VARIABLE: "off" if quiet else "terminal"}


# Stages whose work runs under torchrun: the only ones a node other than node 0 takes part in.
DISTRIBUTED_STAGES = ("02_pretrain", "03_finetune", "04_index")


def follow_node(paper: str, label: str, params: dict, run_dir: Path, stages: list[str], node_rank: int, *,
                log_output: bool = False, wait_s: float = 6 * 3600, poll_s: float = 10.0,
                kernel: Optional["WarmKernel"] = None) -> list[StageRecord]:
    """A node other than node 0 of a multi-node job: it joins the torchrun jobs of stages 02-04 and writes nothing of
    its own in the shared run directory (node 0's ranks write; its notebooks go to ``notebooks/node<k>/``). It starts
    once node 0 has finished 01_data with the same inputs, so both nodes read the same splits."""
    if not stage_is_current("01_data", params, run_dir):
        print(f"[histokit] {paper} / {label}: node {node_rank} waits for node 0 to finish 01_data in {run_dir}",
              flush=True)
        deadline = time.monotonic() + wait_s
        while not stage_is_current("01_data", params, run_dir):
            if time.monotonic() > deadline:
                raise RunnerError(f"node {node_rank}: node 0 did not finish 01_data in {run_dir} within "
                                  f"{wait_s / 3600:.1f} h; is the run directory shared and are the parameters equal?")
            time.sleep(poll_s)
    records = []
    for stage in (s for s in stages if s in DISTRIBUTED_STAGES):
        executed = run_dir / "notebooks" / f"node{node_rank}" / f"{stage}.ipynb"
        print(f"[histokit] {paper} / {label}: node {node_rank} joins {stage} ...", flush=True)
        seconds = _execute(stage, notebook_path(stage), executed, params, log_output, kernel)
        records.append(StageRecord(stage, "ran", seconds, str(executed)))
    return records


def run_stage(stage: str, params: dict, run_dir: Path, *, force: bool = False, log_output: bool = False,
              kernel: Optional["WarmKernel"] = None) -> StageRecord:
    """Execute one stage notebook into ``run_dir/notebooks`` (in ``kernel`` if given, else a fresh kernel); skip it
    if its done-marker matches."""
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
    fingerprint = _fingerprint(notebook, params, _upstream_tokens(run_dir, stage))
    if not force and finished_fingerprint(marker) == fingerprint:
        return StageRecord(stage, "skipped", 0.0, str(executed))
    # This stage's artifacts are about to change: no later stage that read the old ones may count as finished.
    for later in STAGES[STAGES.index(stage):]:
        (run_dir / "stages" / f"{later}.done.json").unlink(missing_ok=True)
    seconds = _execute(stage, notebook, executed, params, log_output, kernel)
    atomic_write_json(marker, {"stage": stage, "fingerprint": fingerprint, "token": uuid.uuid4().hex,
                               "params": portable(params), "seconds": seconds, "finished": now_iso()})
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
        if portable(old_params) != provenance["parameters"]:  # results published before paths were relative
            keep = run_dir / "superseded" / time.strftime("%Y%m%d-%H%M%S")
            keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(target), str(keep))
            print(f"[histokit] results at {target} came from other parameters; moved them to {keep}")
        else:
            shutil.rmtree(target)
    staging.rename(target)
    return target


# A rehearsal's caps: optimisation steps per training run, images per class in each split (10 keeps a stratified
# 80/10/10 split possible), and images a training run reads (which bounds its batch, so a full-size EsViT with
# 65,536 prototypes fits a CPU machine's memory).
# (Timings in a rehearsal: 2 passes, not 20, at a batch no larger than the capped gallery; stages/index.py.)
REHEARSAL_CAPS = {"max_steps": 2, "max_images_per_class": 10, "max_train_images": 8}


def result_label(profile: str, rehearse: bool) -> str:
    """Where a run's scratch and results go: ``rehearsal`` for a rehearsal of the full profile (never mixed with
    the smoke or full results), else the profile."""
    return "rehearsal" if rehearse else profile


def run_parameters(paper: str, profile: str, data_root: Optional[str], run_path: Path, device: str = "auto",
                   seed: int = 0) -> dict:
    """The notebook parameters every stage of a run gets (before checkpoints, caps and extras)."""
    return {"paper": paper, "profile": profile, "data_root": str(Path(data_root or paths.DATA_ROOT).resolve()),
            "run_dir": str(Path(run_path).resolve()), "device": device, "seed": int(seed)}


def reproduce(paper: str, profile: str = "smoke", *, data_root: Optional[str] = None, run_dir: Optional[str] = None,
              device: str = "auto", seed: int = 0, only: Optional[Iterable[str]] = None, start: Optional[str] = None,
              force: bool = False, extra: Optional[dict] = None, publish: bool = True,
              log_output: bool = False, rehearse: bool | dict = False, distributed: Optional[dict] = None,
              preflight: bool = True, kernel: Optional["WarmKernel"] = None, fresh_kernels: bool = False,
              quiet: bool = False, later_s: Optional[float] = 0.0) -> RunResult:
    """Run the stages of one paper's recipe; publish its tables and figures when all stages have run.

    ``rehearse``: run the full profile's exact recipe with only the optimisation steps and the images per class and
    split capped (``True`` = :data:`REHEARSAL_CAPS`, or a dict of caps), e.g. on mock data (``histokit data mock``);
    results go to ``results/<paper>/rehearsal/``. ``distributed``: torchrun flags for the training runs (stages 02
    and 03) and the sharded extraction (04), e.g. ``{"nproc_per_node": 8}``. ``kernel``: the warm kernel the stages
    run in (``histokit reproduce all`` shares one across papers); by default the run starts its own, and
    ``fresh_kernels=True`` gives every stage a new kernel instead (slower; the notebooks' behaviour is the same).
    ``quiet``: print nothing but errors; ``later_s``: estimated seconds of the papers that run after this one.
    """
    from .papers import get_recipe, list_papers
    from .preflight import PreflightError, check_run, validate_checkpoints

    if paper not in list_papers():
        raise RunnerError(f"unknown paper {paper!r}; papers are {', '.join(list_papers())} (or 'all')")
    if profile not in PROFILES:
        raise RunnerError(f"unknown profile {profile!r}; profiles are {', '.join(PROFILES)}")
    if rehearse and profile != "full":
        raise RunnerError("--rehearse rehearses the full profile: use it with --profile full")
    caps = dict(REHEARSAL_CAPS if rehearse is True else (rehearse or {}))
    label = result_label(profile, bool(caps))
    recipe = get_recipe(paper, profile)  # validates the recipe before any work starts
    extra = dict(extra or {})
    checkpoints = dict(extra.pop("checkpoints", {}) or {})
    try:
        validate_checkpoints(checkpoints, [recipe])
        if preflight and profile == "full":
            check_run(recipe, data_root, checkpoints, rehearse=bool(caps), raise_on_missing=True)
    except PreflightError as exc:
        raise RunnerError(str(exc)) from None
    if caps:
        from .preflight import mock_checkpoints

        checkpoints = {**mock_checkpoints(recipe, data_root), **checkpoints}
    run_path = Path(run_dir) if run_dir else paths.default_run_dir(paper, label)
    params = run_parameters(paper, profile, data_root, run_path, device, seed)
    if checkpoints:
        params["checkpoints"] = {k: str(Path(v).resolve()) for k, v in checkpoints.items()}
    if caps:
        params["rehearse"] = caps
    if distributed:
        params["distributed"] = dict(distributed)
    params.update(extra)
    stages = select_stages(only, start)
    result = RunResult(paper, profile, run_path, None)
    log = RunLog(paper, label, stages, quiet=quiet, later_s=later_s)
    log.say(f"run directory {portable(str(run_path.resolve()))}")
    node_rank = int((distributed or {}).get("node_rank") or 0)
    with contextlib.ExitStack() as stack:
        if kernel is None and not fresh_kernels:
            from .kernel import WarmKernel

            kernel = stack.enter_context(WarmKernel(KERNEL_NAME, cwd=paths.NOTEBOOK_DIR, env=kernel_env(quiet)))
        if node_rank > 0:  # node 0 runs every stage and publishes; the others only join its torchrun jobs
            result.stages = follow_node(paper, label, params, run_path, stages, node_rank, log_output=log_output,
                                        kernel=kernel)
            return result
        if kernel is not None and (warm_s := kernel.wait_prewarmed()) is not None:
            log.say(f"kernel ready in {format_duration(warm_s)} (torch, timm, faiss and the kit imported once for "
                    "every stage)")
        for stage in stages:
            log.stage_started(stage)
            before = snapshot(run_path / "results")
            record = run_stage(stage, params, run_path, force=force, log_output=log_output, kernel=kernel)
            log.stage_ended(stage, record.status, record.seconds, written_since(before, snapshot(run_path / "results")))
            result.stages.append(record)
    stale = [s for s in STAGES if not stage_is_current(s, params, run_path)]
    if publish and stale:
        log.say(f"not published: {', '.join(stale)} not finished with these inputs (run without --only to finish "
                "them)")
    if publish and not stale:
        provenance = {"paper": paper, "profile": profile, "label": label, "parameters": stage_inputs(params),
                      "rehearsal": caps or None, "git": git_commit(), "packages": package_versions(),
                      "device": device_info(device), "faiss": _faiss_info(), "published": now_iso(),
                      "stages": [json.loads((run_path / "stages" / f"{s}.done.json").read_text()) for s in STAGES]}
        for stage in provenance["stages"]:
            stage.pop("params", None)
        result.results_dir = publish_results(run_path, paths.results_dir(paper, label), provenance)
        log.say(f"results in {portable(str(result.results_dir.resolve()))}")
    return result


def _faiss_info() -> dict:
    """The FAISS build that indexed this run (CPU or GPU), for run.json."""
    try:
        from .retrieval.index import faiss_build_info

        return faiss_build_info()
    except ImportError:
        import faiss

        return {"version": getattr(faiss, "__version__", None),
                "gpus": faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0}
