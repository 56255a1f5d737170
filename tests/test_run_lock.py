"""One run per run directory: a second ``histokit reproduce`` into a run directory in use is refused naming the
holder (pid, host, start time), before it runs anything; a lock left by a run that died is taken over, and said so."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from histokit import runner
from histokit.cli import main
from histokit.runner import RunnerError

from runner_helpers import fake_stages, run  # noqa: F401  (fixture)

pytestmark = pytest.mark.fault

HOLD = ("import sys, time\n"
        "from histokit.run_lock import RunLock\n"
        "RunLock(sys.argv[1], 'histokit reproduce esvit smoke').acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n")


@pytest.fixture
def holder(tmp_path):
    """Another process that holds ``tmp_path/run``'s lock until the test kills it."""
    (tmp_path / "run").mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "held\n"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_a_second_run_into_a_run_dir_in_use_is_refused_naming_the_holder(fake_stages, tmp_path, holder):
    with pytest.raises(RunnerError) as err:
        run(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"run directory {tmp_path / 'run'} is in use by pid {holder.pid} on host {socket.gethostname()} since" in msg
    assert "histokit reproduce esvit smoke" in msg and "run.lock" in msg
    assert not (tmp_path / "run" / "stages").exists() and not (tmp_path / "results").exists()  # nothing ran


def test_the_cli_says_so_in_one_line(fake_stages, tmp_path, holder, capsys):
    code = main(["reproduce", "esvit", "--fresh-kernels", "--device", "cpu", "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and f"pid {holder.pid}" in err and "another --run-dir" in err


def test_a_lock_left_by_a_killed_run_is_taken_over_and_said_so(fake_stages, tmp_path, holder, capsys):
    holder.send_signal(signal.SIGKILL)  # dies holding it: no cleanup runs
    holder.wait()
    assert json.loads((tmp_path / "run" / "run.lock").read_text())["pid"] == holder.pid  # its record stays behind
    result = run(tmp_path)
    assert result.results_dir is not None
    out = capsys.readouterr().out
    assert f"took over the stale lock of a run that did not finish (pid {holder.pid} on host" in out
    assert (tmp_path / "run" / "run.lock").read_text() == ""  # this run ended: it leaves no holder behind
    run(tmp_path)
    assert "took over" not in capsys.readouterr().out


def test_the_lock_is_held_while_the_stages_run(fake_stages, tmp_path, monkeypatch):
    from histokit.run_lock import RunLock, RunLocked

    seen = []
    real = runner._execute

    def stage(stage, notebook, executed, params, *args, **kwargs):
        with pytest.raises(RunLocked, match=f"pid {os.getpid()}"):
            RunLock(tmp_path / "run").acquire()
        seen.append(stage)
        return real(stage, notebook, executed, params, *args, **kwargs)

    monkeypatch.setattr(runner, "_execute", stage)
    run(tmp_path)
    assert seen == list(runner.STAGES)
    with RunLock(tmp_path / "run"):  # and released at the end
        pass
