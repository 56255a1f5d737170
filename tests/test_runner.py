"""The runner: refuses what a notebook does not declare, skips finished stages, names a failing cell, and never
silently overwrites published results."""
import json

import pytest

from histokit import paths, runner
from notebook_helpers import write_stage_notebook
from histokit.runner import RunnerError, StageFailed, publish_results, reproduce, run_stage, select_stages


def _notebook(path, body):
    write_stage_notebook(path, body)


@pytest.fixture
def notebooks(tmp_path, monkeypatch):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    monkeypatch.setattr(paths, "NOTEBOOK_DIR", folder)
    counter = tmp_path / "count.txt"
    _notebook(folder / "01_data.ipynb",
              f"from pathlib import Path\np = Path({str(counter)!r})\n"
              "p.write_text(str(int(p.read_text()) + value if p.exists() else value))")
    _notebook(folder / "02_pretrain.ipynb", "x = 1\nraise ValueError('boom in cell two')")
    return folder, counter


@pytest.mark.fault
def test_stage_runs_once_then_skips_until_params_change(notebooks, tmp_path):
    _, counter = notebooks
    run_dir = tmp_path / "run"
    params = {"run_dir": str(run_dir), "value": 1}
    assert run_stage("01_data", params, run_dir).status == "ran"
    assert run_stage("01_data", params, run_dir).status == "skipped"
    assert counter.read_text() == "1"
    assert run_stage("01_data", {**params, "value": 5}, run_dir).status == "ran"
    assert counter.read_text() == "6"
    assert run_stage("01_data", {**params, "value": 5}, run_dir, force=True).status == "ran"
    assert counter.read_text() == "11"
    assert (run_dir / "notebooks" / "01_data.ipynb").exists()


@pytest.mark.bad_input
def test_undeclared_parameter_is_refused(notebooks, tmp_path):
    with pytest.raises(RunnerError, match="does not declare parameter.*'lr'"):
        run_stage("01_data", {"run_dir": str(tmp_path), "lr": 0.1}, tmp_path)


@pytest.mark.fault
def test_failing_stage_names_notebook_and_cell_and_keeps_executed_copy(notebooks, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(StageFailed) as err:
        run_stage("02_pretrain", {"run_dir": str(run_dir)}, run_dir)
    assert err.value.cell == 1 and "boom in cell two" in str(err.value) and "02_pretrain" in str(err.value)
    assert (run_dir / "notebooks" / "02_pretrain.ipynb").exists()
    assert not (run_dir / "stages" / "02_pretrain.done.json").exists()


@pytest.mark.bad_input
def test_executed_copies_never_overwrite_the_sources(notebooks, tmp_path):
    folder, _ = notebooks
    with pytest.raises(RunnerError, match="over the sources"):
        run_stage("01_data", {"run_dir": str(tmp_path)}, folder.parent)


@pytest.mark.bad_input
def test_unknown_paper_profile_stage_are_refused():
    with pytest.raises(RunnerError, match="unknown paper 'nope'"):
        reproduce("nope")
    with pytest.raises(RunnerError, match="unknown profile 'huge'"):
        reproduce("esvit", "huge")
    with pytest.raises(RunnerError, match="unknown stage 'train'"):
        select_stages(["train"])
    assert select_stages(["04", "evaluate"]) == ["04_index", "05_evaluate"]
    assert select_stages(start="06") == ["06_ablations", "07_visualize"]


@pytest.mark.fault
def test_publish_moves_results_of_other_parameters_aside(tmp_path):
    run_dir, target = tmp_path / "run", tmp_path / "results" / "p" / "smoke"
    (run_dir / "results").mkdir(parents=True)
    (run_dir / "results" / "table1.md").write_text("first")
    publish_results(run_dir, target, {"parameters": {"seed": 0}})
    (run_dir / "results" / "table1.md").write_text("second")
    publish_results(run_dir, target, {"parameters": {"seed": 1}})
    assert (target / "table1.md").read_text() == "second"
    assert json.loads((target / "run.json").read_text())["parameters"] == {"seed": 1}
    kept = list((run_dir / "superseded").glob("*/table1.md"))
    assert [p.read_text() for p in kept] == ["first"], "the earlier publication is kept, not overwritten"
