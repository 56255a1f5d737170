"""environment.yml (conda) and pyproject.toml pin the same versions, and the installed stack imports."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


# Extras that replace a base dependency (faiss-gpu for faiss-cpu: both install `faiss`) and so live in their own
# environment file, not in environment.yml or requirements.lock.
GPU_EXTRA = "gpu"
GPU_REPLACES = {"faiss-cpu"}


def _pyproject_pins(gpu: bool = False) -> dict:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    deps = project["dependencies"] + [d for name, extra in extras.items() if name != GPU_EXTRA for d in extra]
    pins = dict(_split(d) for d in deps)
    if gpu:
        pins = {k: v for k, v in pins.items() if k not in GPU_REPLACES}
        pins.update(_split(d) for d in extras[GPU_EXTRA])
    return pins


def _pip_section(name: str) -> list:
    env = yaml.safe_load((ROOT / name).read_text())
    return next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)


def _split(requirement: str) -> tuple[str, str]:
    match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", requirement.strip())
    assert match, f"not an exact pin: {requirement!r} (every dependency is pinned with ==)"
    return match.group(1).lower(), match.group(2)


def test_environment_yml_pins_equal_pyproject():
    env_pins = dict(_split(d) for d in _pip_section("environment.yml") if d != "-e .")
    assert env_pins == _pyproject_pins()


def test_gpu_environment_is_the_same_pins_with_faiss_gpu_for_faiss_cpu():
    """environment-gpu.yml = pyproject's pins with the `gpu` extra in place of faiss-cpu; histokit goes in after
    with --no-deps (its faiss-cpu requirement would overwrite faiss-gpu's `faiss` package)."""
    section = _pip_section("environment-gpu.yml")
    assert "-e ." not in section
    assert dict(_split(d) for d in section) == _pyproject_pins(gpu=True)
    gpu_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][GPU_EXTRA]
    assert [_split(d)[0] for d in gpu_extra] == ["faiss-gpu"]
    assert _split(gpu_extra[0])[1] == _pyproject_pins()["faiss-cpu"]  # the same FAISS version on CPU and GPU
    text = (ROOT / "environment-gpu.yml").read_text()
    assert "pip install --no-deps -e ." in text


def test_lock_file_agrees_with_pins():
    lock = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith(("#", " ")):
            name, version = line.split("==")
            lock[name.lower()] = version.strip()
    for name, version in _pyproject_pins().items():
        assert lock.get(name) == version, f"requirements.lock has {name}=={lock.get(name)}, pyproject pins {version}"


def test_torch_pair_imports_and_runs():
    """The CUDA-build torch/torchvision pair must load torchvision's C++ ops (the local CPU wheel cannot)."""
    import timm
    import torch
    import torchvision
    from torchvision.ops import nms

    keep = nms(torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11]]), torch.tensor([1.0, 0.5]), 0.5)
    assert keep.tolist() == [0]
    assert torchvision.__version__.startswith(_pyproject_pins()["torchvision"])
    assert timm.__version__ == _pyproject_pins()["timm"]
