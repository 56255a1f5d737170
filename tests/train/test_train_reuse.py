"""A finished training run is reused only when what it started from is unchanged: a different checkpoint file
under the same ``--checkpoint`` name retrains it (and the runner re-runs every later stage)."""
from dataclasses import replace

import pytest

from histokit.models.official_layouts import write_official_mock
from histokit.papers import get_recipe
from histokit.stages import open_stage
from histokit.stages import train as train_stage
from histokit.stages.data import write_indexes


@pytest.fixture
def counted_training(monkeypatch):
    """The engine replaced by a counter: this test is about when training happens, not what it learns."""
    calls = []

    def fake_train(method, loader, **kwargs):
        calls.append(kwargs.get("max_steps"))
        return [{"epoch": 1, "step": 1, "loss": 1.0, "lr": 0.0, "wd": 0.0, "seconds": 0.0}]

    monkeypatch.setattr("histokit.train.engine.train", fake_train)
    return calls


@pytest.mark.fault
def test_new_checkpoint_file_retrains_the_run_it_initialises(tmp_path, counted_training):
    weights = tmp_path / "w"
    first = write_official_mock("esvit_swin_tiny", weights / "a.MOCK.pth", seed=0, compact=True)
    ctx = open_stage("esvit", "smoke", run_dir=str(tmp_path / "run"), device="cpu",
                     checkpoints={"esvit_swin_tiny": str(first)})
    write_indexes(ctx)  # stage 01
    # The full profile's fine-tuning run (Swin-T from the official weights, else the kit's own pretraining) on the
    # smoke profile's tiles: smoke itself trains a smaller Swin that the official weights do not fit.
    full = get_recipe("esvit", "full").train_spec("esvit_finetune_BracS")
    spec = replace(ctx.recipe.train_spec("esvit_finetune_CRC"), encoder=full.encoder, init=full.init)
    assert spec.init.startswith("checkpoint:esvit_swin_tiny")

    outcome = train_stage.train_one(ctx, spec, scope="all")
    assert outcome.status == "trained" and "esvit_swin_tiny" in outcome.init
    assert train_stage.train_one(ctx, spec, scope="all").status == "reused"
    assert len(counted_training) == 1

    second = write_official_mock("esvit_swin_tiny", weights / "b.MOCK.pth", seed=1, compact=True)
    ctx.checkpoints["esvit_swin_tiny"] = str(second)
    assert train_stage.train_one(ctx, spec, scope="all").status == "trained"
    assert len(counted_training) == 2

    from histokit.stages.common import training_fingerprint

    with_checkpoint = training_fingerprint(ctx, spec)
    ctx.checkpoints.clear()  # no checkpoint: the fallback (the kit's own pretraining) is another starting point
    assert training_fingerprint(ctx, spec) != with_checkpoint


def test_a_changed_training_dataset_entry_changes_the_fingerprint(tmp_path):
    """Which images a run trains on is decided by the recipe's dataset entry (split, training splits, validation
    fraction), not only by its TrainSpec: changing the entry must not reuse the weights trained under the old one."""
    from histokit.stages.common import training_fingerprint

    ctx = open_stage("lgffem", "full", run_dir=str(tmp_path / "run"), device="cpu")
    spec = ctx.recipe.train_spec("lgffem_C")
    before = training_fingerprint(ctx, spec)
    kimia = ctx.recipe.dataset(spec.dataset)
    for change in (dict(val_fraction=0.1), dict(split="random")):
        datasets = tuple(replace(d, **change) if d.key == kimia.key else d for d in ctx.recipe.datasets)
        changed = replace(ctx, recipe=replace(ctx.recipe, datasets=datasets))
        assert training_fingerprint(changed, spec) != before, change
    assert training_fingerprint(ctx, spec) == before


@pytest.fixture
def checkpointing_training(monkeypatch):
    """The engine replaced by one that leaves a resume checkpoint where the real one does."""
    def fake_train(method, loader, checkpoint_dir=None, **kwargs):
        from histokit.train.checkpoint import checkpoint_path, save_checkpoint

        save_checkpoint(checkpoint_path(checkpoint_dir), {"epoch": 1})
        (checkpoint_dir / "train_config.json").write_text("{}")
        return [{"epoch": 1, "step": 1, "loss": 1.0, "lr": 0.0, "wd": 0.0, "seconds": 0.0}]

    monkeypatch.setattr("histokit.train.engine.train", fake_train)


@pytest.mark.parametrize("keep", [None, "1"])
def test_a_finished_run_drops_its_resume_checkpoint_unless_asked_to_keep_it(tmp_path, checkpointing_training,
                                                                            monkeypatch, keep):
    if keep:
        monkeypatch.setenv("HISTOKIT_KEEP_CHECKPOINTS", keep)
    else:
        monkeypatch.delenv("HISTOKIT_KEEP_CHECKPOINTS", raising=False)
    ctx = open_stage("esvit", "smoke", run_dir=str(tmp_path / "run"), device="cpu")
    write_indexes(ctx)  # stage 01
    spec = ctx.recipe.pretrain[0]
    assert train_stage.train_one(ctx, spec, scope="all").status == "trained"
    run = tmp_path / "run" / "train" / spec.name
    assert (run / "encoder.pt").is_file() and (run / "checkpoints" / "train_config.json").is_file()
    assert (run / "checkpoints" / "checkpoint_last.pt").exists() is bool(keep)
    assert train_stage.train_one(ctx, spec, scope="all").status == "reused"  # the encoder is what is reused
