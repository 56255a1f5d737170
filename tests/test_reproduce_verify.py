"""``histokit reproduce --verify`` (issue 19, class 10): a fresh run's published tables are compared, cell by cell,
with the ones that lay at results/<paper>/<profile>/ when the command started (the committed ones in a fresh clone,
read before publishing replaces them); every differing cell is named with its table, row, column, committed and
new value, and the exit status is 1. Timing and device columns (and timing.csv) are not compared.

The runs are the runner's own (reproduce, publication) with stand-in stages (tests/runner_helpers.py)."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from histokit import runner
from histokit.cli import main
from histokit.results_verify import compare_tables, snapshot_tables

from runner_helpers import fake_execute, fake_stages  # noqa: F401  (fixture)

pytestmark = pytest.mark.determinism

ETA = {"eta_p": "70.0"}          # what the stand-in evaluation reports for strategy C
TICKS = itertools.count(1)       # a timing that differs on every run, as real timings do


def execute_with_tables(stage, notebook, executed, params, log_output, kernel=None):
    seconds = fake_execute(stage, notebook, executed, params, log_output, kernel)
    if stage == "07_visualize":
        results = Path(params["run_dir"]) / "results"
        tick = next(TICKS)
        (results / "table1.csv").write_text(
            "strategy,pretraining_data,eta_p,eta_w,feature_extraction_ms,retrieval_latency_ms (paper)\n"
            f"A,IN-1K,not run,not run,{tick}.5,3.0\n"
            f"C,IN-1K + PanNuke + Kimia,{ETA['eta_p']},62.5,{tick}.25,3.0\n")
        (results / "timing.csv").write_text(f"model,device,gallery_size\nC,cpu {tick},80\n")
        (results / "records.csv").write_text(
            f"table,model,metric,value\ntable1,C,eta_p,{ETA['eta_p']}\ntable1,C,feature_extraction_ms,{tick}\n")
    return seconds


@pytest.fixture
def stages(fake_stages, monkeypatch):
    monkeypatch.setattr(runner, "_execute", execute_with_tables)
    monkeypatch.setattr("histokit.cli._after_reproduce", lambda args: 0)  # the report (of stand-in figures) aside
    monkeypatch.setitem(ETA, "eta_p", "70.0")
    return fake_stages


def reproduce(tmp_path, run: str, *flags) -> int:
    return main(["reproduce", "esvit", "--fresh-kernels", "--quiet", "--run-dir", str(tmp_path / run), "--device",
                 "cpu", "--data-root", str(tmp_path / "data"), *flags])


def test_verify_passes_when_every_cell_is_reproduced_and_timings_differ(stages, tmp_path, capsys):
    assert reproduce(tmp_path, "committed") == 0          # what a clone has under results/esvit/smoke
    capsys.readouterr()
    assert reproduce(tmp_path, "fresh", "--verify") == 0  # a fresh run: new timings, the same numbers
    out = capsys.readouterr().out
    assert "every cell of 2 tables matches the committed ones" in out and "latency" in out


def test_verify_names_the_one_cell_that_differs_and_exits_1(stages, tmp_path, capsys):
    assert reproduce(tmp_path, "committed") == 0
    published = tmp_path / "results" / "esvit" / "smoke"
    committed = (published / "table1.csv").read_text()
    capsys.readouterr()
    ETA["eta_p"] = "60.0"
    assert reproduce(tmp_path, "fresh", "--verify") == 1
    out = capsys.readouterr().out
    cells = [line.strip() for line in out.splitlines() if line.startswith("  ") and "row" in line]
    assert cells == ["records.csv  row table1 / C / eta_p  column 'value': committed '70.0', new '60.0'",
                     "table1.csv  row C / IN-1K + PanNuke + Kimia  column 'eta_p': committed '70.0', new '60.0'"]
    assert "2 cells differ" in out
    # compared with the publication as it was before this run replaced it (the new one is published)
    assert (published / "table1.csv").read_text() != committed and "60.0" in (published / "table1.csv").read_text()


def test_verify_without_committed_tables_says_so_and_fails(stages, tmp_path, capsys):
    assert reproduce(tmp_path, "fresh", "--verify") == 1
    assert "no committed tables" in capsys.readouterr().out


def _table(tmp_path, name, text):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "t.csv").write_text(text)
    return snapshot_tables(folder)


def test_compare_names_missing_rows_and_columns_and_compares_numbers_as_numbers(tmp_path):
    old = _table(tmp_path, "old", "model,acc,auc,seconds,device\nA,70,0.5,1,cpu\nB,80,0.6,2,cpu\n")
    new = _table(tmp_path, "new", "model,acc,f1,seconds,device\nA,70.0,0.1,9,cuda\nC,81,0.2,3,cuda\n")
    got = sorted(str(d) for d in compare_tables(old, new))
    assert got == sorted([
        "t.csv  row (every row)  column 'auc': committed '(column)', new (absent)",
        "t.csv  row (every row)  column 'f1': committed (absent), new '(column)'",
        "t.csv  row B  column '(whole row)': committed 'B,80,0.6,2,cpu', new (absent)",
        "t.csv  row C  column '(whole row)': committed (absent), new 'C,81,0.2,3,cuda'",
    ])  # 70 = 70.0; seconds and device are not compared
    assert compare_tables(old, {}) and "(whole table)" in str(compare_tables(old, {})[0])
