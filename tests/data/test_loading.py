"""The kit's one DataLoader policy (histokit.data.loading): workers per local rank, pinned memory and persistent
workers on CUDA, none on a CPU training loader; masks and views made in the workers (iBOT), picklable for spawned
workers, and the same whatever the worker count."""
from __future__ import annotations

import pickle
from dataclasses import replace

import pytest
import torch
from torch.utils.data import DataLoader

import histokit.stages.train as stage_train
from histokit.data import loading
from histokit.data.loading import MAX_WORKERS, PREFETCH_FACTOR, loader_kwargs, worker_count
from histokit.models.backbones import create_encoder
from histokit.papers.recipe import DatasetSpec, ModelSpec, Recipe, TrainSpec
from histokit.ssl import create_method
from histokit.ssl.ibot import MaskedViews, iBOT
from histokit.stages.context import StageContext
from histokit.stages.data import write_indexes

pytestmark = [pytest.mark.filterwarnings("ignore:make_split. stratification impossible:UserWarning"),
              pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")]  # built, never iterated

IBOT_RUN = TrainSpec(name="ibot_tiny", method="ibot", encoder="vit_test", dataset="TILES", epochs=2, batch_size=4,
                     optimizer="adamw", lr=1e-3, image_size=32, local_size=16, n_local=2,
                     method_cfg={"out_dim": 32, "hidden_dim": 32, "bottleneck_dim": 16})
RECIPE = Recipe(paper="tiny", title="tiny", citation="", profile="smoke", image_size=32,
                datasets=(DatasetSpec("TILES", "kather2016_tiny"),), models=(ModelSpec("tiny", "vit_test", "random"),),
                pretrain=(IBOT_RUN,))


def _ctx(tmp_path, device="cpu"):
    ctx = StageContext(paper="tiny", profile="smoke", recipe=RECIPE, run_dir=tmp_path, data_root=tmp_path,
                       device=device, seed=0, progress=False, rehearse={"max_images_per_class": 2})
    write_indexes(ctx)  # stage 01
    return ctx


def _ibot(spec=IBOT_RUN):
    torch.manual_seed(0)
    return create_method("ibot", create_encoder(spec.encoder, img_size=spec.image_size), **spec.method_cfg)


def test_worker_count_shares_the_cores_among_local_ranks(monkeypatch):
    assert worker_count("cuda", cpus=16, local_world=1) == 15  # one core feeds the GPU
    assert worker_count("cuda", cpus=64, local_world=4) == 15
    assert worker_count("cuda", cpus=256, local_world=1) == MAX_WORKERS
    assert worker_count("cuda", cpus=4, local_world=8) == 1  # never none on a GPU
    assert worker_count("cpu", cpus=64, local_world=1) == 0  # a CPU training run: bit-reproducible, no spawn cost
    assert worker_count("cpu", train=False, cpus=16, local_world=2) == 2  # evaluation: a quarter of the share
    monkeypatch.setattr(loading, "usable_cpus", lambda: 32)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert worker_count("cuda") == 3


def test_loader_kwargs_pin_persist_and_prefetch_only_with_workers(monkeypatch):
    monkeypatch.setattr(loading, "usable_cpus", lambda: 8)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loader_kwargs("cuda") == {"num_workers": 7, "pin_memory": True, "persistent_workers": True,
                                     "prefetch_factor": PREFETCH_FACTOR}
    assert loader_kwargs("cpu") == {"num_workers": 0, "pin_memory": False}
    assert loader_kwargs("cpu", num_workers=2)["persistent_workers"] is True
    with pytest.raises(ValueError, match="num_workers"):
        loader_kwargs("cpu", num_workers=-1)


def test_stage_training_loader_follows_the_policy(tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "usable_cpus", lambda: 8)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    loader = stage_train.training_loader(_ctx(tmp_path, "cuda"), IBOT_RUN, _ibot())  # built, not iterated
    assert (loader.num_workers, loader.pin_memory, loader.persistent_workers) == (7, True, True)
    assert stage_train.training_loader(_ctx(tmp_path), IBOT_RUN, _ibot()).num_workers == 0


@pytest.mark.parametrize("method", ["dino", "esvit", "ibot", "moco", "simclr", "mae"])
def test_every_method_s_training_dataset_pickles_for_spawned_workers(tmp_path, method):
    spec = replace(IBOT_RUN, method=method, method_cfg={})
    ds = stage_train.training_dataset(_ctx(tmp_path), spec, _ibot() if method == "ibot" else None)
    clone = pickle.loads(pickle.dumps(ds))
    torch.testing.assert_close(clone[0], ds[0])  # per-sample seeded: the same views from the copy


def test_ibot_masks_come_with_the_batch_from_spawned_workers(tmp_path, monkeypatch):
    method = _ibot()
    ctx = _ctx(tmp_path)
    ds = stage_train.training_dataset(ctx, IBOT_RUN, method)
    assert isinstance(ds.dataset.transform, MaskedViews)

    def epochs(loader, n=2):
        out = []
        for e in range(n):
            ds.set_epoch(e)
            out.append([b for b in loader])
        return out

    in_process = epochs(DataLoader(ds, batch_size=4))
    # a spawned, persistent worker: the dataset travels by pickle and set_epoch still reaches it
    workers = epochs(DataLoader(ds, batch_size=4, num_workers=1, persistent_workers=True,
                                multiprocessing_context="spawn"))
    torch.testing.assert_close(workers, in_process)  # identical whatever the worker count
    first = in_process[0][0]
    views, masks = method.batch_to_inputs(first)
    assert len(views) == 4 and len(masks) == 2
    grid = (IBOT_RUN.image_size // method.student_encoder.patch_size) ** 2
    assert all(m.dtype == torch.bool and m.shape == (4, grid) for m in masks)
    # epoch 2's views differ from epoch 1's: with the equality above, the persistent workers saw set_epoch
    assert not torch.equal(in_process[0][0][0]["views"][0], in_process[1][0][0]["views"][0])

    def no_drawing(*a, **k):
        raise AssertionError("forward drew masks although the batch brought them")

    monkeypatch.setattr(iBOT, "make_masks", no_drawing)
    loss, logs = method(*method.batch_to_inputs(first))
    assert torch.isfinite(loss) and float(logs["mask_ratio"]) == pytest.approx(float(torch.cat(masks).float().mean()))


def test_masks_made_with_the_views_keep_ibot_s_distribution():
    views = [torch.zeros(3, 64, 64), torch.zeros(3, 64, 64), torch.zeros(3, 32, 32)]
    make = MaskedViews(lambda image: views, patch_size=8)  # the default: half unmasked, the others 10-50 %
    torch.manual_seed(0)
    masks = torch.stack([m for _ in range(300) for m in make(None)["masks"]])
    assert masks.shape == (600, 64)
    ratios = masks.float().mean(1)
    assert 0.4 < (ratios == 0).float().mean() < 0.6
    assert ratios.max() <= 0.5 and (ratios[ratios > 0] >= 0.05).all()


def test_stage_runs_log_every_step_when_short_and_about_500_times_when_long():
    assert stage_train.log_interval(40) == 1 and stage_train.log_interval(10**6, max_steps=4) == 1
    assert stage_train.log_interval(250_000) == 500  # 500 entries (+ epoch ends) over the run
