"""The notebook rules of docs/design.md: a tagged parameters cell with smoke defaults, no stored outputs except
nbval-checked cells, one kernel name, no function or class definitions, the same parameters everywhere."""
import ast
import json
from pathlib import Path

import pytest

from histokit.runner import STAGES, declared_parameters

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
EXPECTED_PARAMETERS = {"paper": "esvit", "profile": "smoke", "data_root": "", "run_dir": "", "device": "auto",
                       "seed": 0, "checkpoints": {}, "rehearse": {}, "distributed": {}, "encoders": []}


def test_one_notebook_per_stage():
    assert [p.stem for p in NOTEBOOKS] == list(STAGES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_rules(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is code[0], "the first code cell, and only it, is tagged 'parameters'"
    for cell in code:
        source = "".join(cell["source"])
        if cell.get("outputs"):
            assert "NBVAL_CHECK_OUTPUT" in source, "outputs are stored only for nbval-checked cells"
            assert not any(o.get("output_type") == "error" for o in cell["outputs"])
        tree = ast.parse(source)
        defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))]
        assert not defs, "no logic in notebooks: functions and classes belong in histokit"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_default_to_smoke(path):
    declared = {k: ast.literal_eval(v) for k, v in declared_parameters(path).items()}
    assert declared == EXPECTED_PARAMETERS


def test_notebooks_match_their_generator():
    """tools/make_notebooks.py is the source of truth; a hand edit that drifts from it is caught here."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_notebooks", NOTEBOOKS[0].parents[1] / "tools" / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for path in NOTEBOOKS:
        built = module.build(path.stem)
        stored = json.loads(path.read_text())
        assert ["".join(c["source"]) for c in stored["cells"]] == [c.source for c in built.cells], path.name
