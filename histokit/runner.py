"""``histokit reproduce``: run the stage notebooks with papermill, one run directory per paper + profile.

A run directory holds the scratch (splits, checkpoints, features, indexes, executed notebooks) and a ``results/``
folder; when every stage has finished, the results are published to ``results/<paper>/<profile>/`` with
``run.json``. A stage that finished with the same parameters and the same notebook is skipped, so a killed run
resumes at the stage it was in.

One run at a time per run directory (``run.lock``, :mod:`histokit.run_lock`); the run's identity (paper, profile,
run directory, recipe digest: :mod:`histokit.run_identity`) is fixed here, written to ``identity.json`` and checked
by every stage. Publishing builds the new publication beside the old one and swaps them by renames: the previous
publication is never deleted before the new one is complete. Every ``OSError`` becomes one line naming the path
and what to do (:func:`describe_os_error`).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

from . import paths
from .io import atomic_write_json
from .provenance import device_info, git_commit, now_iso, package_versions
from .paths import portable  # noqa: F401  (runner.portable: callers and tests name it here)
from .run_identity import (IDENTITY_NAME, OWNER_KEYS, RUNNER_ENV, IdentityError, differences, read_identity,
                           recipe_document, run_identity)
from .run_lock import RunLock, RunLocked
from .run_log import RunLog, format_duration, snapshot, written_since

if TYPE_CHECKING:
    from .kernel import WarmKernel

STAGES = ("01_data", "02_pretrain", "03_finetune", "04_index", "05_evaluate", "06_ablations", "07_visualize")
PROFILES = ("smoke", "full")
KERNEL_NAME = "python3"


class RunnerError(RuntimeError):
    """A refused request (unknown paper / profile / stage / parameter) or a failed stage."""


# The parameters the runner itself sets for every stage, and how a user sets each: a ``--param`` (or ``extra``) may set
# none of them, so what a run prints ("esvit / smoke", its run directory) is what its stages compute.
RUNNER_PARAMS = {"paper": "the PAPER argument", "profile": "--profile", "run_dir": "--run-dir",
                 "data_root": "--data-root", "device": "--device", "seed": "--seed", "checkpoints": "--checkpoint",
                 "rehearse": "--rehearse", "distributed": "--nproc-per-node / --nnodes / --node-rank"}

_OS_ERROR_NAMES = {"OSError", "IOError", "EnvironmentError", "FileNotFoundError", "FileExistsError", "PermissionError",
                   "IsADirectoryError", "NotADirectoryError", "BlockingIOError", "InterruptedError",
                   "ChildProcessError", "ProcessLookupError", "TimeoutError"}


def _os_advice(code: Optional[int]) -> str:
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return "free space on that disk (or put the run elsewhere: --run-dir) and re-run; finished stages are skipped"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "make that path writable (or choose another --run-dir) and re-run"
    if code in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return "a file is where a directory is expected (or the reverse): move it away and re-run"
    if code == errno.ENOENT:
        return "check that the path and its folders exist and re-run"
    return "check that path and re-run"


def describe_os_error(exc: OSError, fallback_path=None, advice: Optional[str] = None) -> str:
    """One line for an ``OSError``: the path (its ``filename``, else ``fallback_path``), the reason, what to do
    (``advice``, else what fits its errno)."""
    path = exc.filename if exc.filename is not None else fallback_path
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno is not None:
        reason += f" [errno {exc.errno}]"
    where = f"{os.fsdecode(path)}" if path is not None else "a file it did not name"
    if getattr(exc, "filename2", None) is not None:
        where += f" -> {os.fsdecode(exc.filename2)}"
    return f"{where}: {reason}: {advice or _os_advice(exc.errno)}"


_ERRNO_TEXT = re.compile(r"^\[Errno (\d+)\] (.*?)(?:: '(.*?)'(?: -> '(.*)')?)?$", re.S)


class StageFailed(RunnerError):
    def __init__(self, stage: str, notebook: Path, cell: Optional[int], ename: str, evalue: str):
        self.stage, self.notebook, self.cell = stage, notebook, cell
        self.ename, self.evalue = ename, evalue
        where = f"cell {cell}" if cell is not None else "an unknown cell"
        match = _ERRNO_TEXT.match(str(evalue).strip()) if ename in _OS_ERROR_NAMES else None
        if match:  # a full disk, no permission, a file in the way: the path and what to do, in one line
            code, reason, path, path2 = int(match[1]), match[2], match[3], match[4]
            target = (path + (f" -> {path2}" if path2 else "")) if path else "a file it did not name"
            super().__init__(f"stage {stage} failed ({ename} in {where}) on {target}: {reason} [errno {code}]: "
                             f"{_os_advice(code)}; the executed notebook is {notebook}")
            return
        super().__init__(f"stage {stage} failed in {where} of the executed notebook {notebook}: {ename}: {evalue} "
                         "(the executed copy is kept there; fix the cause and re-run: finished stages are skipped)")


class StageOSError(RunnerError):
    """An ``OSError`` outside the notebook's cells: papermill could not read the notebook or write its executed
    copy (a full disk: the copy is then cut short)."""

    def __init__(self, stage: str, executed: Path, exc: OSError):
        self.stage, self.notebook, self.error = stage, executed, exc
        if exc.filename is None or Path(os.fsdecode(exc.filename)) == Path(executed):
            reason = (exc.strerror or str(exc)) + (f" [errno {exc.errno}]" if exc.errno is not None else "")
            super().__init__(f"stage {stage} stopped: papermill could not write the executed notebook {executed}: "
                             f"{reason}: {_os_advice(exc.errno)} (the notebook there may be cut short)")
        else:
            super().__init__(f"stage {stage} stopped: {describe_os_error(exc)}; the executed notebook is {executed}")


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


def _fingerprint(notebook: Path, params: dict, upstream: Optional[dict] = None,
                 identity: Optional[dict] = None) -> str:
    h = hashlib.sha256(notebook.read_bytes())
    h.update(json.dumps(stage_inputs(params), sort_keys=True, default=str).encode())
    h.update(json.dumps(upstream or {}, sort_keys=True).encode())
    if identity is not None:  # the recipe's digest among them: a marker of another recipe is not this one's
        h.update(json.dumps(identity, sort_keys=True).encode())
    return h.hexdigest()


def identity_of(params: dict, run_dir: Optional[Path] = None) -> Optional[dict]:
    """The run identity the parameters describe (paper, profile, label, run directory, recipe digest); None for
    parameters that name no paper (the runner's tests run stand-in notebooks that take none)."""
    if "paper" not in params or "profile" not in params:
        return None
    from .papers import get_recipe

    try:
        recipe = get_recipe(params["paper"], params["profile"])
    except ValueError as exc:
        raise RunnerError(str(exc)) from None
    folder = params.get("run_dir") or run_dir or paths.default_run_dir(params["paper"], params["profile"])
    return run_identity(params["paper"], params["profile"], result_label(params["profile"], bool(params.get("rehearse"))),
                        folder, recipe)


def establish_identity(run_dir: Path, identity: dict) -> Optional[str]:
    """Write ``identity`` to ``run_dir/identity.json`` (the runner's identity is the run's); refuse a run directory
    that is another paper's or profile's. Returns a line to print when the identity changed (the recipe was edited
    or the directory moved: every stage then runs again), else None."""
    try:
        found = read_identity(run_dir)
    except IdentityError as exc:
        raise RunnerError(str(exc)) from None
    if found is not None:
        wrong = differences(identity, found, OWNER_KEYS)
        if wrong:
            owner = f"{found.get('paper')} / {found.get('label') or found.get('profile')}"
            raise RunnerError(f"run directory {run_dir} holds a run of {owner} ({run_dir / IDENTITY_NAME}), not of "
                              f"{identity['paper']} / {identity['label']}: give this run its own --run-dir")
        if found == identity:
            return None
    atomic_write_json(run_dir / IDENTITY_NAME, identity)
    if found is None:
        return None
    changed = [k for k in ("recipe", "run_dir") if found.get(k) != identity.get(k)]
    what = {"recipe": "the recipe changed", "run_dir": "the run directory moved"}
    return f"{' and '.join(what[k] for k in changed)} since the last run here: its stages run again"


def stage_is_current(stage: str, params: dict, run_dir: Path, identity: Optional[dict] = None) -> bool:
    """The stage finished with these parameters, this notebook, the upstream artifacts it read and this run's
    identity (recipe digest included)."""
    marker = run_dir / "stages" / f"{stage}.done.json"
    identity = identity if identity is not None else identity_of(params, run_dir)
    expected = _fingerprint(notebook_path(stage), params, _upstream_tokens(run_dir, stage), identity)
    return finished_fingerprint(marker) == expected


def finished_stages(run_dir: Path, params: dict, identity: Optional[dict] = None) -> tuple[list[dict], list[str]]:
    """(the done-markers of every stage, the stages not finished with these inputs): what publishing checks, read
    once, so what run.json records is what was checked. A marker counts only if its fingerprint is the one these
    parameters, this notebook, the upstream markers and this run's identity give now."""
    identity = identity if identity is not None else identity_of(params, run_dir)
    markers, stale = [], []
    for stage in STAGES:
        marker = run_dir / "stages" / f"{stage}.done.json"
        expected = _fingerprint(notebook_path(stage), params, _upstream_tokens(run_dir, stage), identity)
        try:
            data = json.loads(marker.read_text())
        except (OSError, ValueError):
            data = None
        if not isinstance(data, dict) or data.get("fingerprint") != expected:
            stale.append(stage)
        else:
            markers.append(data)
    return markers, stale


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
    except OSError as exc:  # papermill's own reads and writes (the executed copy on a full disk names no file)
        kernel.discard()
        raise StageOSError(stage, executed, exc) from None
    except BaseException:
        kernel.discard()
        raise
    return time.perf_counter() - start


def kernel_env(quiet: bool = False) -> dict:
    """Environment of the kernels the runner starts: progress bars to this terminal (or none with ``quiet``)."""
    from .progress import MODE_VARIABLE

    return {MODE_VARIABLE: "off" if quiet else "terminal", RUNNER_ENV: "1"}


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
              kernel: Optional["WarmKernel"] = None, identity: Optional[dict] = None) -> StageRecord:
    """Execute one stage notebook into ``run_dir/notebooks`` (in ``kernel`` if given, else a fresh kernel); skip it
    if its done-marker matches. The parameters' ``run_dir`` must be ``run_dir`` (markers and artifacts in one
    place); the run's identity (from the parameters unless given) goes into ``run_dir/identity.json``, the
    fingerprint and the marker."""
    if params.get("run_dir") and Path(params["run_dir"]).resolve() != Path(run_dir).resolve():
        raise RunnerError(f"parameter run_dir={params['run_dir']!r} is not the run directory {run_dir} this stage's "
                          "marker goes to: run_dir is fixed by the runner (--run-dir)")
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
    identity = identity if identity is not None else identity_of(params, run_dir)
    if identity is not None:
        establish_identity(run_dir, identity)
    marker = run_dir / "stages" / f"{stage}.done.json"
    fingerprint = _fingerprint(notebook, params, _upstream_tokens(run_dir, stage), identity)
    if not force and finished_fingerprint(marker) == fingerprint:
        return StageRecord(stage, "skipped", 0.0, str(executed))
    # This stage's artifacts are about to change: no later stage that read the old ones may count as finished.
    for later in STAGES[STAGES.index(stage):]:
        (run_dir / "stages" / f"{later}.done.json").unlink(missing_ok=True)
    seconds = _execute(stage, notebook, executed, params, log_output, kernel)
    atomic_write_json(marker, {"stage": stage, "fingerprint": fingerprint, "token": uuid.uuid4().hex,
                               "params": portable(params), "identity": identity, "seconds": seconds,
                               "finished": now_iso()})
    return StageRecord(stage, "ran", seconds, str(executed))


