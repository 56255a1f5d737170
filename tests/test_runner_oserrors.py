"""Every OSError of ``histokit reproduce`` is one line naming the path and what to do, never a traceback: a run
directory that is a file or cannot be made, a full disk inside a stage (the stage, the file, the executed notebook)
or in papermill's own write of the executed notebook, a full disk while publishing."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from histokit import runner
from histokit.cli import main
from histokit.runner import StageFailed, describe_os_error, run_stage

from notebook_helpers import write_stage_notebook
from runner_helpers import fake_stages  # noqa: F401  (fixture)

pytestmark = pytest.mark.fault

REAL_EXECUTE = runner._execute


def _reproduce(tmp_path, run_dir) -> int:
    return main(["reproduce", "esvit", "--fresh-kernels", "--device", "cpu", "--data-root", str(tmp_path / "data"),
                 "--run-dir", str(run_dir)])


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.bad_input
def test_a_run_dir_that_is_a_file_is_one_line(fake_stages, tmp_path, capsys):
    run_dir = tmp_path / "run.txt"
    run_dir.write_text("notes")
    assert _reproduce(tmp_path, run_dir) == 1
    err = _one_line(capsys.readouterr().err)
    assert str(run_dir) in err and "is a file, not a directory" in err and "--run-dir" in err
    assert run_dir.read_text() == "notes"
    assert _reproduce(tmp_path, run_dir / "inside") == 1  # a file above it
    err = _one_line(capsys.readouterr().err)
    assert f"{run_dir}, a folder above it, is a file" in err


@pytest.mark.bad_input
def test_a_run_dir_that_cannot_be_made_is_one_line(fake_stages, tmp_path, capsys):
    run_dir = Path("/proc") / f"histokit-test-{os.getpid()}" / "run"
    assert _reproduce(tmp_path, run_dir) == 1
    err = _one_line(capsys.readouterr().err)
    assert str(run_dir) in err and "cannot be made" in err and "[errno" in err and "choose another --run-dir" in err


class NoKernel:
    """Where a stage's kernel would be: nothing to start (papermill itself is replaced in these tests)."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def wait_prewarmed(self):
        return None

    def papermill_args(self):
        return {}

    def discard(self):
        pass


def test_a_full_disk_in_papermills_own_write_names_the_stage_and_the_notebook(fake_stages, tmp_path, capsys,
                                                                                monkeypatch):
    import papermill

    from histokit import kernel

    def full_disk(notebook, executed, **kwargs):  # the executed copy is cut short, and write() names no file
        Path(executed).write_text('{"cells": [')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(runner, "_execute", REAL_EXECUTE)
    monkeypatch.setattr(kernel, "WarmKernel", NoKernel)
    monkeypatch.setattr(papermill, "execute_notebook", full_disk)
    assert _reproduce(tmp_path, tmp_path / "run") == 1
    err = _one_line(capsys.readouterr().err)
    executed = tmp_path / "run" / "notebooks" / "01_data.ipynb"
    assert "stage 01_data" in err and "No space left on device" in err and "free space" in err
    assert f"could not write the executed notebook {executed}: No space left" in err and "may be cut short" in err
    assert not (tmp_path / "run" / "stages" / "01_data.done.json").exists()


def test_a_full_disk_inside_a_stage_names_the_stage_the_file_and_the_executed_notebook(tmp_path, monkeypatch):
    from histokit import paths

    folder = tmp_path / "notebooks"
    folder.mkdir()
    monkeypatch.setattr(paths, "NOTEBOOK_DIR", folder)
    # the stage writes its features through the kit's atomic write; the disk fills as the file is flushed
    write_stage_notebook(folder / "04_index.ipynb", (
        "import errno, os\n"
        "from pathlib import Path\n"
        "from histokit import io as hio\n"
        "def full_disk(fd):\n"
        "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "os.fsync = full_disk\n"
        "hio.atomic_write_bytes(Path(run_dir) / 'features' / 'train.npz', b'x' * 1000)\n"), "run_dir = ''")
    run_dir = tmp_path / "run"
    with pytest.raises(StageFailed) as err:
        run_stage("04_index", {"run_dir": str(run_dir)}, run_dir)
    msg = str(err.value)
    executed = run_dir / "notebooks" / "04_index.ipynb"
    assert "\n" not in msg, msg
    assert msg.startswith("stage 04_index failed (OSError in cell 1)")
    assert f"on {run_dir / 'features' / 'train.npz'}: No space left on device [errno 28]" in msg
    assert "free space" in msg and msg.endswith(f"the executed notebook is {executed}") and executed.exists()


def test_a_full_disk_while_publishing_is_one_line(fake_stages, tmp_path, capsys, monkeypatch):
    real_replace = os.replace

    def no_space(src, dst, *args, **kwargs):
        if Path(dst).name == "run.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", no_space)
    assert _reproduce(tmp_path, tmp_path / "run") == 1
    err = _one_line(capsys.readouterr().err)
    assert "publishing to" in err and "run.json: No space left on device [errno 28]: free space" in err
    assert "previous publication there is untouched" in err
    assert sorted(p.name for p in (tmp_path / "results" / "esvit").iterdir()) == []  # no stranded staging


def test_describe_os_error_names_a_path_even_when_the_error_does_not():
    assert describe_os_error(OSError(errno.ENOSPC, "No space left on device"), "/r/x.ipynb") == (
        "/r/x.ipynb: No space left on device [errno 28]: free space on that disk (or put the run elsewhere: "
        "--run-dir) and re-run; finished stages are skipped")
    assert describe_os_error(PermissionError(errno.EACCES, "Permission denied", "/r/t.md")).startswith(
        "/r/t.md: Permission denied [errno 13]: make that path writable")
    assert describe_os_error(OSError(errno.EIO, "Input/output error")).startswith("a file it did not name")
