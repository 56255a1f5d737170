"""The training loop waits for the device only when it logs: every ``log_every`` steps and at each epoch end, one
transfer of the window's means; none per step in the engine or in any SSL method's forward."""
from __future__ import annotations

import math
import os
import sys

import pytest
import torch

from histokit.models.backbones import create_encoder
from histokit.ssl import create_method, views_for
from histokit.ssl.ibot import MaskedViews
from histokit.train.engine import train

# every way a tensor's value reaches Python (on a GPU each waits for the queued work)
HOST_READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__")
STEPS, LOG_EVERY = 12, 5
HEAD = dict(out_dim=32, hidden_dim=32, bottleneck_dim=16)
CASES = {"dino": ("vit_test", HEAD), "esvit": ("swin_test", HEAD), "ibot": ("vit_test", HEAD),
         "moco": ("vit_test", dict(dim=16, mlp_dim=32)), "simclr": ("resnet_test", {}),
         "mae": ("vit_test", dict(decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2))}


@pytest.fixture
def host_reads(monkeypatch):
    calls = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, _name=name, **k):
            # torch's Adam reads its step counters, which stay on the host even for CUDA parameters: no wait
            if f"torch{os.sep}optim{os.sep}" not in sys._getframe(1).f_code.co_filename:
                calls.append(_name)
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


def _batches(name, image_size=64):
    """A plain list of ready batches (no DataLoader, whose sampler reads tensors of its own), iBOT's masks made as
    its loader makes them."""
    spec = views_for(name, n_local=2 if name in ("dino", "esvit", "ibot") else 0)
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(2, 3, image_size, image_size, generator=g) for _ in range(spec.n_global)]
    views += [torch.randn(2, 3, 32, 32, generator=g) for _ in range(spec.n_local)]
    if name == "ibot":
        make = MaskedViews(lambda image: [v[0] for v in views], patch_size=16)
        masks = [torch.stack(m) for m in zip(*(make(None)["masks"] for _ in range(2)))]
        return [({"views": views, "masks": masks}, torch.zeros(2), torch.arange(2))] * STEPS
    return [(views, torch.zeros(2), torch.arange(2))] * STEPS


@pytest.mark.parametrize("name", sorted(CASES))
def test_one_host_read_per_logged_window(name, host_reads):
    encoder_name, cfg = CASES[name]
    torch.manual_seed(0)
    method = create_method(name, create_encoder(encoder_name, img_size=64), **cfg)
    batches = _batches(name)
    host_reads.clear()
    history = train(method, batches, epochs=1, lr=1e-4, log_every=LOG_EVERY, progress=False)
    windows = math.ceil(STEPS / LOG_EVERY)  # steps 5, 10 and the epoch end at 12
    assert [h["step"] for h in history] == [5, 10, 12]
    assert host_reads == ["tolist"] * windows, host_reads


def test_history_is_the_mean_of_each_window(host_reads):
    class Counter(torch.nn.Module):  # the loss of step i is i: each entry must be its window's mean
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.i = 0

        def forward(self, views):
            self.i += 1
            return self.w * 0 + self.i, {"twice": torch.tensor(2.0 * self.i), "host": 1.0}

    history = train(Counter(), [torch.zeros(1)] * 7, epochs=1, lr=1e-3, log_every=3, progress=False)
    assert [(h["step"], h["loss"], h["twice"], h["host"]) for h in history] == [
        (3, 2.0, 4.0, 1.0), (6, 5.0, 10.0, 1.0), (7, 7.0, 14.0, 1.0)]
    assert host_reads.count("tolist") == 3


def test_a_non_finite_loss_stops_the_run_at_the_next_sync():
    class NanAtStep3(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.i = 0

        def forward(self, views):
            self.i += 1
            return self.w * 0 + (float("nan") if self.i == 3 else 1.0), {}

    method = NanAtStep3()
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 1, steps 0-3 \(checked every log_every=4"):
        train(method, [torch.zeros(1)] * 8, epochs=1, lr=1e-3, log_every=4, progress=False)
    assert method.i == 4  # found when step 4 logged, not before
