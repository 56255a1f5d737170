"""One place sets cuDNN autotuning, TF32 and the float32 matmul precision (histokit.device.configure_backends): every
stage sets them when it opens (so do torchrun workers, which reopen the stage), and run.json records them."""
import pytest
import torch

from histokit.device import backend_settings, configure_backends, current_backends
from histokit.provenance import device_info
from histokit.stages.context import open_stage


@pytest.fixture(autouse=True)
def restore_flags():
    """The flags are process-wide: leave them as the test found them."""
    before = (torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision(),
              torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield
    torch.backends.cudnn.benchmark = before[0]
    torch.set_float32_matmul_precision(before[1])
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[2], before[3]


def _scramble():
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("medium")
    torch.backends.cudnn.allow_tf32 = True


def test_policy_per_device():
    assert backend_settings("cuda:1") == {"cudnn_benchmark": True, "tf32_matmul": True, "tf32_cudnn": True,
                                          "float32_matmul_precision": "high"}
    assert backend_settings("cpu") == {"cudnn_benchmark": False, "tf32_matmul": False, "tf32_cudnn": False,
                                       "float32_matmul_precision": "highest"}


@pytest.mark.parametrize("device", ["cpu", "cuda"])  # the flags are settable without a GPU
def test_configure_backends_sets_the_policy_and_returns_what_torch_has(device):
    _scramble()
    got = configure_backends(device)
    assert got == current_backends()
    assert {k: got[k] for k in backend_settings(device)} == backend_settings(device)
    assert torch.get_float32_matmul_precision() == backend_settings(device)["float32_matmul_precision"]


def test_opening_a_stage_sets_the_flags(tmp_path):
    _scramble()
    ctx = open_stage("esvit", "smoke", run_dir=str(tmp_path / "run"), device="cpu")
    assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cudnn.benchmark
    assert ctx.backends == current_backends()
    assert {k: ctx.backends[k] for k in backend_settings("cpu")} == backend_settings("cpu")


def test_run_json_device_records_the_flags_the_stages_set():
    assert device_info("cpu")["backends"] == backend_settings("cpu")
    assert device_info("auto")["backends"] == backend_settings("cuda" if torch.cuda.is_available() else "cpu")
