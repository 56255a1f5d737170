"""Distributed training and sharded extraction on CPU with gloo: two forked ranks (torchrun's environment variables,
``histokit.distributed.launch.run_local``) against one process, through the stages' own functions (a tiny recipe).

- DINO: 2 ranks x batch 4 end where 1 process x batch 8 ends (same global batches, same views), within 5e-5.
- A rank killed mid-epoch: the restarted job resumes from the last epoch checkpoint and ends bit-identical to the
  uninterrupted 2-rank run (what ``torchrun --max-restarts`` relies on); restarted workers find their peers through
  torchrun's shared store, not the dead workers' stale addresses.
- Sub-center ArcFace under 2 ranks: a killed rank's restarted job ends bit-identical to the uninterrupted one.
- Replicas that diverge (a center not all-reduced) are caught; the loader is sharded per rank.
- Sharded extraction: 2 ranks == 1 process; a killed shard is redone alone and the merged store is complete; stage
  04's extraction under 2 ranks writes the feature file the single-process stage writes.
(tests/distributed/test_torchrun_recipe.py launches real ``torchrun`` from a stage.)
"""
import json
import os
import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader

import histokit.stages.train as stage_train
from histokit.data.datasets import load_dataset
from histokit.data.transforms import eval_transform
from histokit.distributed import assert_replicas_equal, distributed_loader, init_distributed, run_local
from histokit.distributed.launch import free_port, rank
from histokit.distributed.extract import (assign_shards, extract_shard, merge_shards, parse_args, run_extraction,
                                          run_stage_extraction, shard_paths)
from histokit.distributed.pretrain import run_rank
from histokit.models.backbones import create_encoder
from histokit.papers.recipe import DatasetSpec, ModelSpec, Recipe, TrainSpec
from histokit.retrieval.features import FeatureFileError, extract_features, load_features
from histokit.stages.context import StageContext
from histokit.train.engine import TRAIN_CONFIG_NAME, batch_and_lr, train
from histokit.train.checkpoint import checkpoint_path
from histokit.stages.data import write_indexes

# Same batches, same views: only float32 summation order differs (two per-rank means averaged by the all-reduce vs
# one mean of 8, 1 vs 2 intra-op threads). Measured here: 4e-7 after these 4 steps; 5e-6 after 12 larger steps in
# benchmarks/bench_ddp.py. A real fault is far above: centers left un-reduced moved the student weights by 2e-3 in
# this same run.
PARITY_ATOL = 5e-5

# 3 tiles per class leave fewer test tiles than classes: the split says so and falls back to an unstratified split
pytestmark = pytest.mark.filterwarnings("ignore:make_split. stratification impossible:UserWarning")

# A recipe of the kit's tiny ViT: 3 tiles per class of the bundled Kather tiles (a rehearsal cap) -> 19 training
# tiles -> 2 global batches of 8 per epoch, 2 epochs.
TINY_RUN = TrainSpec(name="dino_tiny", method="dino", encoder="vit_test", dataset="TILES", epochs=2, batch_size=8,
                     optimizer="adamw", lr=1e-3, min_lr=1e-5, weight_decay=0.04, warmup_epochs=1, image_size=32,
                     local_size=16, n_local=2, method_cfg={"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16,
                                                           "warmup_teacher_temp_epochs": 1})
TINY_RECIPE = Recipe(paper="tiny", title="tiny", citation="", profile="smoke", image_size=32,
                     datasets=(DatasetSpec("TILES", "kather2016_tiny"),),
                     models=(ModelSpec("tiny", "vit_test", "random"),), pretrain=(TINY_RUN,))


def tiny_context(run_dir: Path) -> StageContext:
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(paper="tiny", profile="smoke", recipe=TINY_RECIPE, run_dir=run_dir, data_root=run_dir,
                       device="cpu", seed=0, progress=False, rehearse={"max_images_per_class": 3})
    write_indexes(ctx)  # stage 01
    return ctx


