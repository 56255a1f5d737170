"""The warm kernel: one kernel for many notebooks, with nothing of one notebook visible to the next."""
from __future__ import annotations

import json
import os
import signal
import time

import papermill
import pytest

from histokit.kernel import WarmKernel
from notebook_helpers import write_stage_notebook

REPORT = ("import json, os, sys\n"
          "seen = {'pid': os.getpid(), 'leftover': 'secret' in dir(), 'torch_loaded': 'torch' in sys.modules}\n"
          "open(out, 'w').write(json.dumps(seen))")


def _run(kernel, tmp_path, name, body):
    nb = tmp_path / f"{name}.ipynb"
    write_stage_notebook(nb, body, parameters="out = ''")
    out = tmp_path / f"{name}.json"
    papermill.execute_notebook(str(nb), str(tmp_path / f"{name}.out.ipynb"), parameters={"out": str(out)},
                               kernel_name="python3", progress_bar=False, **kernel.papermill_args())
    return json.loads(out.read_text()) if out.exists() else None


def test_notebooks_share_the_process_and_imports_but_not_names(tmp_path):
    with WarmKernel(cwd=tmp_path) as kernel:
        first = _run(kernel, tmp_path, "first", "import torch\nsecret = 42\n" + REPORT)
        second = _run(kernel, tmp_path, "second", REPORT)
        assert kernel.starts == 1 and kernel.notebooks_run == 2
    assert first["pid"] == second["pid"]        # one kernel ...
    assert first["leftover"] is True and second["leftover"] is False  # ... whose namespace was cleared
    assert second["torch_loaded"] is True       # imports stay: the point of a warm kernel


def test_a_failed_notebook_gives_the_next_one_a_new_kernel(tmp_path):
    from histokit.runner import StageFailed, _execute

    good = tmp_path / "good.ipynb"
    write_stage_notebook(good, REPORT, parameters="out = ''")
    bad = tmp_path / "bad.ipynb"
    write_stage_notebook(bad, "raise ValueError('boom')", parameters="out = ''")
    with WarmKernel(cwd=tmp_path) as kernel:
        _execute("a", good, tmp_path / "x" / "a.ipynb", {"out": str(tmp_path / "a.json")}, False, kernel)
        with pytest.raises(StageFailed, match="boom"):
            _execute("b", bad, tmp_path / "x" / "b.ipynb", {"out": ""}, False, kernel)
        _execute("c", good, tmp_path / "x" / "c.ipynb", {"out": str(tmp_path / "c.json")}, False, kernel)
        assert kernel.starts == 2
    before, after = (json.loads((tmp_path / f"{n}.json").read_text())["pid"] for n in "ac")
    assert before != after


def test_a_kernel_that_died_is_started_again(tmp_path):
    with WarmKernel(cwd=tmp_path) as kernel:
        pid = _run(kernel, tmp_path, "first", REPORT)["pid"]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60  # wait for the kill to land, so the next notebook sees a dead kernel
        while kernel._km.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not kernel._km.is_alive()
        assert _run(kernel, tmp_path, "second", REPORT)["pid"] != pid
        assert kernel.starts == 2


def test_the_kernel_uses_ipc_not_tcp_and_cleans_up(tmp_path):
    with WarmKernel(cwd=tmp_path) as kernel:
        _run(kernel, tmp_path, "first", REPORT)
        km, folder = kernel._km, kernel._folder
        assert km.transport == "ipc" and folder.is_dir()
    assert not folder.exists() and kernel._km is None


def test_prewarmed_imports_stay_loaded_but_leave_no_name_and_are_not_the_first_notebooks_time(tmp_path):
    with WarmKernel(cwd=tmp_path) as kernel:
        kernel.prewarm("import torch\nsecret = 'from the prewarm'")
        seconds = kernel.wait_prewarmed()
        assert seconds is not None and seconds > 0 and kernel.wait_prewarmed() is None  # waited once
        first = _run(kernel, tmp_path, "first", REPORT)
        assert kernel.starts == 1
    assert first["torch_loaded"] is True and first["leftover"] is False


def test_the_first_notebook_waits_for_a_prewarm_still_running(tmp_path):
    with WarmKernel(cwd=tmp_path) as kernel:
        kernel.prewarm("import time, torch\ntime.sleep(1)\nsecret = 1")
        first = _run(kernel, tmp_path, "first", REPORT)  # papermill_args() waits for the imports first
        assert kernel.prewarm_seconds is not None and kernel.prewarm_seconds >= 1.0
    assert first["torch_loaded"] is True and first["leftover"] is False
