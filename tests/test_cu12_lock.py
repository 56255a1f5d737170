"""Issue 15 item 8: the CUDA 12 lock variant (`make install CUDA=12`) for drivers older than CUDA 13's.

PyTorch's cu126 index is out of this project's reach, so requirements-cu12.lock is derived from requirements.lock
(tools/derive_cu12_lock.py) rather than resolved; these tests keep the two consistent and check what the Makefile
would run for each variant (`make -n`, nothing installed)."""
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("derive_cu12_lock", ROOT / "tools" / "derive_cu12_lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pins(path: Path) -> dict:
    return dict(line.split("==", 1) for line in path.read_text().splitlines()
                if "==" in line and not line.startswith(("#", " ")))


def test_cu12_lock_is_the_main_lock_derived():
    assert (ROOT / "requirements-cu12.lock").read_text() == _tool().derive((ROOT / "requirements.lock").read_text())


def test_cu12_lock_pins_the_main_locks_torch_pair_as_cu126_builds_and_nothing_of_cuda_13():
    main, cu12 = _pins(ROOT / "requirements.lock"), _pins(ROOT / "requirements-cu12.lock")
    tag = _tool().CUDA12_TAG
    for name in ("torch", "torchvision"):
        assert cu12[name] == f"{main[name]}+{tag}"  # the same release as the main lock: a matching pair
    assert not [n for n in cu12 if re.match(r"nvidia-|cuda-|triton$", n)]  # the cu126 wheel pins its own
    assert [n for n in main if re.match(r"nvidia-.*cu13|cuda-toolkit", n)]  # what was dropped did exist
    shared = {n: v for n, v in main.items() if not re.match(r"nvidia-|cuda-|triton$|torch$|torchvision$", n)}
    assert {n: cu12[n] for n in shared} == shared  # every other pin unchanged


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_install_cuda12_takes_torch_from_the_cu126_index_then_the_lock_from_pypi(tmp_path):
    def dry(*args):
        out = subprocess.run(["make", "-n", "install", f"VENV={tmp_path / 'venv'}", *args], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
        return [line for line in out.splitlines() if "uv pip install" in line and "uv==" not in line]

    cu12 = dry("CUDA=12")
    index = _tool().TORCH_CUDA12_INDEX
    assert index.endswith("/" + _tool().CUDA12_TAG)
    assert f"--index-url {index} $(grep -E '^torch(vision)?==' requirements-cu12.lock)" in cu12[0]
    assert cu12[1].rstrip().endswith("-r requirements-cu12.lock") and "--index-url" not in cu12[1]  # the rest: PyPI only
    default = dry()
    assert "-r requirements.lock" in default[0] and not any("download.pytorch.org" in line for line in default)
    assert "--reinstall-package torch" in default[0]  # back from CUDA=12, the cu126 pair is replaced
    assert not any(re.search(r"(^|\s)pip install", line.replace("uv pip install", "")) for line in cu12 + default)
