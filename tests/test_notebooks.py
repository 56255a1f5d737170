"""The notebook rules of docs/design.md: a tagged parameters cell with smoke defaults, no stored outputs except
nbval-checked cells, one kernel name, no function or class definitions, the same parameters everywhere — and the
stage's own calls present. tools/make_notebooks.py writes the notebooks, but only the parameters cell and this
structure are checked against it, so a researcher's edit of a markdown cell or an extra cell still passes."""
import ast
import importlib.util
import json
from pathlib import Path

import nbformat
import pytest

from histokit.runner import KERNEL_NAME, STAGES, declared_parameters

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXPECTED_PARAMETERS = {"paper": "esvit", "profile": "smoke", "data_root": "", "run_dir": "", "device": "auto",
                       "seed": 0, "checkpoints": {}, "rehearse": {}, "distributed": {}, "encoders": []}

# What each stage notebook must call (or import, for run_one: the re-run cell shows it without running it): the
# context, the stage's plan, the stage itself and what shows its artifacts.
COMMON_CALLS = {"open_stage", "show_plan"}
REQUIRED_CALLS = {
    "01_data": {"data_stage.run", "show_figures"},
    "02_pretrain": {"train_stage.run", "show_figures"},
    "03_finetune": {"train_stage.run", "show_figures"},
    "04_index": {"index_stage.run", "feature_shapes"},
    "05_evaluate": {"evaluate_stage.run", "show_tables", "byo.notebook_tables", "overridable", "run_one"},
    "06_ablations": {"evaluate_stage.run", "show_tables", "byo.notebook_tables", "overridable", "run_one"},
    "07_visualize": {"visualize_stage.run", "show_figures", "overridable", "run_one"},
}


def _generator():
    spec = importlib.util.spec_from_file_location("make_notebooks", ROOT / "tools" / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _parameters(source: str) -> dict:
    """name -> default of a parameters cell's assignments (as papermill reads them)."""
    return {t.id: ast.literal_eval(n.value) for n in ast.parse(source).body if isinstance(n, ast.Assign)
            for t in n.targets if isinstance(t, ast.Name)}


def notebook_problems(nb: dict, stage: str) -> list[str]:
    """Every rule a stage notebook breaks (empty: it keeps them all)."""
    problems = []
    if nb.get("metadata", {}).get("kernelspec", {}).get("name") != KERNEL_NAME:
        problems.append(f"kernel name is not {KERNEL_NAME!r}")
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not (len(tagged) == 1 and code and tagged[0] is code[0]):
        problems.append("the first code cell, and only it, is tagged 'parameters'")
    elif _parameters("".join(tagged[0]["source"])) != EXPECTED_PARAMETERS:
        problems.append(f"parameters {_parameters(''.join(tagged[0]['source']))} are not {EXPECTED_PARAMETERS}")
    used = set()
    for cell in code:
        source = "".join(cell["source"])
        if cell.get("outputs"):
            if "NBVAL_CHECK_OUTPUT" not in source:
                problems.append("outputs are stored only for nbval-checked cells")
            if any(o.get("output_type") == "error" for o in cell["outputs"]):
                problems.append("a stored output is an error")
        tree = ast.parse(source)
        if any(isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef, ast.Lambda)) for n in ast.walk(tree)):
            problems.append("no logic in notebooks: functions and classes belong in histokit")
        used |= {_dotted(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        used |= {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    missing = sorted((COMMON_CALLS | REQUIRED_CALLS[stage]) - used)
    if missing:
        problems.append(f"missing the stage's calls {missing}")
    return problems


def test_one_notebook_per_stage():
    assert [p.stem for p in NOTEBOOKS] == list(STAGES) == list(REQUIRED_CALLS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_rules(path):
    assert notebook_problems(json.loads(path.read_text()), path.stem) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_default_to_smoke_as_the_generator_writes_them(path):
    """The parameters cell, as papermill reads it, is the generator's: the same names and defaults."""
    declared = {k: ast.literal_eval(v) for k, v in declared_parameters(path).items()}
    assert declared == EXPECTED_PARAMETERS == _parameters(_generator().PARAMETERS)


def test_the_generator_writes_notebooks_that_keep_the_rules():
    generator = _generator()
    for stage in STAGES:
        assert notebook_problems(json.loads(nbformat.writes(generator.build(stage))), stage) == [], stage


def test_an_edited_notebook_still_passes_and_a_broken_one_does_not():
    """A researcher rewrites a markdown cell and adds a cell of their own: still a valid notebook. A definition in a
    cell, a stored output, a lost stage call or a changed default is caught, each by name."""
    nb = json.loads(nbformat.writes(_generator().build("05_evaluate")))
    nb["cells"][0]["source"] = "# 05 · my notes on Table I\n\nWhy k = 20 matters here."
    nb["cells"].append({"cell_type": "code", "metadata": {}, "source": 'run_one(ctx, "table1", k=20)',
                        "outputs": [], "execution_count": None, "id": "mine"})
    assert notebook_problems(nb, "05_evaluate") == []

    def broken(change):
        copy = json.loads(json.dumps(nb))
        change(copy)
        return " | ".join(notebook_problems(copy, "05_evaluate"))

    code = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]
    run_cell = next(i for i in code if "evaluate_stage.run" in "".join(nb["cells"][i]["source"]))
    assert "functions and classes" in broken(lambda b: b["cells"][-1].update(source="def f():\n    return 1"))
    assert "outputs are stored only" in broken(lambda b: b["cells"][-1].update(
        outputs=[{"output_type": "stream", "name": "stdout", "text": "x"}]))
    assert "'evaluate_stage.run'" in broken(lambda b: b["cells"][run_cell].update(source="tables = {}"))
    assert "parameters" in broken(lambda b: b["cells"][code[0]].update(
        source="".join(b["cells"][code[0]]["source"]).replace('profile = "smoke"', 'profile = "full"')))
    assert "kernel name" in broken(lambda b: b["metadata"]["kernelspec"].update(name="other"))
    assert "tagged 'parameters'" in broken(lambda b: b["cells"][code[1]]["metadata"].update(tags=["parameters"]))