def assert_parity(got: dict, want: dict, lr: float = TINY_RUN.lr, steps: int = 4) -> None:
    """Every tensor within PARITY_ATOL, except the attention key bias: its gradient is zero in exact arithmetic
    (softmax is shift-invariant over the keys), so it holds float noise that AdamW scales to steps of up to ``lr``;
    there the bound is ``lr x steps`` (measured: 2e-4 after 4 steps; the query and value biases agree within 3e-9)."""
    assert got.keys() == want.keys()
    for k in want:
        a, b = got[k], want[k]
        if k.endswith("attn.qkv.bias"):
            q_a, k_a, v_a = a.reshape(3, -1)
            q_b, k_b, v_b = b.reshape(3, -1)
            torch.testing.assert_close(torch.stack([q_a, v_a]), torch.stack([q_b, v_b]), atol=PARITY_ATOL, rtol=0,
                                       msg=k)
            torch.testing.assert_close(k_a, k_b, atol=lr * steps, rtol=0, msg=f"{k} (key part)")
        else:
            torch.testing.assert_close(a, b, atol=PARITY_ATOL, rtol=0, msg=k)


def _final(run_dir):
    return torch.load(checkpoint_path(run_dir / "train" / "dino_tiny" / "checkpoints"), weights_only=True)


@pytest.fixture(scope="module")
def dino_runs(tmp_path_factory):
    """The same 4 DINO steps (19 real tiles, global batch 8, 2 epochs) as 1 process and as 2 gloo ranks, each
    through the stage's own train_rank (what ``histokit.distributed.pretrain`` runs in every torchrun rank)."""
    root = tmp_path_factory.mktemp("dino")
    with pytest.MonkeyPatch.context() as mp:  # the resume checkpoints hold the student, teacher and center compared
        mp.setenv("HISTOKIT_KEEP_CHECKPOINTS", "1")
        run_rank(tiny_context(root / "one"), "dino_tiny")
        run_local(run_rank, 2, (tiny_context(root / "two"), "dino_tiny"))
    return root


def test_two_gloo_ranks_match_one_process_with_the_same_global_batch(dino_runs):
    one, two = _final(dino_runs / "one"), _final(dino_runs / "two")
    assert_parity(two["model"], one["model"])  # student, EMA teacher, heads and the DINO center
    assert [e["step"] for e in two["history"]] == [1, 2, 3, 4]
    assert [e["loss"] for e in two["history"]] == pytest.approx([e["loss"] for e in one["history"]], rel=1e-5)
    for name, world, per_rank in (("one", 1, 8), ("two", 2, 4)):
        run = dino_runs / name / "train" / "dino_tiny"
        cfg = json.loads((run / "checkpoints" / TRAIN_CONFIG_NAME).read_text())
        assert (cfg["world_size"], cfg["batch_per_rank"], cfg["global_batch"]) == (world, per_rank, 8)
        assert cfg["lr"] == cfg["base_lr"] == 1e-3 and cfg["lr_scaling"].startswith("none")
        assert cfg["sampler"] == "DistributedSampler"  # one seeded permutation, also in one process
        assert json.loads((run / "history.json").read_text())["world_size"] == world
    assert sorted(p.relative_to(dino_runs / "two").as_posix() for p in (dino_runs / "two").rglob("*")
                  if p.is_file()) == [
        "data/tiles/index.csv", "data/tiles/index.json", "results/figures/loss_dino_tiny.png",
        "train/dino_tiny/checkpoints/checkpoint_last.pt", f"train/dino_tiny/checkpoints/{TRAIN_CONFIG_NAME}",
        "train/dino_tiny/encoder.pt", "train/dino_tiny/history.json"]  # rank 0 wrote them; nothing half-written
    assert len(two["rng_per_rank"]) == 2
    e_one, e_two = (torch.load(dino_runs / n / "train" / "dino_tiny" / "encoder.pt", weights_only=True)
                    for n in ("one", "two"))
    assert_parity(e_two, e_one)  # the evaluated encoder (DINO's EMA teacher), what stage 04 reads


def test_a_global_batch_the_world_does_not_divide_is_refused():
    assert stage_train.per_rank_batch(16, 2) == 8 and stage_train.per_rank_batch(16, 1) == 16
    with pytest.raises(ValueError, match="global batch 16 is not divisible by the world size 3"):
        stage_train.per_rank_batch(16, 3)


