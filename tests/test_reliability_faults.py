"""Faults survived: a training process SIGKILLed mid-epoch (or mid-save) resumes to the weights of an uninterrupted
run; `reproduce` killed inside a stage resumes at that stage and publishes the same tables; a write that fails (full
disk, no permission) leaves every artifact as it was; an interrupted download or extraction picks up where it
stopped.

The kills are real: a forked child sends itself SIGKILL (no cleanup handler runs), or the test SIGKILLs the runner
process while a stage notebook is executing.
"""
from __future__ import annotations

import builtins
import errno
import importlib
import io
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from histokit import io as hio
from histokit import paths, runner
from histokit.data import safe_extract
from histokit.data.archive import is_extracted
from histokit.data.splits import load_or_make_split
from histokit.models.backbones import create_encoder
from histokit.retrieval.features import FeatureSet, save_features
from histokit.retrieval.index import build_index, save_index
from histokit.ssl import create_method
from histokit.train.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from histokit.train.engine import train

from data_helpers import serve
from data_helpers import MultiCropTiles

pytestmark = pytest.mark.fault

download_mod = importlib.import_module("histokit.data.download")  # the module (histokit.data.download is a function)


def enospc() -> OSError:
    """What write() raises on a full disk: no file name in it."""
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ------------------------------------------------------------------------------ training killed with SIGKILL


def Tiles():
    return MultiCropTiles(n=12, step=8)


def _loader():
    return DataLoader(Tiles(), batch_size=4, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(7))


def _method():
    torch.manual_seed(0)
    return create_method("dino", create_encoder("vit_test", img_size=32), out_dim=64, hidden_dim=32,
                         bottleneck_dim=16, warmup_teacher_temp_epochs=2)


# 3 epochs x 3 steps: the kill lands in epoch 2, after the epoch-1 checkpoint
TRAIN_KW = dict(epochs=3, lr=1e-3, min_lr=1e-5, weight_decay=0.04, weight_decay_end=0.4, warmup_epochs=1,
                progress=False, seed=3)


class SigkillBeforeBatch:
    """A DataLoader stand-in that SIGKILLs its own process before yielding batch ``batch`` of epoch ``epoch``."""

    def __init__(self, loader, epoch: int, batch: int):
        self.loader, self.epoch, self.batch, self.passes = loader, epoch, batch, 0

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):  # generator, sampler, dataset: the engine saves / restores the loader's RNG
        return getattr(self.loader, name)

    def __iter__(self):
        epoch, self.passes = self.passes, self.passes + 1
        for i, batch in enumerate(self.loader):
            if (epoch, i) == (self.epoch, self.batch):
                os.kill(os.getpid(), signal.SIGKILL)
            yield batch


def _sigkill_during_second_save():
    """Make the 2nd torch.save write half its bytes, then SIGKILL the process: a kill in the middle of a save."""
    real_save, calls = torch.save, []

    def dying_save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 2:
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            with open(f, "wb") as fh:
                fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                fh.flush()
                os.fsync(fh.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)

    torch.save = dying_save


def child_train(checkpoint_dir: str, where: str) -> None:
    """Body of the child process; never returns normally (it SIGKILLs itself)."""
    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool (it would hang)
    loader = _loader()
    if where == "mid_epoch":
        loader = SigkillBeforeBatch(loader, epoch=1, batch=2)
    else:
        _sigkill_during_second_save()
    train(_method(), loader, checkpoint_dir=checkpoint_dir, **TRAIN_KW)
    raise SystemExit("the child was supposed to be killed")


def _run_killed_child(target, *args) -> int:
    """Run ``target`` in a forked child (it inherits the imported modules: no 10-s torch import) and return its
    exit code; a child that hangs is killed after 120 s and fails the test."""
    child = multiprocessing.get_context("fork").Process(target=target, args=args)
    child.start()
    child.join(timeout=120)
    if child.is_alive():
        child.kill()
        child.join()
        raise AssertionError("the child neither finished nor died within 120 s")
    return child.exitcode


