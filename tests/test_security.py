"""Security: nothing the kit reads can run code.

- A source scan (AST, not text: ``model.eval()`` is not ``eval(``) of the package, tools and notebooks finds no
  ``eval`` / ``exec``, no pickle / marshal / shelve loads, no ``yaml.load`` without a safe loader, no ``torch.load``
  without ``weights_only=True`` (one exception: the ``trust_pickle=True`` branch of ``read_checkpoint``), no
  ``np.load(allow_pickle=True)``, no shell commands, and no feature file read without its recorded sha256.
- Checkpoints whose unpickling would call a function are refused unless the caller passes ``trust_pickle=True``,
  and then only official-weights loading has that flag; training resume never unpickles beyond weights.
- Feature files and FAISS indexes are checked against the sha256 recorded when they were written; a feature file
  holding a pickled object array is refused.
- A notebook parameter is passed as data: a value written to break out of its string literal stays a string.
"""
from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from nbformat.v4 import new_code_cell, new_notebook

from histokit import paths, runner
from histokit.models.checkpoints import UntrustedPickleError, read_checkpoint
from histokit.retrieval.features import FeatureFileError, FeatureSet, load_features, save_features
from histokit.retrieval.index import IndexFileError, build_index, load_index, save_index
from histokit.train.checkpoint import CheckpointError, load_checkpoint

pytestmark = pytest.mark.security

REPO = paths.REPO_DIR

# ------------------------------------------------------------------------------ the source scan

