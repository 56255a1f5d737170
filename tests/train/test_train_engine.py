"""The training engine: an interrupted + resumed run ends bit-identical to an uninterrupted one (CPU), checkpoints
load with weights_only=True, schedules reach the optimizer, and bad input fails with a clear message."""
import copy
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from histokit.models.backbones import create_encoder
from histokit.ssl import create_method
from histokit.train.checkpoint import CheckpointError, checkpoint_path
from histokit.train.engine import param_groups, train
from histokit.train.schedules import cosine_with_warmup
from data_helpers import MultiCropTiles


def TileViews(n=8):
    return MultiCropTiles(n=n, step=11)


class StopAfterEpochs:
    """A DataLoader stand-in that raises on its (n+1)-th pass: a run killed between epochs."""

    def __init__(self, loader, n):
        self.loader, self.n, self.passes = loader, n, 0

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __iter__(self):
        self.passes += 1
        if self.passes > self.n:
            raise KeyboardInterrupt("simulated kill")
        return iter(self.loader)


def _loader():
    return DataLoader(TileViews(), batch_size=4, shuffle=True, drop_last=True,
                      generator=torch.Generator().manual_seed(7))


def _method(name):
    torch.manual_seed(0)
    return create_method(name, create_encoder("vit_test", img_size=32), out_dim=64, hidden_dim=32, bottleneck_dim=16,
                         warmup_teacher_temp_epochs=2)


TRAIN_KW = dict(epochs=2, lr=1e-3, min_lr=1e-5, weight_decay=0.04, weight_decay_end=0.4, warmup_epochs=1,
                progress=False, seed=3)



@pytest.mark.parametrize("name", ["dino", "ibot"])
@pytest.mark.fault
def test_resume_after_interruption_is_bit_identical(name, tmp_path, one_thread):
    straight = _method(name)
    h_straight = train(straight, _loader(), checkpoint_dir=tmp_path / "a", **TRAIN_KW)

    killed = _method(name)
    with pytest.raises(KeyboardInterrupt):
        train(killed, StopAfterEpochs(_loader(), 1), checkpoint_dir=tmp_path / "b", **TRAIN_KW)
    assert torch.load(checkpoint_path(tmp_path / "b"), weights_only=True)["epoch"] == 1

    resumed = _method(name)  # a fresh process: new weights, new loader, same arguments
    h_resumed = train(resumed, _loader(), checkpoint_dir=tmp_path / "b", **TRAIN_KW)

    sd_a, sd_b = straight.state_dict(), resumed.state_dict()
    assert sd_a.keys() == sd_b.keys()
    for k in sd_a:  # student, teacher (EMA), heads, centers: exactly equal
        assert torch.equal(sd_a[k], sd_b[k]), k
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(h_straight) == strip(h_resumed)
    assert [e["epoch"] for e in h_resumed] == [1, 1, 2, 2] and [e["step"] for e in h_resumed] == [1, 2, 3, 4]


def test_checkpoint_contents_and_schedules_in_history(tmp_path):
    method = _method("dino")
    history = train(method, _loader(), checkpoint_dir=tmp_path, **TRAIN_KW)
    ckpt = torch.load(checkpoint_path(tmp_path), weights_only=True)
    assert {"model", "optimizer", "scaler", "epoch", "step", "rng", "history", "config"} <= set(ckpt)
    assert ckpt["epoch"] == 2 and ckpt["step"] == 4 and ckpt["history"] == history
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic: no temporary files left
    for entry in history:
        step = entry["step"] - 1
        assert entry["lr"] == pytest.approx(cosine_with_warmup(step, 4, 1e-3, 1e-5, warmup_steps=2))
        assert entry["wd"] == pytest.approx(cosine_with_warmup(step, 4, 0.04, 0.4))
        assert {"loss", "teacher_temp", "momentum", "seconds"} <= set(entry)
    assert history[-1]["teacher_temp"] == pytest.approx(0.07)  # 2-epoch warm-up reached

    # a finished run is not trained again
    before = copy.deepcopy(method.state_dict())
    again = train(method, _loader(), checkpoint_dir=tmp_path, **TRAIN_KW)
    assert again == history
    assert all(torch.equal(before[k], v) for k, v in method.state_dict().items())


@pytest.mark.bad_input
def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    train(_method("dino"), _loader(), checkpoint_dir=tmp_path, **TRAIN_KW)
    with pytest.raises(CheckpointError, match="epochs=2"):
        train(_method("dino"), _loader(), checkpoint_dir=tmp_path, **{**TRAIN_KW, "epochs": 3})


@pytest.mark.bad_input
def test_git_lfs_pointer_checkpoint_is_explained(tmp_path):
    checkpoint_path(tmp_path).write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1\n")
    with pytest.raises(CheckpointError, match="Git-LFS pointer"):
        train(_method("dino"), _loader(), checkpoint_dir=tmp_path, **TRAIN_KW)


