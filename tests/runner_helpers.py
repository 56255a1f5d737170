"""Test helpers for the runner's publish / lock / identity / error paths: seven stand-in stage notebooks that declare
the runner's parameters, and a stand-in for papermill's execution, so ``reproduce`` runs end to end in well under a
second without starting a kernel."""
from __future__ import annotations

from pathlib import Path

import pytest

from histokit import paths, runner
from notebook_helpers import write_stage_notebook

PARAMETERS = ("paper = 'esvit'\nprofile = 'smoke'\ndata_root = ''\nrun_dir = ''\ndevice = 'cpu'\nseed = 0\n"
              "checkpoints = {}\nrehearse = {}\ndistributed = {}")


def fake_execute(stage, notebook, executed, params, log_output, kernel=None):
    """What a stage does, without a kernel: write its executed copy and a table into the run's results."""
    executed.parent.mkdir(parents=True, exist_ok=True)
    executed.write_text("{}")
    results = Path(params["run_dir"]) / "results"
    (results / "figures").mkdir(parents=True, exist_ok=True)
    (results / f"table_{stage[:2]}.md").write_text(f"{stage} seed {params.get('seed')}\n")
    if stage == "07_visualize":
        (results / "records.csv").write_text("metric,value\nacc,0.5\n")
        (results / "figures" / "fig1.png").write_bytes(b"png")
    return 0.01


@pytest.fixture
def fake_stages(tmp_path, monkeypatch):
    """Seven stand-in notebooks (never executed), a results folder of the test's own, and no kernel, git or torch
    calls: ``runner.reproduce('esvit', run_dir=..., fresh_kernels=True)`` takes milliseconds."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    for stage in runner.STAGES:
        write_stage_notebook(folder / f"{stage}.ipynb", "x = 1", PARAMETERS)
    monkeypatch.setattr(paths, "NOTEBOOK_DIR", folder)
    monkeypatch.setattr(paths, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setattr(runner, "_execute", fake_execute)
    monkeypatch.setattr(runner, "git_commit", lambda: {"commit": None, "dirty": None})
    monkeypatch.setattr(runner, "device_info", lambda device: {"requested": device})
    monkeypatch.setattr(runner, "_faiss_info", lambda: {})
    return folder


def run(tmp_path, **kwargs):
    """``reproduce('esvit', 'smoke')`` into ``tmp_path/run`` with the stand-ins."""
    kwargs.setdefault("run_dir", str(tmp_path / "run"))
    return runner.reproduce("esvit", "smoke", data_root=str(tmp_path / "data"), device="cpu", fresh_kernels=True,
                            **kwargs)
