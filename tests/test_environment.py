"""environment.yml / environment-gpu.yml (conda: conda-forge first, pip only for what conda-forge lacks) and
pyproject.toml pin the same versions, and the installed stack imports."""
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


# conda-forge's names for PyPI distributions that it ships under another name (the CPU environment's and the GPU
# environment's: pytorch-gpu is the CUDA build of conda-forge's pytorch; matplotlib-base is matplotlib without Qt).
CONDA_TO_PYPI = {"pytorch": "torch", "pytorch-gpu": "torch", "matplotlib-base": "matplotlib"}
# The only pins that come from PyPI in the conda environments: conda-forge has no package for them.
PIP_ONLY = {"torchstain", "grad-cam"}
# Conda entries that are not PyPI pins: the interpreter, pip itself and (GPU) the one CUDA runtime of the environment.
CONDA_ONLY = {"python", "pip"}
GPU_CONDA_ONLY = CONDA_ONLY | {"cuda-version"}
# The scientific stack and the frameworks the environments must take from conda-forge, never from pip.
FROM_CONDA_FORGE = {"numpy", "scipy", "scikit-learn", "pandas", "matplotlib", "seaborn", "torch", "torchvision",
                    "jupyterlab", "papermill", "umap-learn"}


def _environment(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def _pip_section(name: str) -> list:
    env = _environment(name)
    return next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)


def _conda_section(name: str) -> dict[str, str]:
    """conda entries ``name=version`` (or ``name==version``) -> {name: version}; ``python`` / ``pip`` as given."""
    out = {}
    for dep in _environment(name)["dependencies"]:
        if isinstance(dep, dict):
            continue
        match = re.fullmatch(r"([a-z0-9_.\-]+)(?:==?([^\s=<>,|*]+))?", dep.strip())
        assert match, f"{name}: not a plain conda pin: {dep!r}"
        assert match.group(1) not in out, f"{name}: {match.group(1)} listed twice"
        out[match.group(1)] = match.group(2)
    return out


def _as_pypi_pins(name: str, conda_only: set) -> dict[str, str]:
    """Both sections of an environment file as PyPI names and versions (what pyproject pins)."""
    conda = _conda_section(name)
    pip = dict(_split(d) for d in _pip_section(name))
    assert not set(CONDA_TO_PYPI.get(k, k) for k in conda) & set(pip), f"{name}: a package from both conda and pip"
    assert set(pip) == PIP_ONLY, (f"{name}: only what conda-forge lacks goes under pip: ({sorted(PIP_ONLY)}), "
                                  f"found {sorted(pip)}")
    for key in conda_only - {"cuda-version"}:
        assert key in conda, f"{name}: {key} is missing"
    pins = {CONDA_TO_PYPI.get(k, k): v for k, v in conda.items() if k not in conda_only}
    unpinned = [k for k, v in pins.items() if v is None]
    assert not unpinned, f"{name}: conda entries without a version: {unpinned}"
    return {**pins, **pip}


def _split(requirement: str) -> tuple[str, str]:
    match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", requirement.strip())
    assert match, f"not an exact pin: {requirement!r} (every dependency is pinned with ==)"
    return match.group(1).lower(), match.group(2)


def test_environment_yml_pins_equal_pyproject():
    """environment.yml: the scientific stack and PyTorch from conda-forge, torchstain and grad-cam from PyPI, every
    version pyproject's pin; histokit itself goes in after with --no-deps."""
    env = _environment("environment.yml")
    assert env["channels"][0] == "conda-forge" and "defaults" not in env["channels"]
    conda = _conda_section("environment.yml")
    assert {CONDA_TO_PYPI.get(k, k) for k in conda} >= FROM_CONDA_FORGE
    assert "pytorch" in conda and "faiss-cpu" in conda and "pytorch-gpu" not in conda and "cuda-version" not in conda
    assert _as_pypi_pins("environment.yml", CONDA_ONLY) == _pyproject_pins()
    assert conda["python"] == "3.11"
    assert "-e ." not in _pip_section("environment.yml")
    assert "pip install --no-deps -e ." in (ROOT / "environment.yml").read_text()


def test_gpu_environment_is_the_same_pins_with_cuda_builds():
    """environment-gpu.yml = pyproject's pins with the `gpu` extra in place of faiss-cpu and conda-forge's CUDA build
    of PyTorch (pytorch-gpu), both on one CUDA runtime (cuda-version); histokit goes in after with --no-deps (its
    faiss-cpu requirement would overwrite faiss-gpu's `faiss` package)."""
    env = _environment("environment-gpu.yml")
    assert env["channels"][0] == "conda-forge" and "defaults" not in env["channels"]
    conda = _conda_section("environment-gpu.yml")
    assert "pytorch-gpu" in conda and "pytorch" not in conda and "faiss-gpu" in conda and "faiss-cpu" not in conda
    assert conda["cuda-version"] == "12"  # faiss-gpu 1.15.1 is a CUDA 12 build (docs/scaling.md "GPU FAISS")
    assert {CONDA_TO_PYPI.get(k, k) for k in conda} >= FROM_CONDA_FORGE
    assert _as_pypi_pins("environment-gpu.yml", GPU_CONDA_ONLY) == _pyproject_pins(gpu=True)
    gpu_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][GPU_EXTRA]
    assert [_split(d)[0] for d in gpu_extra] == ["faiss-gpu"]
    assert _split(gpu_extra[0])[1] == _pyproject_pins()["faiss-cpu"]  # the same FAISS version on CPU and GPU
    assert "-e ." not in _pip_section("environment-gpu.yml")
    assert "pip install --no-deps -e ." in (ROOT / "environment-gpu.yml").read_text()


def test_the_two_environments_differ_only_in_the_cuda_builds():
    cpu, gpu = _conda_section("environment.yml"), _conda_section("environment-gpu.yml")
    swapped = {"pytorch": "pytorch-gpu", "faiss-cpu": "faiss-gpu"}
    assert {swapped.get(k, k): v for k, v in cpu.items()} | {"cuda-version": "12"} == gpu
    assert _pip_section("environment.yml") == _pip_section("environment-gpu.yml")


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