@pytest.fixture(scope="module")
def one_thread():
    """Parent and forked child compute with one intra-op thread, so float reductions run in the same order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def uninterrupted(one_thread, tmp_path_factory):
    method = _method()
    history = train(method, _loader(), checkpoint_dir=tmp_path_factory.mktemp("straight"), **TRAIN_KW)
    return method.state_dict(), history


def _without_seconds(history):
    return [{k: v for k, v in e.items() if k != "seconds"} for e in history]


@pytest.mark.parametrize("where", ["mid_epoch", "mid_save"])
def test_sigkilled_training_resumes_to_the_uninterrupted_weights(where, tmp_path, uninterrupted):
    ckpt_dir = tmp_path / "ckpt"
    assert _run_killed_child(child_train, str(ckpt_dir), where) == -signal.SIGKILL
    # what survives the kill is the complete epoch-1 checkpoint under its final name
    assert load_checkpoint(checkpoint_path(ckpt_dir))["epoch"] == 1
    stray = list(ckpt_dir.glob(".checkpoint_last.pt.*.tmp"))
    assert len(stray) == (1 if where == "mid_save" else 0)  # the half-written save never took the final name

    resumed = _method()  # as a fresh process would: new weights, new loader, same arguments
    history = train(resumed, _loader(), checkpoint_dir=ckpt_dir, **TRAIN_KW)

    straight_sd, straight_history = uninterrupted
    sd = resumed.state_dict()
    assert sd.keys() == straight_sd.keys()
    for key in sd:  # student, EMA teacher, heads, center: bit-identical
        assert torch.equal(sd[key], straight_sd[key]), key
    assert _without_seconds(history) == _without_seconds(straight_history)
    assert [e["step"] for e in history][-1] == 9


# ------------------------------------------------------------------------------ reproduce killed inside a stage

PARAMETERS = "paper = 'esvit'\nprofile = 'smoke'\ndata_root = ''\nrun_dir = ''\ndevice = 'cpu'\nseed = 0"
STAGE_BODIES = {
    "01_data": (
        "from pathlib import Path\n"
        "run = Path(run_dir)\n"
        "with open(run.parent / (run.name + '.log'), 'a') as log:\n"
        "    log.write('01\\n')\n"
        "(run / 'results').mkdir(parents=True, exist_ok=True)\n"
        "(run / 'results' / 'table1.csv').write_text(f'seed,score\\n{seed},{seed / 4}\\n')\n"),
    "02_pretrain": (
        "import os, time\n"
        "from pathlib import Path\n"
        "run = Path(run_dir)\n"
        "with open(run.parent / (run.name + '.log'), 'a') as log:\n"
        "    log.write('02\\n')\n"
        "(run / 'results' / 'table2.md').write_text('half-written')  # what a kill leaves behind\n"
        "hold = run.parent / 'hold_stage_02'\n"
        "if hold.exists():  # the first attempt waits here to be killed\n"
        "    pid = run.parent / 'hold_stage_02.pid.tmp'\n"
        "    pid.write_text(str(os.getpid()))\n"
        "    os.replace(pid, hold.with_suffix('.pid'))  # the pid file appears whole, never empty\n"
        "    time.sleep(300)\n"
        "(run / 'results' / 'table2.md').write_text(f'| seed | value |\\n|---|---|\\n| {seed} | {seed * 2} |\\n')\n"),
}
STAGES = tuple(STAGE_BODIES)


def _stage_notebooks(folder: Path) -> Path:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    folder.mkdir()
    for stage, body in STAGE_BODIES.items():
        nb = new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        params = new_code_cell(PARAMETERS)
        params.metadata["tags"] = ["parameters"]
        nb.cells = [params, new_code_cell(body)]
        nbformat.write(nb, folder / f"{stage}.ipynb")
    return folder


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"runner exited early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"stage 02 never started ({path} missing)")
        time.sleep(0.1)


def _published_tables(results: Path) -> dict[str, bytes]:
    folder = results / "esvit" / "smoke"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name not in ("run.json", "recipe.json")}


def test_reproduce_killed_inside_a_stage_resumes_there_and_publishes_the_same_tables(tmp_path, monkeypatch):
    notebooks = _stage_notebooks(tmp_path / "notebooks")
    data_root, killed_run = str(tmp_path / "data"), tmp_path / "killed"
    hold = tmp_path / "hold_stage_02"
    hold.touch()
    code = (f"from histokit import runner; runner.STAGES = {STAGES!r}; "
            f"runner.reproduce('esvit', 'smoke', data_root={data_root!r}, run_dir={str(killed_run)!r}, "
            f"device='cpu', seed=3)")
    env = {**os.environ, "HISTOKIT_NOTEBOOK_DIR": str(notebooks), "HISTOKIT_RESULTS_DIR": str(tmp_path / "res_a")}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(hold.with_suffix(".pid"), proc)
        os.kill(proc.pid, signal.SIGKILL)  # the runner dies inside stage 02
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kernel = hold.with_suffix(".pid")
        if kernel.exists():  # the orphaned stage kernel this test started
            try:
                os.kill(int(kernel.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
    hold.unlink()
    assert (killed_run / "stages" / "01_data.done.json").exists()
    assert not (killed_run / "stages" / "02_pretrain.done.json").exists()
    assert not (tmp_path / "res_a" / "esvit").exists()  # nothing published from a run that did not finish

    monkeypatch.setattr(paths, "NOTEBOOK_DIR", notebooks)
    monkeypatch.setattr(runner, "STAGES", STAGES)
    monkeypatch.setattr(paths, "RESULTS_DIR", tmp_path / "res_a")
    resumed = runner.reproduce("esvit", "smoke", data_root=data_root, run_dir=str(killed_run), device="cpu", seed=3)
    assert [(r.stage, r.status) for r in resumed.stages] == [("01_data", "skipped"), ("02_pretrain", "ran")]
    assert (tmp_path / "killed.log").read_text() == "01\n02\n02\n"  # stage 01 ran once in all

    # exactly the tables an uninterrupted run writes (the stage notebooks above are deterministic; running them a
    # second time to compare would only add two kernel start-ups), and the half-written table is gone
    assert _published_tables(tmp_path / "res_a") == {
        "table1.csv": b"seed,score\n3,0.75\n", "table2.md": b"| seed | value |\n|---|---|\n| 3 | 6 |\n"}


def test_a_damaged_stage_marker_means_run_again_not_crash(tmp_path):
    marker = tmp_path / "01_data.done.json"
    assert runner.finished_fingerprint(marker) is None
    marker.write_text('{"fingerprint": "ab')  # cut short
    assert runner.finished_fingerprint(marker) is None
    marker.write_text("[1, 2]")
    assert runner.finished_fingerprint(marker) is None
    marker.write_text(json.dumps({"fingerprint": "abc"}))
    assert runner.finished_fingerprint(marker) == "abc"


# ------------------------------------------------------------------------------ failed writes lose nothing


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(folder.rglob("*"))}


def _features(version: int) -> FeatureSet:
    rng = np.random.default_rng(version)
    return FeatureSet(rng.standard_normal((6, 4)).astype(np.float32), np.arange(6) % 2, np.arange(6))


def _publish(tmp: Path, out: Path, version: int):
    run_dir = tmp / "run"
    (run_dir / "results").mkdir(parents=True, exist_ok=True)
    (run_dir / "results" / "table1.md").write_text(f"table from version {version}")
    return runner.publish_results(run_dir, out / "esvit" / "smoke", {"parameters": {"seed": version}})


# name -> (write version v of the artifact under `out`, the file the error must name)
WRITERS = {
    "atomic_write_json": (lambda tmp, out, v: hio.atomic_write_json(out / "meta.json", {"version": v}), "meta.json"),
    "atomic_torch_save": (lambda tmp, out, v: hio.atomic_torch_save({"w": torch.full((3,), float(v))}, out / "w.pt"),
                          "w.pt"),
    "train_checkpoint": (lambda tmp, out, v: save_checkpoint(checkpoint_path(out), {"epoch": v}),
                         "checkpoint_last.pt"),
    "save_features": (lambda tmp, out, v: save_features(out / "features.npz", _features(v)), "features.npz"),
    "save_index": (lambda tmp, out, v: save_index(build_index(_features(v).features), out / "gallery.faiss"),
                   "gallery.faiss"),
    "split": (lambda tmp, out, v: load_or_make_split(out / f"split_seed{v}.json", np.arange(40) % 4, seed=v),
              "split_seed2.json"),
    "publish_results": (_publish, "run.json"),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_full_disk_at_the_final_rename_leaves_every_artifact_as_it_was(writer, tmp_path, monkeypatch):
    write, named = WRITERS[writer]
    out = tmp_path / "out"
    out.mkdir()
    write(tmp_path, out, 1)  # an earlier, complete version
    before = _snapshot(out)
    assert before

    def no_space(*args, **kwargs):
        raise enospc()

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OSError) as err:
        write(tmp_path, out, 2)
    assert err.value.errno == errno.ENOSPC and Path(err.value.filename).name == named  # the file is named
    assert _snapshot(out) == before  # no partial file, no temporary, no staging folder; version 1 intact


def test_full_disk_in_the_middle_of_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_last.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(1000)})
    real_save = torch.save

    def half_then_full(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        Path(f).write_bytes(buf.getvalue()[:500])
        raise enospc()

    monkeypatch.setattr(torch, "save", half_then_full)
    with pytest.raises(OSError, match="No space left on device") as err:
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(1000)})
    assert err.value.filename == str(path)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_last.pt"]
    assert load_checkpoint(path)["epoch"] == 1


@pytest.mark.parametrize("free_mib, code", [(10, errno.ENOSPC), (50_000, errno.EIO)])
def test_torch_zip_writer_failure_is_an_oserror_naming_the_file_and_the_space_left(tmp_path, monkeypatch,
                                                                                    free_mib, code):
    """torch.save on a full disk raises a RuntimeError that names neither file nor cause (seen in CI)."""
    import shutil
    from collections import namedtuple

    path = tmp_path / "checkpoint_last.pt"
    save_checkpoint(path, {"epoch": 1})

    def zip_writer_failure(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 431418176 vs 431418064")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(torch, "save", zip_writer_failure)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**12, 10**12, free_mib * 2**20))
    with pytest.raises(OSError) as err:
        save_checkpoint(path, {"epoch": 2})
    assert err.value.errno == code and err.value.filename == str(path)
    assert f"{free_mib} MiB free" in str(err.value) and "unexpected pos" in str(err.value)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_last.pt"] and load_checkpoint(path)["epoch"] == 1


def test_other_runtime_errors_of_torch_save_pass_through(tmp_path, monkeypatch):
    def other(obj, f, *args, **kwargs):
        raise RuntimeError("cannot pickle this")

    monkeypatch.setattr(torch, "save", other)
    with pytest.raises(RuntimeError, match="cannot pickle this"):
        save_checkpoint(tmp_path / "c.pt", {"epoch": 2})
    assert list(tmp_path.iterdir()) == []


def test_read_only_directory_refuses_the_write_naming_the_file(tmp_path, monkeypatch):
    # simulated: the tests may run as root, for whom chmod 555 does not stop a write
    target = tmp_path / "results" / "table1.md"
    hio.atomic_write_text(target, "old table")

    def read_only(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(Path(dir) / ".tmpXYZ"))

    monkeypatch.setattr(hio.tempfile, "mkstemp", read_only)
    with pytest.raises(PermissionError) as err:
        hio.atomic_write_text(target, "new table")
    assert err.value.filename == str(target)
    assert target.read_text() == "old table" and [p.name for p in target.parent.iterdir()] == ["table1.md"]


# ------------------------------------------------------------------------------ downloads and extraction

DATA = np.random.default_rng(5).integers(0, 256, 300_000, dtype=np.uint8).tobytes()


class FullDisk:
    """A raw file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, fh, room: int):
        self.fh, self.room = fh, room

    def write(self, data) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = self.fh.write(bytes(data[: self.room]))
        self.room -= n
        return n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