class _DieMidEpoch:
    """A loader whose process exits (as a killed rank does) while fetching the 2nd batch of epoch ``epoch``."""

    def __init__(self, loader, epoch):
        self.loader, self.epoch, self.passes = loader, epoch, 0

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __iter__(self):
        self.passes += 1
        for i, batch in enumerate(self.loader):
            if self.passes == self.epoch and i == 1:
                os._exit(3)
            yield batch


def _train_with_rank1_killed_in_epoch2(ctx):
    real = stage_train.training_loader  # patched in this forked child only
    stage_train.training_loader = lambda c, s, *m: _DieMidEpoch(real(c, s, *m), 2) if rank() == 1 else real(c, s, *m)
    run_rank(ctx, "dino_tiny")


@pytest.mark.fault
@pytest.mark.determinism
def test_killed_rank_restarts_from_the_last_epoch_and_ends_identical(dino_runs, tmp_path, monkeypatch):
    monkeypatch.setenv("HISTOKIT_KEEP_CHECKPOINTS", "1")  # the finished runs' checkpoints are compared
    ctx = tiny_context(tmp_path)
    with pytest.raises((mp.ProcessExitedException, mp.ProcessRaisedException)):
        run_local(_train_with_rank1_killed_in_epoch2, 2, (ctx,))
    assert _final(tmp_path)["epoch"] == 1  # epoch 1 was checkpointed, epoch 2 died half-way
    run_local(run_rank, 2, (ctx, "dino_tiny"))  # the restart torchrun --max-restarts would do
    resumed, straight = _final(tmp_path), _final(dino_runs / "two")
    for k in straight["model"]:
        assert torch.equal(resumed["model"][k], straight["model"][k]), k
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(resumed["history"]) == strip(straight["history"])


# Sub-center ArcFace (LGFFEM's neck + head, the ffnir optimizers) through the same stage function under 2 ranks.
ARCFACE_RUN = TrainSpec(name="arcface_tiny", method="subcenter_arcface", encoder="lgffem_test", dataset="TILES",
                        epochs=2, batch_size=8, lr=5e-3, min_lr=8e-5, weight_decay=1e-5, warmup_epochs=0,
                        image_size=32, method_cfg={"variant": "paper", "sub_centers": 2,
                                                   "centres_optimizer": "separate", "centres_lr": 1e-4,
                                                   "augmentation": "ffnir_kimia"})


def arcface_context(run_dir: Path) -> StageContext:
    ctx = tiny_context(run_dir)
    ctx.recipe = Recipe(paper="tiny", title="tiny", citation="", profile="smoke", image_size=32,
                        datasets=TINY_RECIPE.datasets, models=TINY_RECIPE.models, pretrain=(ARCFACE_RUN,))
    return ctx


def _arcface_final(run_dir):
    return torch.load(checkpoint_path(run_dir / "train" / "arcface_tiny" / "checkpoints"), weights_only=True)


def _arcface_with_rank1_killed_in_epoch2(ctx):
    real = stage_train.training_loader  # patched in this forked child only
    stage_train.training_loader = lambda c, s, *m: _DieMidEpoch(real(c, s, *m), 2) if rank() == 1 else real(c, s, *m)
    run_rank(ctx, "arcface_tiny")


@pytest.mark.fault
@pytest.mark.determinism
def test_subcenter_arcface_trains_under_two_ranks_and_a_killed_rank_resumes_identical(tmp_path, monkeypatch):
    """The engine's DDP for Sub-center ArcFace: both AdamWs, the per-epoch cosine and the centres resumed by a
    restarted 2-rank job, which ends bit-identical to the uninterrupted one; rank 0 writes the stage's files."""
    monkeypatch.setenv("HISTOKIT_KEEP_CHECKPOINTS", "1")  # the finished runs' checkpoints are compared
    straight_dir = tmp_path / "straight"
    run_local(run_rank, 2, (arcface_context(straight_dir), "arcface_tiny"))
    straight = _arcface_final(straight_dir)
    run = straight_dir / "train" / "arcface_tiny"
    cfg = json.loads((run / "checkpoints" / TRAIN_CONFIG_NAME).read_text())
    assert (cfg["world_size"], cfg["batch_per_rank"], cfg["global_batch"]) == (2, 4, 8)
    assert (cfg["optimizer"], cfg["centres_optimizer"], cfg["centres_lr"], cfg["grad_clip"]) == (
        "adamw", "separate", 1e-4, 1.0)
    assert (run / "encoder.pt").exists() and json.loads((run / "history.json").read_text())["world_size"] == 2
    assert [e["epoch"] for e in straight["history"]] == [1, 1, 2, 2] and len(straight["rng_per_rank"]) == 2
    assert straight["extra_optimizers"] and straight["schedulers"]

    ctx = arcface_context(tmp_path / "killed")
    with pytest.raises((mp.ProcessExitedException, mp.ProcessRaisedException)):
        run_local(_arcface_with_rank1_killed_in_epoch2, 2, (ctx,))
    assert _arcface_final(ctx.run_dir)["epoch"] == 1  # epoch 1 was checkpointed, epoch 2 died half-way
    run_local(run_rank, 2, (ctx, "arcface_tiny"))  # the restart torchrun --max-restarts would do
    resumed = _arcface_final(ctx.run_dir)
    assert resumed["model"].keys() == straight["model"].keys()
    for k in straight["model"]:
        assert torch.equal(resumed["model"][k], straight["model"][k]), k
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(resumed["history"]) == strip(straight["history"])


