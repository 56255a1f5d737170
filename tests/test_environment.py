"""environment.yml (conda) and pyproject.toml pin the same versions, and the installed stack imports."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_pins() -> dict:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    return dict(_split(d) for d in deps)


def _split(requirement: str) -> tuple[str, str]:
    match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", requirement.strip())
    assert match, f"not an exact pin: {requirement!r} (every dependency is pinned with ==)"
    return match.group(1).lower(), match.group(2)


def test_environment_yml_pins_equal_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    env_pins = dict(_split(d) for d in pip_section if d != "-e .")
    assert env_pins == _pyproject_pins()


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