def _say(text: str) -> None:
    print(f"[histokit] {text}", flush=True)


def _warn(text: str) -> None:
    print(f"histokit: warning: {text}", file=sys.stderr, flush=True)


def ensure_directory(path: Path, what: str, advice: str) -> Path:
    """Create ``path`` (and its parents); a file where it or a folder above it should be is refused in one line
    naming that file (``what``: "the run directory", ...; ``advice``: what to do)."""
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                where = "it" if folder == path else f"{folder}, a folder above it,"
                raise RunnerError(f"{what} {path} cannot be made: {where} is a file, not a directory; {advice}")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunnerError(f"{what} {path} cannot be made: {describe_os_error(exc, path, advice)}") from None
    return path


def _unique(path: Path) -> Path:
    out, n = path, 1
    while out.exists() or out.is_symlink():
        out, n = path.with_name(f"{path.name}-{n}"), n + 1
    return out


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """Exclusive ``flock`` on a folder itself (no lock file among the committed results): two runs publishing into
    the same ``results/<paper>/`` take turns."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _previous_parameters(target: Path) -> tuple[Optional[dict], Optional[str]]:
    """(the parameters the publication at ``target`` was made with, None) or (None, why it is unreadable)."""
    run_json = target / "run.json"
    try:
        data = json.loads(run_json.read_text())
    except FileNotFoundError:
        return None, f"it has no {run_json.name}"
    except OSError as exc:
        return None, f"{run_json}: {exc.strerror or exc}"
    except ValueError as exc:
        return None, f"{run_json} is damaged: {exc}"
    if not isinstance(data, dict):
        return None, f"{run_json} is damaged: not a JSON object"
    return data.get("parameters"), None


def _remove_tree(path: Path) -> Optional[str]:
    """Best-effort removal; the first failure as text, or None when all of ``path`` is gone."""
    failures = []

    def note(function, name, exc_info):
        failures.append(f"{name}: {getattr(exc_info[1], 'strerror', None) or exc_info[1]}")

    shutil.rmtree(path, onerror=note)
    if not failures and not path.exists():
        return None
    return failures[0] if failures else f"{path} is still there"


def _keep_aside(aside: Path, keep: Path) -> Optional[str]:
    """Move the moved-aside previous publication into ``keep`` (a rename; a copy across file systems); None when
    done, else why it stays at ``aside``."""
    try:
        keep.parent.mkdir(parents=True, exist_ok=True)
        os.rename(aside, keep)
        return None
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            return describe_os_error(exc, keep)
    try:
        shutil.copytree(aside, keep, symlinks=True)
    except (OSError, shutil.Error) as exc:
        _remove_tree(keep)
        return f"copying it to {keep} failed: {exc}"
    left = _remove_tree(aside)
    return None if left is None else f"copied to {keep}, but its copy at {aside} stays ({left})"


def publish_results(run_dir: Path, target: Path, provenance: dict, say=None, warn=None,
                    recipe: Optional[dict] = None) -> Path:
    """Publish ``run_dir/results`` at ``target`` with ``run.json`` (and ``recipe.json``, the resolved recipe the run
    ran, when given), never losing the previous publication.

    The new publication is built complete in a staging folder beside ``target``; then the previous one is renamed
    aside and the staging folder renamed onto ``target`` (a failure there renames the previous one back). Only then
    is the previous one dealt with: from other parameters, or unreadable (no or a damaged ``run.json``), it is moved
    to ``run_dir/superseded/<time>``; from the same parameters it is removed, best effort: what cannot be removed is
    left where it was moved aside, with a warning naming it, and the new results are complete either way."""
    say, warn = say or _say, warn or _warn
    run_dir, target = Path(run_dir), Path(target)
    source = run_dir / "results"
    if not source.is_dir():
        raise RunnerError(f"the run wrote no results folder at {source}")
    advice = f"move it away and re-run (the run's results stay in {source}; finished stages are skipped)"
    ensure_directory(target.parent, "the results folder", advice)
    if (target.exists() or target.is_symlink()) and not target.is_dir():
        raise RunnerError(f"cannot publish to {target}: it is a file, not a directory; {advice}")
    with _folder_lock(target.parent):
        for stale in target.parent.glob(f".{target.name}.staging*"):  # left by a run killed while publishing
            _remove_tree(stale)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
        try:
            os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; results are meant to be read by others
            shutil.copytree(source, staging, dirs_exist_ok=True)
            atomic_write_json(staging / "run.json", provenance)
            if recipe is not None:  # the configuration next to its output, as dinov2 writes its merged config
                atomic_write_json(staging / "recipe.json", recipe)
        except shutil.Error as exc:  # copytree's collected failures: name the first
            _remove_tree(staging)
            first = exc.args[0][0] if exc.args and isinstance(exc.args[0], list) and exc.args[0] else (None, None, exc)
            raise RunnerError(f"publishing to {target} failed copying {first[1]}: {first[2]}; the previous "
                              f"publication is untouched; {advice}") from None
        except BaseException:  # full disk, no permission, interrupted: the previous publication stays untouched
            _remove_tree(staging)
            raise
        aside, reason, old_params = None, None, None
        if target.exists():
            old_params, reason = _previous_parameters(target)
            aside = _unique(target.parent / f".{target.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}")
            try:
                os.replace(target, aside)
            except BaseException:
                _remove_tree(staging)
                raise
        try:
            os.replace(staging, target)
        except BaseException:
            if aside is not None:
                try:
                    os.replace(aside, target)  # the previous publication back under its name
                except OSError as exc:
                    raise RunnerError(f"publishing to {target} failed, and the previous publication could not be "
                                      f"put back ({describe_os_error(exc, target)}): it is intact at {aside}; "
                                      f"the new one is at {staging}") from None
            _remove_tree(staging)
            raise
    if aside is None:
        return target
    if reason is not None or portable(old_params) != provenance.get("parameters"):
        keep = _unique(run_dir / "superseded" / time.strftime("%Y%m%d-%H%M%S"))
        why = (f"previous publication at {target} unreadable ({reason})" if reason is not None else
               f"results at {target} came from other parameters")
        problem = _keep_aside(aside, keep)
        if problem is None:
            say(f"{why}: moved aside to {keep}")
        else:
            warn(f"{why}: moved aside to {aside} ({problem})")
    else:
        left = _remove_tree(aside)
        if left is not None:
            warn(f"the previous publication, moved aside to {aside}, could not be removed ({left}); the new results "
                 f"at {target} are complete: delete {aside} when you can")
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# A rehearsal's caps: optimisation steps per training run, images per class in each split (10 keeps a stratified
# 80/10/10 split possible), and images a training run reads (which bounds its batch, so a full-size EsViT with
# 65,536 prototypes fits a CPU machine's memory).
# (Timings in a rehearsal: 2 passes, not 20, at a batch no larger than the capped gallery; stages/index.py.)
# One step a training run, 3 images a class and split, 4 images a training run: the smallest rehearsal in which
# every protocol still has what it needs (5 re-splits, group-aware splits, a class in each split); CI runs exactly
# this and the committed results/<paper>/rehearsal/ are its output.
REHEARSAL_CAPS = {"max_steps": 1, "max_images_per_class": 3, "max_train_images": 4}


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
    refused = sorted(set(extra) & set(RUNNER_PARAMS))
    if refused:  # the run's identity and the runner's own parameters are the runner's to set
        name = refused[0]
        raise RunnerError(f"parameter {name!r} cannot be given as an extra parameter (--param {name}=...): the "
                          f"runner sets it for every stage; use {RUNNER_PARAMS[name]}")
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
    node_rank = int((distributed or {}).get("node_rank") or 0)
    identity = run_identity(paper, profile, label, run_path, recipe)
    with contextlib.ExitStack() as stack:
        ensure_directory(run_path, "the run directory", "choose another --run-dir")
        try:
            if node_rank == 0:  # one run at a time here; the other nodes of a multi-node job join node 0's
                stack.enter_context(RunLock(run_path, f"histokit reproduce {paper} {label}", say=log.say))
                changed = establish_identity(run_path, identity)
                if changed:
                    log.say(changed)
            else:
                found = read_identity(run_path)
                if found is not None and differences(identity, found, OWNER_KEYS):
                    raise RunnerError(f"run directory {run_path} holds a run of {found.get('paper')} / "
                                      f"{found.get('label')}, not of {paper} / {label}: check --run-dir on every node")
        except RunLocked as exc:
            raise RunnerError(str(exc)) from None
        except IdentityError as exc:
            raise RunnerError(str(exc)) from None
        except OSError as exc:
            raise RunnerError(f"cannot use the run directory {run_path}: "
                              f"{describe_os_error(exc, run_path, 'choose another --run-dir')}") from None
        log.say(f"run directory {portable(str(run_path.resolve()))}")
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
            record = run_stage(stage, params, run_path, force=force, log_output=log_output, kernel=kernel,
                               identity=identity)
            log.stage_ended(stage, record.status, record.seconds, written_since(before, snapshot(run_path / "results")))
            result.stages.append(record)
        # still under the lock: no other run changes a marker between this check and the publication
        markers, stale = finished_stages(run_path, params, identity)
        if publish and stale:
            log.say(f"not published: {', '.join(stale)} not finished with these inputs (run without --only to "
                    "finish them)")
        if publish and not stale:
            provenance = {"paper": paper, "profile": profile, "label": label, "parameters": stage_inputs(params),
                          "rehearsal": caps or None, "git": git_commit(), "packages": package_versions(),
                          "device": device_info(device), "faiss": _faiss_info(), "published": now_iso(),
                          "recipe": identity["recipe"], "stages": markers}
            for stage in provenance["stages"]:
                stage.pop("params", None)
                stage.pop("identity", None)
            target = paths.results_dir(paper, label)
            try:
                result.results_dir = publish_results(run_path, target, provenance, say=log.say,
                                                     recipe=recipe_document(recipe))
            except OSError as exc:
                raise RunnerError(f"publishing to {target} failed: {describe_os_error(exc)} (the previous "
                                  f"publication there is untouched; this run's results stay in {run_path / 'results'})"
                                  ) from None
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