def test_disk_full_during_download_keeps_the_part_and_the_next_run_resumes_it(tmp_path, monkeypatch):
    import hashlib

    sha = hashlib.sha256(DATA).hexdigest()
    dest = tmp_path / "f.bin"
    monkeypatch.setattr(download_mod, "open", lambda path, mode, buffering=-1:
                        FullDisk(builtins.open(path, mode, buffering=buffering), 100_000), raising=False)
    with serve({"/f.bin": DATA}) as (url, state):
        with pytest.raises(OSError) as err:
            download_mod.download_file(f"{url}/f.bin", dest, size=len(DATA), sha256=sha, retries=0, backoff=0.01,
                                       progress=False)
        assert err.value.errno == errno.ENOSPC and err.value.filename == str(dest) + ".part"
        assert "resumes" in str(err.value)
        assert not dest.exists()  # never a partial file under the final name
        assert (tmp_path / "f.bin.part").read_bytes() == DATA[:100_000]

        monkeypatch.undo()  # space freed
        download_mod.download_file(f"{url}/f.bin", dest, size=len(DATA), sha256=sha, backoff=0.01, progress=False)
    assert dest.read_bytes() == DATA and not (tmp_path / "f.bin.part").exists()
    assert state.requests[-1] == ("/f.bin", "bytes=100000-")  # only the rest was fetched


def test_interrupted_extraction_is_redone_on_the_next_run(tmp_path, monkeypatch):
    archive = tmp_path / "tiles.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(4):
            zf.writestr(f"tiles/t{i}.txt", f"tile {i}")
    real_extract, seen = zipfile.ZipFile.extract, []

    def fail_on_third(self, member, *args, **kwargs):
        seen.append(member)
        if len(seen) == 3:
            raise enospc()
        return real_extract(self, member, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "extract", fail_on_third)
    with pytest.raises(OSError):
        safe_extract(archive, tmp_path / "out", progress=False)
    assert not is_extracted(archive, tmp_path / "out")  # no completion marker: the next run does not trust it
    monkeypatch.undo()
    safe_extract(archive, tmp_path / "out", progress=False)
    assert is_extracted(archive, tmp_path / "out")
    assert [(tmp_path / "out" / "tiles" / f"t{i}.txt").read_text() for i in range(4)] == [f"tile {i}" for i in range(4)]


def test_atomic_writes_get_ordinary_permissions_not_mkstemps_0600(tmp_path):
    import os
    import stat

    from histokit.io import atomic_write_text

    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "table.md", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