UNPICKLERS = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve", "jsonpickle"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader"}
# (file, finding) -> how many are allowed: the one full unpickling, behind read_checkpoint(trust_pickle=True)
ALLOWED = {("histokit/models/checkpoints.py", "torch.load without weights_only=True"): 1}


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is(node, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _call_finding(call: ast.Call) -> str | None:
    name = _dotted(call.func)
    head, last = name.split(".")[0], name.rsplit(".", 1)[-1]
    if name in ("eval", "exec", "compile", "__import__", "builtins.eval", "builtins.exec"):
        return f"{name}() runs text as code"
    if head in UNPICKLERS and last in ("load", "loads", "Unpickler", "open"):
        return f"{name}() unpickles"
    if last == "read_pickle":
        return f"{name}() unpickles"
    if head == "yaml" and last in ("unsafe_load", "full_load", "unsafe_load_all", "full_load_all"):
        return f"{name}() builds arbitrary objects"
    if head == "yaml" and last in ("load", "load_all"):
        loader = _keyword(call, "Loader") or (call.args[1] if len(call.args) > 1 else None)
        if loader is None or _dotted(loader).rsplit(".", 1)[-1] not in SAFE_YAML_LOADERS:
            return "yaml.load without SafeLoader"
    if name == "torch.load" and not _is(_keyword(call, "weights_only"), True):
        return "torch.load without weights_only=True"
    if head in ("np", "numpy") and last == "load":
        allow = _keyword(call, "allow_pickle")
        if allow is not None and not _is(allow, False):
            return "np.load with allow_pickle"
    if name in ("os.system", "os.popen") or (head == "subprocess" and _is(_keyword(call, "shell"), True)):
        return f"{name}() runs a shell command"
    if last == "load_features" and _keyword(call, "expected_sha256") is None and len(call.args) < 2:
        return "load_features without the recorded expected_sha256"
    return None


def unsafe_code(source: str) -> list[tuple[int, str]]:
    """(line, finding) for every unsafe call or import in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            what = _call_finding(node)
            if what:
                found.append((node.lineno, what))
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = {a.name for a in node.names}
            risky = {"pickle": {"load", "loads", "Unpickler"}, "yaml": {"load", "unsafe_load", "full_load",
                     "Loader", "UnsafeLoader", "FullLoader"}, "builtins": {"eval", "exec"}}
            bad = names & risky.get(node.module, set())
            if node.module.split(".")[0] in UNPICKLERS - {"pickle"}:
                bad |= names
            if bad:
                found.append((node.lineno, f"from {node.module} import {sorted(bad)}"))
    return sorted(found)


def _notebook_code(path: Path) -> str:
    """The code cells of a notebook, IPython magics and shell escapes blanked (they are not Python)."""
    cells = json.loads(path.read_text())["cells"]
    lines = []
    for cell in cells:
        if cell["cell_type"] == "code":
            src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            lines += ["" if ln.lstrip().startswith(("%", "!")) else ln for ln in src.splitlines()] + [""]
    return "\n".join(lines)


def _sources() -> dict[str, str]:
    files = sorted((REPO / "histokit").rglob("*.py")) + sorted((REPO / "tools").glob("*.py"))
    out = {str(p.relative_to(REPO)): p.read_text(encoding="utf-8") for p in files}
    out |= {str(p.relative_to(REPO)): _notebook_code(p) for p in sorted((REPO / "notebooks").glob("*.ipynb"))}
    return out


def test_the_scanner_finds_every_unsafe_pattern_and_no_safe_one():
    unsafe = '''
eval(text)
exec(cell_source)
builtins.exec(code)
pickle.load(fh)
pickle.loads(blob)
dill.loads(blob)
marshal.loads(blob)
shelve.open("db")
pd.read_pickle(path)
yaml.load(text)
yaml.load(text, Loader=yaml.Loader)
yaml.unsafe_load(text)
yaml.full_load(text)
torch.load(path)
torch.load(path, weights_only=False)
np.load(path, allow_pickle=True)
os.system("rm -rf x")
subprocess.run(cmd, shell=True)
load_features(path)
from pickle import loads
from yaml import load
'''
    found = unsafe_code(unsafe)
    assert [line for line, _ in found] == list(range(2, 23)), found
    safe = '''
model.eval()
encoder.eval().to(device)
re.compile(pattern)
yaml.safe_load(text)
yaml.load(text, Loader=yaml.SafeLoader)
yaml.load(text, yaml.CSafeLoader)
torch.load(path, map_location="cpu", weights_only=True)
np.load(path)
np.load(path, mmap_mode="r", allow_pickle=False)
subprocess.run(["git", "rev-parse", "HEAD"], check=True)
load_features(path, expected_sha256=meta["sha256"])
json.loads(text)
import pickle
'''
    assert unsafe_code(safe) == []


def test_no_eval_exec_unpickling_or_unverified_loads_in_the_kit():
    sources = _sources()
    assert any(name.startswith("notebooks/") for name in sources) and "histokit/runner.py" in sources
    report, counts = [], {}
    for name, text in sources.items():
        try:
            found = unsafe_code(text)
        except SyntaxError as exc:  # code the scan cannot read is code nobody has checked
            report.append(f"{name}:{exc.lineno}: cannot be parsed ({exc.msg})")
            continue
        for line, what in found:
            counts[(name, what)] = counts.get((name, what), 0) + 1
            if counts[(name, what)] > ALLOWED.get((name, what), 0):
                report.append(f"{name}:{line}: {what}")
    assert not report, "unsafe code:\n" + "\n".join(report)
    for key, n in ALLOWED.items():  # the exception is still where it is documented, and only there
        assert counts.get(key, 0) == n, key


# ------------------------------------------------------------------------------ pickles that would run code


def _touch(path):  # what an attacker's pickle would call; here it only leaves a trace
    Path(path).touch()
    return "ran"


class CallsOnLoad:
    """An object whose unpickling calls ``_touch(trace)``, the shape of every pickle exploit."""

    def __init__(self, trace):
        self.trace = str(trace)

    def __reduce__(self):
        return _touch, (self.trace,)


class RunsShell:
    def __reduce__(self):
        return os.system, ("echo never",)


def test_a_checkpoint_that_calls_a_function_is_refused_without_the_trust_flag(tmp_path):
    trace = tmp_path / "code_ran"
    path = tmp_path / "vits_tcga_brca_dino.pt"
    torch.save({"teacher": {"w": torch.ones(1)}, "args": CallsOnLoad(trace)}, path)
    with pytest.raises(UntrustedPickleError) as err:
        read_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg and "test_security._touch" in msg and "trust_pickle=True" in msg
    assert not trace.exists()  # refused before anything ran
    with pytest.raises(CheckpointError, match="not a histokit training checkpoint"):
        load_checkpoint(path)  # training resume has no trust flag at all
    assert not trace.exists()
    # only the explicit flag unpickles it, and then the function does run: that is what the flag trusts
    assert read_checkpoint(path, trust_pickle=True)["args"] == "ran" and trace.exists()


def test_a_checkpoint_that_calls_os_system_is_refused_naming_the_call(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "hook": RunsShell()}, path)
    with pytest.raises(UntrustedPickleError, match=r"pickles posix\.system"):
        read_checkpoint(path)


# ------------------------------------------------------------------------------ features and indexes


def _features(seed: int) -> FeatureSet:
    rng = np.random.default_rng(seed)
    return FeatureSet(rng.standard_normal((10, 8)), np.arange(10) % 3, np.arange(10))


def test_a_swapped_feature_file_fails_its_recorded_sha256(tmp_path):
    ours, theirs = tmp_path / "train.npz", tmp_path / "other.npz"
    recorded = save_features(ours, _features(0))
    save_features(theirs, _features(1))
    os.replace(theirs, ours)  # a valid feature file, but not the one the run recorded
    with pytest.raises(FeatureFileError) as err:
        load_features(ours, expected_sha256=recorded)
    assert str(ours) in str(err.value) and recorded in str(err.value)


def test_a_feature_file_with_a_pickled_object_array_is_refused(tmp_path):
    trace = tmp_path / "code_ran"
    path = tmp_path / "train.npz"
    objects = np.empty(1, dtype=object)
    objects[0] = CallsOnLoad(trace)
    np.savez(path, features=objects, labels=np.zeros(1), indices=np.zeros(1), timing_json=np.array("{}"))
    with pytest.raises(FeatureFileError, match=r"train\.npz.*allow_pickle"):
        load_features(path)
    assert not trace.exists()


def test_a_swapped_faiss_index_fails_its_recorded_sha256(tmp_path):
    path, other = tmp_path / "gallery.faiss", tmp_path / "other.faiss"
    meta = save_index(build_index(_features(0).features), path)
    save_index(build_index(_features(1).features), other)
    os.replace(other, path)  # same dim, same count, different vectors
    with pytest.raises(IndexFileError, match=rf"gallery\.faiss.*{meta['sha256']}"):
        load_index(path)


# ------------------------------------------------------------------------------ notebook parameters


def test_a_parameter_value_cannot_break_out_into_code(tmp_path, monkeypatch):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = new_code_cell("run_dir = ''\nvalue = ''\nitems = {}")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, new_code_cell("import json\nfrom pathlib import Path\n"
                                      "Path(run_dir, 'received.json').write_text(json.dumps([value, items]))")]
    nbformat.write(nb, folder / "01_data.ipynb")
    monkeypatch.setattr(paths, "NOTEBOOK_DIR", folder)
    trace = tmp_path / "code_ran"
    escape = f"x'\nopen({str(trace)!r}, 'w')\n'"
    value = f'{escape}"""{escape}\\'
    items = {"key'); open('" + str(trace) + "', 'w'); ('": [escape]}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    runner.run_stage("01_data", {"run_dir": str(run_dir), "value": value, "items": items}, run_dir)
    assert json.loads((run_dir / "received.json").read_text()) == [value, items]
    assert not trace.exists()
