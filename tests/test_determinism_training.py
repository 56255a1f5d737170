"""Every training path is deterministic for a seed on the CPU (issue 19, class 10): two runs from the same seed end
with bit-identical weights and losses, through the stage code a reproduction runs, on a few bundled tiles.

The loaders run with DataLoader workers (two, as the kit's loader policy gives a GPU run; ``worker_count`` is
patched, since a CPU training loader has none), because that is where unseeded randomness hides: Python's
``random`` (PIL blur of the DINO-family views), torch's RNG in each worker (crops, flips, iBOT masks, LGFFEM's
90-degree turns and OpenCV blur draws) and the loader's shuffling. Per-sample seeding makes the augmentation a
function of (seed, epoch, index) alone, so pretraining, supervised (and label-fraction) fine-tuning and Sub-center
ArcFace also give the same weights whatever the worker count, and an interrupted Sub-center ArcFace run resumed from
its checkpoint ends where an uninterrupted one does.

Paths: each SSL method (DINO, EsViT, iBOT, MoCo v3, SimCLR, MAE) through ``stages.train.fit`` (the pretraining
stage), supervised fine-tuning (``train.supervised.finetune_classifier``), Sub-center ArcFace
(``stages.train.fit`` too: ``SubCenterArcFace``, LGFFEM) and the label-fraction fine-tuning
(``evaluation.protocols.LabelFraction.finetune``). One intra-op thread: the guarantee is for a fixed thread count.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import histokit.stages.train as stage_train
from histokit.data import load_dataset, loading
from histokit.data.transforms import eval_transform
from histokit.models.backbones import create_encoder
from histokit.papers.recipe import DatasetSpec, ModelSpec, Recipe, TrainSpec
from histokit.stages.context import StageContext
from histokit.train.supervised import finetune_classifier
from histokit.stages.data import write_indexes

pytestmark = [pytest.mark.determinism,
              pytest.mark.filterwarnings("ignore:make_split. stratification impossible:UserWarning")]

HEAD = {"out_dim": 32, "hidden_dim": 32, "bottleneck_dim": 16}
SSL = {  # method: (encoder, method_cfg, local crops)
    "dino": ("vit_test", HEAD, 1),
    "esvit": ("swin_test", HEAD, 1),
    "ibot": ("vit_test", HEAD, 1),
    "moco": ("vit_test", {"dim": 16, "mlp_dim": 32}, 0),
    "simclr": ("resnet_test", {"temperature": 0.1}, 0),
    "mae": ("vit_test", {"decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2}, 0),
}
ARCFACE = TrainSpec(name="arcface_tiny", method="subcenter_arcface", encoder="lgffem_test", dataset="TILES",
                    epochs=2, batch_size=4, lr=5e-3, min_lr=8e-5, weight_decay=1e-5, warmup_epochs=0,
                    image_size=32, method_cfg={"variant": "paper", "sub_centers": 2, "centres_optimizer": "separate",
                                               "centres_lr": 1e-4, "augmentation": "ffnir_kimia"})
RECIPE = Recipe(paper="tiny", title="tiny", citation="", profile="smoke", image_size=32,
                datasets=(DatasetSpec("TILES", "kather2016_tiny"),),
                models=(ModelSpec("tiny", "vit_test", "random"),), pretrain=(ARCFACE,))


def _ctx(run_dir, seed=0) -> StageContext:
    """A stage context over 16 bundled tiles (2 per class; about 12 train), CPU, no progress bars."""
    ctx = StageContext(paper="tiny", profile="smoke", recipe=RECIPE, run_dir=run_dir, data_root=run_dir,
                       device="cpu", seed=seed, progress=False, rehearse={"max_images_per_class": 2})
    write_indexes(ctx)  # stage 01
    return ctx



@pytest.fixture
def workers(monkeypatch):
    """``workers(n)``: the kit's loader policy hands every training loader ``n`` workers (a GPU run's policy)."""
    def use(n: int) -> None:
        monkeypatch.setattr(loading, "worker_count", lambda device, train=True, **kw: n)
    use(2)
    return use


def _weights(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _losses(history: list) -> list:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def _assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs between two runs of the same seed"


def _ssl_run(tmp_path, name: str, method: str, seed: int = 0):
    encoder, cfg, n_local = SSL[method]
    spec = TrainSpec(name=method, method=method, encoder=encoder, dataset="TILES", epochs=2, batch_size=4,
                     optimizer="adamw", lr=1e-3, warmup_epochs=1, image_size=32, local_size=16, n_local=n_local,
                     method_cfg=dict(cfg))
    ctx = _ctx(tmp_path / name, seed)
    start, _ = stage_train.initial_encoder(ctx, spec, "all")
    history, trained = stage_train.fit(ctx, spec, start, ctx.path("ckpt"))
    return _weights(trained), _losses(history)


@pytest.mark.parametrize("method", sorted(SSL))
def test_ssl_pretraining_twice_from_one_seed_is_bit_identical(tmp_path, one_thread, workers, method):
    weights, losses = _ssl_run(tmp_path, "first", method)
    again, again_losses = _ssl_run(tmp_path, "second", method)
    _assert_identical(weights, again)
    assert losses == again_losses and len(losses) >= 2


@pytest.mark.parametrize("method", sorted(SSL))
def test_ssl_pretraining_is_the_same_whatever_the_worker_count(tmp_path, one_thread, workers, method):
    """Views per-sample seeded; the global stream (EsViT's drop-path, MAE's noise) not shifted by persistent
    workers skipping the base-seed draw a new iterator makes each epoch."""
    with_workers, losses = _ssl_run(tmp_path, "two", method)
    workers(0)
    in_process, in_process_losses = _ssl_run(tmp_path, "none", method)
    _assert_identical(with_workers, in_process)
    assert losses == in_process_losses


def _arcface_run(tmp_path, name: str, *, seed: int = 0, run_dir=None, max_steps=None):
    spec = ARCFACE
    ctx = _ctx(run_dir or tmp_path / name, seed)
    if max_steps:  # stopped there, as an interrupted run is (the schedules keep the whole run's length)
        ctx.rehearse = {**ctx.rehearse, "max_steps": max_steps}
    encoder, _ = stage_train.initial_encoder(ctx, spec, "all")
    history, trained = stage_train.fit(ctx, spec, encoder, ctx.path("ckpt"))
    assert trained is encoder
    return _weights(encoder), _losses(history), ctx


def test_subcenter_arcface_twice_from_one_seed_is_bit_identical(tmp_path, one_thread, workers):
    weights, losses, _ = _arcface_run(tmp_path, "first")
    again, again_losses, _ = _arcface_run(tmp_path, "second")
    _assert_identical(weights, again)
    assert losses == again_losses and {h["epoch"] for h in losses} == {1, 2}
    other, _, _ = _arcface_run(tmp_path, "other", seed=1)
    assert not all(torch.equal(v, other[k]) for k, v in weights.items())  # the comparison can see a change


def test_subcenter_arcface_is_the_same_whatever_the_worker_count_and_after_a_resume(tmp_path, one_thread, workers):
    weights, losses, _ = _arcface_run(tmp_path, "two")
    workers(0)
    in_process, in_process_losses, _ = _arcface_run(tmp_path, "none")
    _assert_identical(weights, in_process)
    assert losses == in_process_losses
    # interrupted after its first epoch, then resumed from the checkpoint in a fresh model: the same end
    first_epoch = [h["step"] for h in losses if h["epoch"] == 1][-1]
    _arcface_run(tmp_path, "", run_dir=tmp_path / "resumed", max_steps=first_epoch)
    torch.manual_seed(12345)  # whatever ran in between draws from the global RNGs
    np.random.seed(6789)
    resumed, resumed_losses, _ = _arcface_run(tmp_path, "", run_dir=tmp_path / "resumed")
    _assert_identical(weights, resumed)
    assert [h["loss"] for h in resumed_losses] == [h["loss"] for h in losses]


def _supervised_run(seed: int = 0):
    tiles = load_dataset("kather2016_tiny")
    tiles = tiles.subset(np.arange(0, len(tiles), 8))  # 13 tiles, every class
    from histokit.evaluation.protocols.label_fraction import finetune_transform

    train_ds = tiles.with_transform(finetune_transform(32, (0.5,) * 3, (0.5,) * 3))
    val_ds = tiles.subset(np.arange(4)).with_transform(eval_transform(32, (0.5,) * 3, (0.5,) * 3))
    torch.manual_seed(seed)
    model, history = finetune_classifier(create_encoder("vit_test", img_size=32), train_ds, val_ds, 8, epochs=2,
                                         lr=1e-3, batch_size=4, device="cpu", seed=seed, progress=False,
                                         log_every=1)
    return _weights(model), _losses(history)


def test_supervised_finetuning_twice_from_one_seed_is_bit_identical(one_thread, workers):
    weights, losses = _supervised_run()
    again, again_losses = _supervised_run()
    _assert_identical(weights, again)
    assert losses == again_losses and len(losses) >= 2


def test_supervised_finetuning_is_the_same_whatever_the_worker_count(one_thread, workers):
    """Crops per-sample seeded by (seed, epoch, index), the order by seed + epoch: 0 or 2 workers, one run."""
    with_workers, losses = _supervised_run()
    workers(0)
    in_process, in_process_losses = _supervised_run()
    _assert_identical(with_workers, in_process)
    assert losses == in_process_losses and len(losses) >= 2


def _label_fraction(epochs: int):
    from histokit.evaluation.protocols import LabelFraction

    return LabelFraction("all", ("tiny",), ("TILES",), fractions={"0.5": "50%"}, epochs=epochs, batch_size=4, lr=1e-3)


def test_label_fraction_finetuning_twice_from_one_seed_is_identical(tmp_path, one_thread, workers):
    protocol = _label_fraction(epochs=2)
    first = protocol.finetune(_ctx(tmp_path / "first"), "tiny", "TILES", 0.5)
    second = protocol.finetune(_ctx(tmp_path / "second"), "tiny", "TILES", 0.5)
    assert _losses(first["history"]) == _losses(second["history"]) and first["history"]
    assert first["correct"] == second["correct"] and first["accuracy"] == second["accuracy"]


def test_label_fraction_finetuning_is_the_same_whatever_the_worker_count(tmp_path, one_thread, workers):
    protocol = _label_fraction(epochs=2)
    with_workers = protocol.finetune(_ctx(tmp_path / "two"), "tiny", "TILES", 0.5)
    workers(0)
    in_process = protocol.finetune(_ctx(tmp_path / "none"), "tiny", "TILES", 0.5)
    assert _losses(with_workers["history"]) == _losses(in_process["history"]) and in_process["history"]
    assert with_workers["correct"] == in_process["correct"]


@pytest.mark.fault
def test_a_label_fraction_result_is_reused_only_while_its_starting_weights_are_the_same(tmp_path, one_thread,
                                                                                        workers, monkeypatch):
    """The cached result of a (model, dataset, fraction) records what the fine-tuning started from; other weights
    under the same row name (a retrained run, another file at the same path) are fine-tuned again."""
    from histokit.stages import index
    from histokit.train import supervised

    calls = []
    real = supervised.finetune_classifier

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(supervised, "finetune_classifier", counted)
    protocol = _label_fraction(epochs=1)
    ctx = _ctx(tmp_path / "run")
    first = protocol.finetune(ctx, "tiny", "TILES", 0.5)
    assert first["weights_identity"] == index.weights_identity(ctx, "tiny", "TILES")
    assert protocol.finetune(ctx, "tiny", "TILES", 0.5)["accuracy"] == first["accuracy"]
    assert len(calls) == 1  # the same starting weights: read back
    monkeypatch.setattr(index, "weights_identity", lambda *a, **k: {"kind": "checkpoint", "sha256": "other"})
    again = protocol.finetune(ctx, "tiny", "TILES", 0.5)
    assert len(calls) == 2 and again["weights_identity"] == {"kind": "checkpoint", "sha256": "other"}
