"""RNG state in training checkpoints: only the training device's CUDA state is saved, and a checkpoint saved with more
CUDA states than the resuming process has GPUs (the old format kept one per visible GPU) resumes without an
IndexError, with the CPU, Python and NumPy streams restored exactly. The CUDA branch runs on a CPU through a fake
``torch.cuda`` that fails like the real one for a device index the process does not have."""
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from histokit.models.backbones import create_encoder
from histokit.ssl import create_method
from histokit.train.checkpoint import capture_rng, checkpoint_path, load_checkpoint, restore_rng, save_checkpoint
from histokit.train.engine import train
from data_helpers import MultiCropTiles


def _draws():
    return random.random(), float(np.random.rand()), torch.rand(3)


def _old_style_cuda_states(n=4):
    """What ``torch.cuda.get_rng_state_all()`` saved on an n-GPU machine: one ByteTensor per GPU."""
    return [torch.full((16,), 10 + i, dtype=torch.uint8) for i in range(n)]


class FakeCuda:
    """``n`` visible GPUs with per-device RNG states; indexing a device >= n raises IndexError as torch does."""

    def __init__(self, monkeypatch, n: int, current: int = 0):
        self.n, self.current = n, current
        self.states = {i: torch.full((16,), i, dtype=torch.uint8) for i in range(n)}
        self.set_calls: list[int] = []
        for name, fn in {"is_available": lambda: True, "is_initialized": lambda: True, "device_count": lambda: n,
                         "current_device": lambda: self.current, "get_rng_state": self.get,
                         "set_rng_state": self.set, "get_rng_state_all": lambda: [self.get(i) for i in range(n)],
                         "set_rng_state_all": lambda states: [self.set(s, i) for i, s in enumerate(states)]}.items():
            monkeypatch.setattr(torch.cuda, name, fn)

    def _index(self, device) -> int:
        if isinstance(device, str):
            device = torch.device(device)
        if isinstance(device, torch.device):
            device = device.index if device.index is not None else self.current
        if device >= self.n:
            raise IndexError(f"device index {device} out of range for {self.n} GPU(s)")
        return device

    def get(self, device="cuda"):
        return self.states[self._index(device)].clone()

    def set(self, state, device="cuda"):
        index = self._index(device)
        self.set_calls.append(index)
        self.states[index] = state.clone()


def test_old_checkpoint_with_four_cuda_states_restores_cpu_python_numpy_on_a_cpu_only_process(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = capture_rng()
    assert "cuda_device" not in state and "cuda" not in state
    expected = _draws()
    state["cuda"] = _old_style_cuda_states(4)  # written on a 4-GPU machine
    _draws()  # move every stream on
    restore_rng(state)
    got = _draws()
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_resume_on_fewer_gpus_restores_the_training_devices_state(monkeypatch):
    cuda = FakeCuda(monkeypatch, n=1)
    old = capture_rng(device="cpu")
    old["cuda"] = _old_style_cuda_states(4)
    restore_rng(old, device="cuda")  # the old restore set all 4 and raised IndexError on device 1
    assert cuda.set_calls == [0] and torch.equal(cuda.states[0], old["cuda"][0])

    cuda.set_calls.clear()
    new = capture_rng(device="cpu")
    new["cuda_device"] = {"index": 3, "state": torch.full((16,), 99, dtype=torch.uint8)}  # saved on cuda:3
    restore_rng(new, device="cuda")
    assert cuda.set_calls == [0] and torch.equal(cuda.states[0], new["cuda_device"]["state"])

    cuda.set_calls.clear()
    restore_rng(old, device="cpu")  # a CPU run touches no CUDA state
    assert cuda.set_calls == []


def test_capture_saves_only_the_training_device(monkeypatch, tmp_path):
    cuda = FakeCuda(monkeypatch, n=4, current=1)
    state = capture_rng(device="cuda:2")
    assert "cuda" not in state and state["cuda_device"]["index"] == 2
    assert torch.equal(state["cuda_device"]["state"], cuda.states[2])
    assert capture_rng()["cuda_device"]["index"] == 1  # no device given: the current one (a torchrun rank's GPU)
    assert "cuda_device" not in capture_rng(device="cpu")
    save_checkpoint(tmp_path / "c.pt", {"rng": state})  # still weights_only-safe
    loaded = load_checkpoint(tmp_path / "c.pt")["rng"]["cuda_device"]
    assert loaded["index"] == 2 and torch.equal(loaded["state"], cuda.states[2])


def _loader():
    return DataLoader(MultiCropTiles(n=8, step=11), batch_size=4, shuffle=True, drop_last=True,
                      generator=torch.Generator().manual_seed(7))


class KilledAfterOneEpoch:
    """A DataLoader stand-in whose second pass raises: a run killed between epochs."""

    def __init__(self, loader):
        self.loader, self.passes = loader, 0

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __iter__(self):
        self.passes += 1
        if self.passes > 1:
            raise KeyboardInterrupt("simulated kill")
        return iter(self.loader)


def _method():
    torch.manual_seed(0)
    return create_method("dino", create_encoder("vit_test", img_size=32), out_dim=64, hidden_dim=32,
                         bottleneck_dim=16, warmup_teacher_temp_epochs=2)


@pytest.mark.fault
def test_engine_resumes_a_checkpoint_with_more_cuda_states_than_gpus(tmp_path, monkeypatch):
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-identical resume is promised for one thread count
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    try:
        kw = dict(epochs=2, lr=1e-3, warmup_epochs=1, progress=False, seed=3, device="cpu")
        straight = _method()
        train(straight, _loader(), checkpoint_dir=tmp_path / "a", **kw)
        with pytest.raises(KeyboardInterrupt):  # killed after epoch 1
            train(_method(), KilledAfterOneEpoch(_loader()), checkpoint_dir=tmp_path / "b", **kw)
        ckpt_file = checkpoint_path(tmp_path / "b")
        ckpt = load_checkpoint(ckpt_file)
        assert ckpt["epoch"] == 1
        for rng in [ckpt["rng"], *ckpt["rng_per_rank"]]:  # as a 4-GPU job of the old format wrote it
            rng["cuda"] = _old_style_cuda_states(4)
        save_checkpoint(ckpt_file, ckpt)
        resumed = _method()
        train(resumed, _loader(), checkpoint_dir=tmp_path / "b", **kw)
    finally:
        torch.set_num_threads(before)
    sd_a, sd_b = straight.state_dict(), resumed.state_dict()
    for k in sd_a:  # the restored CPU / Python / NumPy streams continue exactly
        assert torch.equal(sd_a[k], sd_b[k]), k
