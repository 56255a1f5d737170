"""Issue 15 item 8: `histokit doctor` reports the driver / CUDA / torch / torchvision / faiss stack and warns on a
mismatch. The mismatches are made with the probes monkeypatched; one real run on this (CPU) machine."""
import pytest

from histokit import doctor
from histokit.cli import main

CPU_FAISS = {"package": "faiss-cpu", "package_version": "1.15.1", "version": "1.15.1", "gpu_support": False,
             "num_gpus": 0, "installed": {"faiss-cpu": "1.15.1"}}
GPU_FAISS = {"package": "faiss-gpu", "package_version": "1.15.1", "version": "1.15.1", "gpu_support": True,
             "num_gpus": 1, "installed": {"faiss-gpu": "1.15.1"}}
H100 = {"name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559}


def _torch(cuda="13.0", available=True, version="2.14.1+cu130", devices=None, warning=None):
    return {"version": version, "cuda": cuda, "cuda_available": available, "cuda_init_warning": warning,
            "cudnn": 92400 if cuda else None, "arch_list": ["sm_90"] if cuda else [],
            "devices": [dict(H100, capability="9.0")] if devices is None and available else devices or []}


@pytest.fixture
def probes(monkeypatch):
    """Sets each probe's answer; defaults: a working CUDA 13 machine with one H100."""
    answers = {"driver_cuda": "13.0", "nvidia_smi": {"driver": "580.82.07", "gpus": [H100]}, "torch": _torch(),
               "torchvision": {"version": "0.29.2", "ops": True}, "faiss": CPU_FAISS}
    for name in answers:
        monkeypatch.setattr(doctor, f"probe_{name}", lambda name=name: answers[name])
    return answers


def _run(capsys):
    status = main(["doctor"])
    return status, capsys.readouterr().out


def test_a_matching_cuda_stack_reports_the_gpu_and_no_warning(probes, capsys):
    status, out = _run(capsys)
    assert status == 0 and "OK: no mismatch found." in out and "WARNING" not in out
    assert "driver:       580.82.07; supports CUDA 13.0" in out
    assert "0: NVIDIA H100 80GB HBM3, 79.6 GiB, compute capability 9.0" in out
    assert "search with --device cuda: torch exact search on the GPU" in out


def test_cuda13_torch_on_a_cuda12_driver_points_at_the_cuda12_lock(probes, capsys):
    probes.update(driver_cuda="12.4", nvidia_smi={"driver": "550.54.15", "gpus": [H100]},
                  torch=_torch(available=False, warning="The NVIDIA driver on your system is too old"))
    status, out = _run(capsys)
    assert status == 1
    assert ("WARNING: torch 2.14.1+cu130 is built for CUDA 13.0 but the NVIDIA driver (550.54.15) supports CUDA up "
            "to 12.4: CUDA is unusable (--device cuda fails); install the CUDA 12 build: `make install CUDA=12`.") in out
    assert "0: NVIDIA H100 80GB HBM3, 79.6 GiB" in out  # the GPUs from nvidia-smi when torch sees none


def test_a_cuda11_driver_is_told_to_upgrade(probes, capsys):
    probes.update(driver_cuda="11.8", torch=_torch(available=False))
    _, out = _run(capsys)
    assert "supports CUDA up to 11.8" in out and "upgrade the driver to >= 580.65.06" in out


def test_driver_present_but_cuda_unavailable_for_another_reason(probes, capsys):
    probes.update(torch=_torch(available=False, warning="CUDA unknown error"))
    status, out = _run(capsys)
    assert status == 1 and "is present but torch.cuda.is_available() is False" in out
    assert "torch says: CUDA unknown error" in out


def test_cpu_only_torch_beside_a_gpu_and_gpu_faiss(probes, capsys):
    probes.update(torch=_torch(cuda=None, available=False, version="2.14.1+cpu"), faiss=GPU_FAISS,
                  torchvision={"version": "0.29.2", "ops": True})
    _, out = _run(capsys)
    assert "a GPU is present but torch 2.14.1+cpu is a CPU-only build" in out
    assert "FAISS is a GPU build (faiss-gpu) but torch is CPU-only" in out


def test_torchvision_without_ops_and_two_faiss_packages(probes, capsys):
    probes.update(torchvision={"version": "0.29.2", "ops": False},
                  faiss=dict(GPU_FAISS, installed={"faiss-gpu": "1.15.1", "faiss-cpu": "1.15.1"}))
    _, out = _run(capsys)
    assert "torchvision 0.29.2 does not load its C++ ops" in out and "operator torchvision::nms does not exist" in out
    assert "both faiss-cpu and faiss-gpu are installed" in out


def test_faiss_gpu_that_sees_no_gpu_while_torch_does(probes, capsys):
    probes.update(faiss=dict(GPU_FAISS, num_gpus=0))
    _, out = _run(capsys)
    assert "the FAISS GPU build sees none" in out and "falls back to torch on the GPU" in out


def test_no_driver_at_all_is_a_plain_cpu_machine(probes, capsys):
    probes.update(driver_cuda=None, nvidia_smi=None, torch=_torch(available=False))
    status, out = _run(capsys)
    assert status == 0 and "nvidia-smi:   not found" in out and "no NVIDIA GPU: the kit runs on the CPU" in out


def test_version_parsing():
    assert doctor._version_tuple("12.4") == (12, 4) and doctor._version_tuple(None) == ()
    assert doctor._version_tuple("13.0.2") == (13, 0, 2)


def test_real_run_on_this_machine(capsys):
    """No probe replaced: whatever the machine, every section is reported and the status matches the warnings."""
    status = main(["doctor"])
    out = capsys.readouterr().out
    for label in ("driver:", "torch:", "torchvision:", "faiss:", "GPUs:", "search with --device cuda:"):
        assert label in out
    assert status == (1 if "WARNING:" in out else 0)
    import torch
    assert torch.__version__ in out
