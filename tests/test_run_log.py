"""What `histokit reproduce` prints: stage lines with estimates and written files; progress bars by environment."""
from __future__ import annotations

import io
import json

import pytest

from histokit import paths
from histokit.progress import MODE_VARIABLE, LineTqdm, progress_bar
from histokit.run_log import (RunLog, describe_written, estimate_seconds, format_duration, snapshot,
                              written_since)


@pytest.mark.parametrize("seconds, text", [(4.4, "4 s"), (65, "1 min 05 s"), (3 * 3600 + 120, "3 h 02 min")])
def test_durations_read_like_a_person_writes_them(seconds, text):
    assert format_duration(seconds) == text


def _publish_record(tmp_path, monkeypatch, stages):
    monkeypatch.setattr(paths, "RESULTS_DIR", tmp_path / "results")
    folder = tmp_path / "results" / "esvit" / "smoke"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"stages": [{"stage": s, "seconds": t} for s, t in stages.items()]}))


def test_estimate_sums_the_recorded_stages_and_is_none_without_a_record(tmp_path, monkeypatch):
    _publish_record(tmp_path, monkeypatch, {"01_data": 3.0, "02_pretrain": 40.0, "03_finetune": 50.0})
    assert estimate_seconds("esvit", "smoke", ["02_pretrain", "03_finetune"]) == 90.0
    assert estimate_seconds("esvit", "smoke", ["02_pretrain", "04_index"]) is None  # no record of 04
    assert estimate_seconds("chen2022", "smoke", ["01_data"]) is None  # never published


def test_stage_lines_carry_position_estimate_and_written_tables(tmp_path, monkeypatch, capsys):
    _publish_record(tmp_path, monkeypatch, {"01_data": 10.0, "02_pretrain": 50.0})
    log = RunLog("esvit", "smoke", ["01_data", "02_pretrain"], later_s=60.0)
    log.stage_started("02_pretrain")
    log.stage_ended("02_pretrain", "ran", 48.2, ["table1.csv", "notes.json", "figures/loss.png"])
    log.stage_ended("01_data", "skipped", 0.0, [])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[histokit] esvit / smoke: 02_pretrain (2/2) ...; about 1 min 50 s left (from the last recorded run)"
    assert out[1] == "[histokit] esvit / smoke: 02_pretrain ran in 48 s; wrote table1.csv, figures/loss.png"
    assert "skipped" in out[2]


def test_quiet_prints_nothing(capsys):
    log = RunLog("esvit", "smoke", ["01_data"], quiet=True)
    log.stage_started("01_data")
    log.stage_ended("01_data", "ran", 1.0, ["table1.md"])
    assert capsys.readouterr().out == ""


def test_written_files_are_those_new_or_changed(tmp_path):
    (tmp_path / "old.csv").write_text("a")
    (tmp_path / "same.md").write_text("b")
    before = snapshot(tmp_path)
    (tmp_path / "new.png").write_text("c")
    (tmp_path / "old.csv").write_text("changed")
    import os
    os.utime(tmp_path / "old.csv", ns=(before["old.csv"] + 10**9, before["old.csv"] + 10**9))
    assert written_since(before, snapshot(tmp_path)) == ["new.png", "old.csv"]
    assert describe_written([f"t{i}.md" for i in range(8)], limit=6).endswith("(+2 more)")


def test_progress_is_off_when_quiet_and_text_to_the_terminal_headless(monkeypatch):
    monkeypatch.setenv(MODE_VARIABLE, "off")
    assert progress_bar(range(3)).disable is True
    monkeypatch.setenv(MODE_VARIABLE, "terminal")
    log = io.StringIO()  # not a terminal: one line per update, at most every 30 s
    assert progress_bar(range(3), file=log).delay == 5.0  # short loops print nothing
    bar = progress_bar(range(3), file=log, desc="extract features", delay=0)
    assert isinstance(bar, LineTqdm) and bar.mininterval == 30.0
    list(bar)
    bar.close()
    lines = log.getvalue().splitlines()
    assert lines and "\r" not in log.getvalue() and lines[-1].startswith("extract features: 100%")


def test_a_postfix_set_every_step_does_not_print_a_line_every_step(monkeypatch):
    # The training loop sets loss / lr on the bar each step; tqdm's set_postfix redraws at once unless told not to,
    # which printed one log line per step whatever mininterval said.
    monkeypatch.setenv(MODE_VARIABLE, "terminal")
    log = io.StringIO()
    bar = progress_bar(total=50, file=log, desc="dino epoch 1/1", delay=0)
    for step in range(50):
        bar.update(1)
        bar.set_postfix(loss=f"{1.0 / (step + 1):.4f}")
    bar.close()
    lines = log.getvalue().splitlines()
    assert 1 <= len(lines) <= 3, lines  # the first draw and the closing one, not 50
    assert "100%" in lines[-1] and "loss=0.0200" in lines[-1]