def _rank_checks(out_dir):
    env = init_distributed("cpu")
    result = {"backend": env.backend, "world": env.world_size}
    loader = distributed_loader(DataLoader(list(range(10)), batch_size=2, shuffle=True), seed=5)
    result["sampler"] = type(loader.sampler).__name__
    result["indices"] = [int(i) for batch in loader for i in batch]
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.fill_(env.rank)  # a replica that drifted
    try:
        assert_replicas_equal(layer, what="probe")
    except RuntimeError as err:
        result["error"] = str(err)
    center = torch.full((1, 3), float(env.rank))
    from histokit.ssl.base import batch_mean_all_ranks
    result["center_mean"] = batch_mean_all_ranks(center).tolist()
    (out_dir / f"rank{env.rank}.json").write_text(json.dumps(result))
    dist.barrier()


def test_ranks_get_disjoint_shards_and_drifted_replicas_are_caught(tmp_path):
    run_local(_rank_checks, 2, (tmp_path,))
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["backend"] == "gloo" and r0["world"] == 2 and r0["sampler"] == "DistributedSampler"
    assert len(r0["indices"]) == len(r1["indices"]) == 5
    assert sorted(r0["indices"] + r1["indices"]) == list(range(10))  # one seeded permutation split between ranks
    assert "'weight' differs between rank 0 and rank 1" in r0["error"] and "probe" in r1["error"]
    assert r0["center_mean"] == r1["center_mean"] == [[0.5, 0.5, 0.5]]  # DINO's center: mean over all ranks


def _allreduce_then(out_dir, attempt):
    env = init_distributed("cpu", timeout=timedelta(seconds=30))
    t = torch.tensor([env.rank + 1.0])
    dist.all_reduce(t)
    (out_dir / f"attempt{attempt}_rank{env.rank}").write_text(str(t.item()))
    if attempt == 0:
        os._exit(0)  # killed: no clean shutdown, its keys stay in the store


@pytest.mark.fault
def test_restarted_workers_do_not_read_the_previous_attempts_store_keys(tmp_path):
    """torchrun shares its rendezvous store with the workers; after a restart (--max-restarts) gloo found the dead
    workers' addresses there ("Connection refused") until each attempt got its own key prefix."""
    port = free_port()
    agent_store = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False, multi_tenant=True)
    for attempt in (0, 1):
        run_local(_allreduce_then, 2, (tmp_path, attempt), env={
            "MASTER_PORT": port, "TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RESTART_COUNT": attempt})
    assert [(tmp_path / f"attempt1_rank{r}").read_text() for r in (0, 1)] == ["3.0", "3.0"]
    del agent_store


def _finetune_rank(out_dir):
    from histokit.train import finetune_classifier

    init_distributed("cpu")
    data = load_dataset("kather2016_tiny", transform=eval_transform(32)).subset(range(0, 100, 6))  # 17 tiles
    torch.manual_seed(0)
    _, history = finetune_classifier(create_encoder("vit_test", img_size=32), data, data, num_classes=8, epochs=1,
                                     lr=1e-3, batch_size=4, checkpoint_dir=out_dir / "ckpt", progress=False,
                                     log_every=1)
    (out_dir / f"history{dist.get_rank()}.json").write_text(json.dumps(history))


