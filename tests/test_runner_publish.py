"""Publishing never loses results: the new publication is built beside the old one and swapped in by renames; the
previous one is moved aside, never deleted before the new one is complete, and a removal that fails afterwards is a
warning naming what is left. A file where a directory should be, or a damaged run.json, is one clear line.

The undeletable file and the read-only folder are simulated (the tests may run as root, for whom chmod stops
nothing): ``shutil.rmtree`` deletes what it can and fails on the protected paths, as it does on a real disk."""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from histokit import runner
from histokit.runner import RunnerError, publish_results

from runner_helpers import fake_stages, run  # noqa: F401  (fixture)

pytestmark = pytest.mark.fault


def _run_dir(tmp_path: Path, version: str) -> Path:
    run_dir = tmp_path / "run"
    results = run_dir / "results"
    (results / "figures").mkdir(parents=True, exist_ok=True)
    (results / "table1.md").write_text(f"table1 {version}")
    (results / "table1.csv").write_text(f"m,v\nacc,{version}\n")
    (results / "records.csv").write_text(f"records {version}")
    (results / "figures" / "fig1.png").write_bytes(f"png {version}".encode())
    return run_dir


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _protecting(monkeypatch, protected):
    """``shutil.rmtree`` that removes everything but the paths ``protected(path)`` says are undeletable."""
    real = shutil.rmtree

    def rmtree(path, ignore_errors=False, onerror=None, **kwargs):
        path = Path(path)
        if not path.exists():
            return real(path, ignore_errors=ignore_errors, onerror=onerror, **kwargs)
        for p in sorted(path.rglob("*"), key=lambda p: -len(p.parts)):
            if protected(p) or (p.is_dir() and any(p.iterdir())):
                if p.is_file():
                    exc = PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(p))
                    if onerror is not None:
                        onerror(os.unlink, str(p), (PermissionError, exc, None))
                    elif not ignore_errors:
                        raise exc
                continue
            p.rmdir() if p.is_dir() else p.unlink()
        if not any(path.iterdir()):
            path.rmdir()

    monkeypatch.setattr(shutil, "rmtree", rmtree)


@pytest.mark.parametrize("protected", ["one undeletable file", "read-only figures folder"])
def test_republishing_when_the_old_copy_cannot_be_removed_keeps_every_result(tmp_path, monkeypatch, capsys,
                                                                             protected):
    target = tmp_path / "results" / "esvit" / "smoke"
    publish_results(_run_dir(tmp_path, "old"), target, {"parameters": {"seed": 0}})
    rule = {"one undeletable file": lambda p: p.name == "records.csv",
            "read-only figures folder": lambda p: p.parent.name == "figures"}[protected]
    _protecting(monkeypatch, rule)

    publish_results(_run_dir(tmp_path, "new"), target, {"parameters": {"seed": 0}})  # same parameters: a re-publish

    assert _tree(target) == {**_tree(tmp_path / "run" / "results"),
                             "run.json": (target / "run.json").read_bytes()}
    assert json.loads((target / "run.json").read_text()) == {"parameters": {"seed": 0}}
    leftovers = [p for p in target.parent.iterdir() if p.name != "smoke"]
    assert [p.name.split("-")[0] for p in leftovers] == [".smoke.previous"]  # no stranded staging folder
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning" in err and str(leftovers[0]) in err and "complete" in err


def test_a_failed_swap_puts_the_previous_publication_back(tmp_path, monkeypatch):
    target = tmp_path / "results" / "esvit" / "smoke"
    publish_results(_run_dir(tmp_path, "old"), target, {"parameters": {"seed": 0}})
    before = _tree(target)

    def failing(real):
        def rename(src, dst, *args, **kwargs):  # the disk fills as the new publication is renamed into place
            if ".staging" in Path(src).name:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))
            return real(src, dst, *args, **kwargs)
        return rename

    monkeypatch.setattr(os, "replace", failing(os.replace))
    monkeypatch.setattr(os, "rename", failing(os.rename))
    with pytest.raises(OSError) as err:
        publish_results(_run_dir(tmp_path, "new"), target, {"parameters": {"seed": 0}})
    assert err.value.errno == errno.ENOSPC
    assert _tree(target) == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["smoke"]


@pytest.mark.bad_input
@pytest.mark.parametrize("where", ["paper folder", "profile folder"])
def test_a_file_where_the_results_folder_should_be_is_one_clear_line(tmp_path, where):
    target = tmp_path / "results" / "esvit" / "smoke"
    in_the_way = target.parent if where == "paper folder" else target
    in_the_way.parent.mkdir(parents=True)
    in_the_way.write_text("not a folder")
    with pytest.raises(RunnerError) as err:
        publish_results(_run_dir(tmp_path, "new"), target, {"parameters": {}})
    msg = str(err.value)
    assert "\n" not in msg and str(in_the_way) in msg and "is a file, not a directory" in msg and "move it" in msg
    assert in_the_way.read_text() == "not a folder"


@pytest.mark.bad_input
@pytest.mark.parametrize("damage", ["{\n", "[1, 2]", ""])
def test_a_damaged_run_json_moves_the_previous_publication_aside(tmp_path, capsys, damage):
    target = tmp_path / "results" / "esvit" / "smoke"
    publish_results(_run_dir(tmp_path, "old"), target, {"parameters": {"seed": 0}})
    (target / "run.json").write_text(damage)
    old = _tree(target)
    publish_results(_run_dir(tmp_path, "new"), target, {"parameters": {"seed": 0}})
    assert (target / "table1.md").read_text() == "table1 new"
    kept = list((tmp_path / "run" / "superseded").iterdir())
    assert len(kept) == 1 and _tree(kept[0]) == old  # everything of the old one, its damaged run.json too
    out = capsys.readouterr().out
    assert "previous publication" in out and "unreadable" in out and "run.json" in out and str(kept[0]) in out


def test_two_publications_in_one_second_keep_both_previous_ones(tmp_path):
    target = tmp_path / "results" / "esvit" / "smoke"
    for seed in range(3):
        publish_results(_run_dir(tmp_path, f"v{seed}"), target, {"parameters": {"seed": seed}})
    kept = sorted((tmp_path / "run" / "superseded").glob("*/table1.md"))
    assert sorted(p.read_text() for p in kept) == ["table1 v0", "table1 v1"]


def test_reproduce_reports_a_results_folder_that_is_a_file_in_one_line(fake_stages, tmp_path, capsys):
    from histokit.cli import main

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "esvit").write_text("a file")
    code = main(["reproduce", "esvit", "--fresh-kernels", "--run-dir", str(tmp_path / "run"), "--device", "cpu",
                 "--data-root", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and str(tmp_path / "results" / "esvit") in err and "is a file" in err
    assert (tmp_path / "run" / "results" / "records.csv").exists()  # the run's results are kept