class Regression(nn.Module):
    """A plain module (no SSL hooks) on the engine: y = w x, squared error; records gradient norms."""

    def __init__(self, nan=False):
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.norm = nn.LayerNorm(4)
        self.nan = nan
        self.grad_norms = []

    def forward(self, views):
        x = views[0].flatten(1)[:, :4]
        loss = (self.lin(self.norm(x)) - 100.0).pow(2).mean()
        return (loss * float("nan") if self.nan else loss), {}

    def before_optimizer_step(self):
        self.grad_norms.append(torch.norm(torch.stack([p.grad.norm() for p in self.parameters()])).item())


def _tensor_loader():
    return DataLoader([torch.randn(3, 2, 2) for _ in range(4)], batch_size=2)


def test_gradient_clipping_and_plain_modules():
    model = Regression()
    train(model, _tensor_loader(), epochs=1, lr=1e-2, grad_clip=0.5, progress=False)
    assert model.grad_norms and max(model.grad_norms) <= 0.5 + 1e-5


def test_no_weight_decay_on_biases_and_norms():
    regularized, free = param_groups(Regression())
    assert [p.shape for p in regularized["params"]] == [torch.Size([1, 4])]
    assert len(free["params"]) == 3  # linear bias, LayerNorm weight and bias


@pytest.mark.fault
def test_non_finite_loss_stops_with_a_clear_error():
    with pytest.raises(FloatingPointError, match="loss is nan at epoch 1"):
        train(Regression(nan=True), _tensor_loader(), epochs=1, lr=1e-2, progress=False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(epochs=0), "epochs"),
    (dict(optimizer="lamb"), "optimizer"),
    (dict(warmup_epochs=5), "warmup_epochs"),
    (dict(lr=0.0), "lr"),
    (dict(grad_clip=-1.0), "grad_clip"),
])
@pytest.mark.bad_input
def test_bad_arguments_name_the_parameter(kwargs, match):
    args = dict(epochs=1, lr=1e-3, progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        train(Regression(), _tensor_loader(), **args)


def test_per_param_clipping_is_dino_clip_gradients_not_one_global_norm():
    """DINO / iBOT ``utils.clip_gradients`` clip each tensor's gradient to the bound on its own: a tensor under the
    bound keeps its gradient, whatever the others' norms (one global norm would shrink it too)."""
    from histokit.train.engine import clip_gradients

    def params():
        big, small = nn.Parameter(torch.zeros(4)), nn.Parameter(torch.zeros(3))
        big.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])   # norm 5
        small.grad = torch.tensor([0.1, 0.0, 0.0])      # norm 0.1
        return big, small

    big, small = params()
    clip_gradients([big, small], 3.0, "per_param")
    assert big.grad.norm().item() == pytest.approx(3.0, rel=1e-5)
    torch.testing.assert_close(small.grad, torch.tensor([0.1, 0.0, 0.0]))
    big, small = params()
    clip_gradients([big, small], 3.0, "global")
    assert small.grad.norm().item() == pytest.approx(0.1 * 3.0 / (5.0 ** 2 + 0.1 ** 2) ** 0.5, rel=1e-4)


class PerParamNorms(Regression):
    def before_optimizer_step(self):
        self.grad_norms.append(max(p.grad.norm().item() for p in self.parameters()))


def test_engine_clips_per_parameter_when_asked():
    torch.manual_seed(0)
    model = PerParamNorms()
    train(model, _tensor_loader(), epochs=1, lr=1e-2, grad_clip=0.5, grad_clip_mode="per_param", progress=False)
    assert model.grad_norms and max(model.grad_norms) <= 0.5 + 1e-5
    with pytest.raises(ValueError, match="grad_clip_mode"):
        train(Regression(), _tensor_loader(), epochs=1, lr=1e-2, grad_clip=0.5, grad_clip_mode="norm",
              progress=False)


def test_lars_and_adam_betas_reach_the_optimizer():
    from timm.optim import Lars

    from histokit.train.engine import build_optimizer

    lars = build_optimizer("lars", param_groups(Regression()), momentum=0.9)
    assert isinstance(lars, Lars) and all(g["momentum"] == 0.9 for g in lars.param_groups)
    adamw = build_optimizer("adamw", param_groups(Regression()), betas=(0.9, 0.95))
    assert all(g["betas"] == (0.9, 0.95) for g in adamw.param_groups)
    assert build_optimizer("adamw", param_groups(Regression())).param_groups[0]["betas"] == (0.9, 0.999)
    with pytest.raises(ValueError, match="betas"):
        build_optimizer("sgd", param_groups(Regression()), betas=(0.9, 0.95))
    model = Regression()
    before = model.lin.weight.detach().clone()
    history = train(model, _tensor_loader(), epochs=1, lr=1e-1, weight_decay=1e-6, optimizer="lars", progress=False)
    assert not torch.equal(before, model.lin.weight) and all(math.isfinite(h["loss"]) for h in history)