def test_finetuning_runs_under_two_ranks_with_a_sharded_loader(tmp_path):
    run_local(_finetune_rank, 2, (tmp_path,))
    h0, h1 = (json.loads((tmp_path / f"history{r}.json").read_text()) for r in (0, 1))
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(h0) == strip(h1)  # losses averaged over ranks, the same validation
    assert [e["step"] for e in h0] == [1, 2] and "val_acc" in h0[-1]  # 17 tiles -> 9 per rank -> 2 batches of 4
    cfg = json.loads((tmp_path / "ckpt" / TRAIN_CONFIG_NAME).read_text())
    assert (cfg["sampler"], cfg["world_size"], cfg["global_batch"]) == ("DistributedSampler", 2, 8)


class _Line(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 1)

    def forward(self, views):
        return self.lin(views[0].flatten(1)[:, :4]).pow(2).mean(), {}


def test_lr_scaling_rule_is_explicit_optional_and_recorded(tmp_path):
    assert batch_and_lr(64, 4, 5e-4, scale_lr=True)["lr"] == pytest.approx(5e-4 * 256 / 256)
    assert batch_and_lr(32, 2, 5e-4, scale_lr=True)["lr"] == pytest.approx(5e-4 * 64 / 256)
    off = batch_and_lr(32, 2, 5e-4)
    assert off["lr"] == 5e-4 and off["global_batch"] == 64 and off["lr_scaling"].startswith("none")
    loader = DataLoader([torch.randn(3, 2, 2) for _ in range(8)], batch_size=4)
    history = train(_Line(), loader, epochs=1, lr=0.1, scale_lr=True, progress=False, checkpoint_dir=tmp_path)
    assert history[0]["lr"] == pytest.approx(0.1 * 4 / 256)  # step 0 of a cosine without warm-up: the peak
    cfg = json.loads((tmp_path / TRAIN_CONFIG_NAME).read_text())
    assert (cfg["base_lr"], cfg["global_batch"], cfg["world_size"]) == (0.1, 4, 1)
    assert cfg["lr"] == pytest.approx(0.1 * 4 / 256) and cfg["lr_scaling"].startswith("linear")


# ------------------------------------------------------------------------------------------ sharded extraction


def test_shards_keep_groups_whole_and_balance_items():
    keys = ["slide-a"] * 2 + ["slide-b"] + ["slide-c"] * 3 + ["slide-d"] * 2
    shards = assign_shards(keys, 2)
    assert sorted(np.concatenate(shards).tolist()) == list(range(8))
    assert sorted(len(s) for s in shards) == [4, 4]
    for key in set(keys):
        owners = {r for r, s in enumerate(shards) for i in s if keys[i] == key}
        assert len(owners) == 1, key  # a slide is never split between ranks
    assert [len(s) for s in assign_shards(keys, 5)].count(0) == 1  # more ranks than slides: one empty shard


def test_sharded_extraction_with_two_ranks_equals_one_process(tmp_path):
    torch.manual_seed(1)
    encoder = create_encoder("vit_test", img_size=32)
    torch.save(encoder.state_dict(), tmp_path / "encoder.pt")
    args = parse_args(["--dataset", "kather2016_tiny", "--encoder", "vit_test", "--weights",
                       str(tmp_path / "encoder.pt"), "--image-size", "32", "--out", str(tmp_path / "feats"),
                       "--batch-size", "16", "--device", "cpu", "--no-progress"])
    run_local(run_extraction, 2, (args,))
    merged = load_features(tmp_path / "feats" / "features.npz",
                           json.loads((tmp_path / "feats" / "features.json").read_text())["sha256"])
    dataset = load_dataset("kather2016_tiny", transform=eval_transform(32))
    single = extract_features(encoder, dataset, batch_size=32, progress=False)
    np.testing.assert_array_equal(merged.indices, np.arange(len(dataset)))
    np.testing.assert_array_equal(merged.labels, single.labels)
    np.testing.assert_allclose(merged.features, single.features, atol=1e-6, rtol=0)
    assert merged.timing["world"] == 2 and len(merged.timing["shard_total_s"]) == 2


@pytest.mark.fault
def test_a_killed_shard_is_redone_alone_and_the_merge_is_complete(tmp_path):
    dataset = load_dataset("kather2016_tiny", transform=eval_transform(32)).subset(range(0, 100, 4))
    torch.manual_seed(0)
    encoder = create_encoder("vit_test", img_size=32)
    kw = dict(fingerprint={"encoder": "vit_test", "image_size": 32}, batch_size=8, progress=False)
    first = [extract_shard(encoder, dataset, tmp_path, rank=r, world=2, **kw) for r in (0, 1)]
    assert [r.status for r in first] == ["extracted", "extracted"]
    reference, _ = merge_shards(tmp_path, 2, expected_count=len(dataset))

    # rank 1 killed while writing: no done marker, half a file
    npz1, done1 = shard_paths(tmp_path, 1, 2)
    done1.unlink()
    npz1.write_bytes(npz1.read_bytes()[: npz1.stat().st_size // 2])
    with pytest.raises(FeatureFileError, match="shard_1_of_2.done.json is missing"):
        merge_shards(tmp_path, 2, expected_count=len(dataset))
    mtime0 = shard_paths(tmp_path, 0, 2)[0].stat().st_mtime_ns
    again = [extract_shard(encoder, dataset, tmp_path, rank=r, world=2, **kw) for r in (0, 1)]
    assert [r.status for r in again] == ["skipped", "extracted"]
    assert shard_paths(tmp_path, 0, 2)[0].stat().st_mtime_ns == mtime0  # the finished shard was not touched
    merged, _ = merge_shards(tmp_path, 2, expected_count=len(dataset))
    np.testing.assert_array_equal(merged.indices, np.arange(len(dataset)))
    np.testing.assert_array_equal(merged.features, reference.features)

    # a shard changed after it was marked done fails the merge, and a re-run redoes it
    npz0 = shard_paths(tmp_path, 0, 2)[0]
    shutil.copyfile(npz1, npz0)
    with pytest.raises(FeatureFileError, match="shard_0_of_2.npz has sha256"):
        merge_shards(tmp_path, 2)
    assert extract_shard(encoder, dataset, tmp_path, rank=0, world=2, **kw).status == "extracted"
    # another encoder setting (fingerprint) makes every shard stale
    assert extract_shard(encoder, dataset, tmp_path, rank=1, world=2, **{**kw, "fingerprint": {"x": 1}}).status \
        == "extracted"
    with pytest.raises(FeatureFileError, match="different extractions"):
        merge_shards(tmp_path, 2)


def test_stage_extraction_under_two_ranks_writes_the_single_process_feature_file(tmp_path):
    """Stage 04 with ``distributed`` flags: each torchrun rank runs run_stage_extraction (here: 2 forked ranks);
    rank 0's merge is the file the single-process stage writes, with the same sidecar fields."""
    from histokit.stages.index import extract_pair, feature_path, load_feature_set

    one, two = tiny_context(tmp_path / "one"), tiny_context(tmp_path / "two")
    extract_pair(one, "tiny", "TILES", timed=False)
    run_local(run_stage_extraction, 2, (two, "tiny", "TILES"))
    a, b = load_feature_set(one, "tiny", "TILES"), load_feature_set(two, "tiny", "TILES")
    np.testing.assert_array_equal(b.indices, a.indices)
    np.testing.assert_array_equal(b.labels, a.labels)
    np.testing.assert_allclose(b.features, a.features, atol=1e-6, rtol=0)  # the same seeded random encoder
    side_one, side_two = (json.loads(feature_path(c, "tiny", "TILES").with_suffix(".json").read_text())
                          for c in (one, two))
    assert {"sha256", "model", "dataset", "weights", "timing"} <= side_two.keys()
    assert {k: side_two[k] for k in ("model", "dataset", "weights")} == {k: side_one[k] for k in
                                                                         ("model", "dataset", "weights")}
    assert side_two["world"] == 2 and side_two["timing"]["ms_per_image"] > 0
    gallery = [extract_pair(c, "tiny", "TILES", timed=False)["gallery_size"] for c in (one, two)]
    assert gallery[0] == gallery[1] > 0  # the stage goes on from the merged file (index built, nothing re-extracted)
