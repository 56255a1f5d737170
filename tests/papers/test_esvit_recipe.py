"""Habijan et al. (esvit) recipe, issue 16: the "ImageNet self-supervised" fallback pretrains on ImageNet-1k, the CRC /
BATCH fine-tunings do not start from a BracS run, EsViT runs clip as the official code does (and the engine clips),
a fallback row is labelled with what it was trained on, and the protocol cards are filled."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from histokit.papers import get_recipe
from histokit.papers.recipe import weight_sources
from histokit.results import build_table
from histokit.stages.context import StageContext
from histokit.stages.train import optimisation_kwargs
from histokit.train.engine import train


def _train_chain(recipe, spec: str, dataset: str) -> list:
    """Every training run a weight spec can reach, alternatives included (checkpoint|train:...)."""
    out = []
    for kind, value in weight_sources(spec, dataset):
        if kind == "train":
            run = recipe.train_spec(value)
            out += [run] + _train_chain(recipe, run.init, run.dataset)
    return out


def test_full_fallback_pretrains_on_imagenet_and_no_finetuning_starts_from_bracs():
    recipe = get_recipe("esvit", "full")
    pretrain = recipe.train_spec("esvit_pretrain")
    assert recipe.dataset(pretrain.dataset).dataset == "imagenet1k"
    assert recipe.dataset(pretrain.dataset).split == "none"  # every ImageNet-1k training image
    for key in ("CRC", "BATCH", "BracS"):
        chain = _train_chain(recipe, recipe.train_spec(f"esvit_finetune_{key}").init, key)
        assert [r.name for r in chain] == ["esvit_pretrain"], key
        assert all(r.dataset != "BracS" for r in chain), key
    # ImageNet is read by the pretraining only: no table row, no fine-tuning, no evaluation on it
    assert all(pretrain.dataset not in e.datasets for e in recipe.evaluations + recipe.ablations)
    assert all(t.dataset != pretrain.dataset for t in recipe.finetune)
    # the smoke profile has no ImageNet: its fallback trains on the bundled tiles
    smoke = get_recipe("esvit", "smoke")
    assert smoke.dataset(smoke.train_spec("esvit_pretrain").dataset).dataset == "kather2016_tiny"


def test_an_official_checkpoint_makes_imagenet_unneeded():
    recipe = get_recipe("esvit", "full")
    assert "imagenet1k" in {d.dataset for d in recipe.datasets_needed({})}
    given = {d.dataset for d in recipe.datasets_needed({"esvit_swin_tiny": "/w.pth"})}
    assert given == {"bracs", "nct_crc_he_100k", "bach"}
    assert recipe.replaced_runs({"esvit_swin_tiny": "/w.pth"}) == {"esvit_pretrain"}


def test_preflight_asks_for_imagenet_only_without_the_official_checkpoint(tmp_path):
    from histokit.preflight import find_missing

    recipe = get_recipe("esvit", "full")
    weights = tmp_path / "esvit.pth"
    weights.write_bytes(b"x")

    def missing(checkpoints):
        return {m.name for m in find_missing(recipe, str(tmp_path), checkpoints, rehearse=True) if m.what == "dataset"}

    assert "imagenet1k" in missing({})
    assert missing({"esvit_swin_tiny": str(weights)}) == {"bracs", "nct_crc_he_100k", "bach"}


@pytest.mark.parametrize("profile", ["smoke", "full"])
def test_esvit_runs_clip_per_tensor_at_3_and_simclr_runs_do_not(profile):
    recipe = get_recipe("esvit", profile)
    runs = recipe.pretrain + recipe.finetune
    esvit = [t for t in runs if t.method == "esvit"]
    assert esvit and all((t.grad_clip, t.grad_clip_mode) == (3.0, "per_param") for t in esvit)
    assert all(t.grad_clip is None for t in runs if t.method == "simclr")


class _HugeGradient(nn.Module):
    """A loss whose gradient is far above 3 on every tensor; records each tensor's gradient norm before the step."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.seen = []

    def forward(self, x):
        return (self.lin(x.flatten(1)[:, :4]) - 1e4).pow(2).mean(), {}

    def before_optimizer_step(self):
        self.seen.append(max(p.grad.norm().item() for p in self.parameters()))


@pytest.mark.parametrize("run, clipped", [("esvit_finetune_CRC", True), ("simclr_CRC", False)])
def test_the_engine_clips_an_esvit_runs_gradients(run, clipped):
    spec = get_recipe("esvit", "smoke").train_spec(run)
    kwargs = optimisation_kwargs(spec)
    kwargs.update(warmup_epochs=0, optimizer="adam")  # one step at a non-zero lr; SimCLR's optimizer unchanged
    torch.manual_seed(0)
    model = _HugeGradient()
    loader = DataLoader([torch.randn(2, 2, 2) for _ in range(2)], batch_size=2)
    train(model, loader, **kwargs, device="cpu", max_steps=1, progress=False)
    assert len(model.seen) == 1
    assert (model.seen[0] <= 3.0 + 1e-4) == clipped, model.seen


def _ctx(tmp_path, profile, checkpoints=None):
    return StageContext(paper="esvit", profile=profile, recipe=get_recipe("esvit", profile), run_dir=tmp_path / "run",
                        data_root=tmp_path, device="cpu", seed=0, progress=False, checkpoints=checkpoints or {})


def _trained(ctx, *runs):
    from histokit.stages.common import trained_weights_path

    for run in runs:
        path = trained_weights_path(ctx, run)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"weights")


def _spec(recipe, table, model="EsViT + k-NN"):
    return next(e for e in recipe.evaluations if e.table == table and e.models == (model,))


def test_a_fallback_row_is_labelled_with_what_it_was_trained_on(tmp_path):
    from histokit.evaluation.protocols.records import weight_lineage, weights_as_run

    # smoke: the fallback is the kit's EsViT on the bundled tiles
    ctx = _ctx(tmp_path / "smoke", "smoke")
    _trained(ctx, "esvit_pretrain", "esvit_finetune_CRC")
    assert weight_lineage(ctx, "train:esvit_finetune_{dataset}", "CRC") == \
        ["train:esvit_finetune_CRC", "train:esvit_pretrain", "random"]
    label = weights_as_run(ctx, _spec(ctx.recipe, "table2"), "EsViT + k-NN", "CRC")["row_label"]
    assert label == "EsViT (Pretrained on ImageNet — kit's own EsViT, 2 ep on the bundled Kather 2016 tiles, " \
                    "not ImageNet)"
    assert "EsViT + k-NN (init: kit's own EsViT, 2 ep" in \
        weights_as_run(ctx, _spec(ctx.recipe, "table1"), "EsViT + k-NN", "CRC")["row_label"]
    assert any("esvit_pretrain" in n and "Kather 2016" in n for n in ctx.notes()["table2"])

    # full, no checkpoint: the kit's EsViT on ImageNet-1k
    full = _ctx(tmp_path / "full", "full")
    _trained(full, "esvit_pretrain", "esvit_finetune_BracS")
    label = weights_as_run(full, _spec(full.recipe, "table2"), "EsViT + k-NN", "BracS")["row_label"]
    assert label == "EsViT (Pretrained on ImageNet — kit's own EsViT, 100 ep on ImageNet-1k)"
    assert any("ImageNet-1k" in n for n in full.notes()["table2"])

    # full with the official weights: the paper's label, and the fallback's footnote is withdrawn
    full.checkpoints["esvit_swin_tiny"] = str(tmp_path / "esvit.pth")
    assert weight_lineage(full, "train:esvit_finetune_{dataset}", "BracS") == \
        ["train:esvit_finetune_BracS", "checkpoint:esvit_swin_tiny"]
    assert weights_as_run(full, _spec(full.recipe, "table2"), "EsViT + k-NN", "BracS") == {}
    assert not any("esvit_pretrain" in n for n in full.notes().get("table2", []))


def test_a_labelled_row_keeps_the_papers_numbers_beside_it():
    spec = get_recipe("esvit", "full").table("table2")
    label = "EsViT (Pretrained on ImageNet — kit's own EsViT, 100 ep on ImageNet-1k)"
    records = pd.DataFrame([{"table": "table2", "model": "EsViT (Pretrained on ImageNet)",
                             "pretraining": "Self-Supervised", "metric": "mAP@10", "value": 70.0,
                             "row_label": label}])
    table = build_table(spec, records)
    assert list(table.model) == ["EsViT (No Pretraining)", label]
    row = table.iloc[1]
    assert row["mAP@10"] == 70.0 and row["mAP@10 (paper)"] == 78.4
    assert row["mAP@10 Δ"] == pytest.approx(70.0 - 78.4)


@pytest.mark.parametrize("profile", ["smoke", "full"])
def test_protocol_cards_of_all_three_tables(profile):
    recipe = get_recipe("esvit", profile)
    for table_id, aspects in (("table1", {"data + split", "gallery / queries", "preprocessing", "augmentation",
                                          "initialisation", "schedule / optimizer", "heads", "metric variant",
                                          "timing"}),
                              ("table2", {"data + split", "initialisation", "schedule / optimizer", "heads",
                                          "metric variant"}),
                              ("table1_splits", {"split", "metric variant"})):
        card = recipe.table(table_id).protocol
        assert aspects <= {p.aspect for p in card}, table_id
        assert all(p.paper and p.kit for p in card)
    card = {p.aspect: p for p in recipe.table("table1").protocol}
    assert not card["initialisation"].same and "esvit_swin_tiny" in card["initialisation"].variant
    assert "clip 3.0" in card["schedule / optimizer"].kit
    assert "65,536" in card["heads"].kit and "dropped" in card["heads"].kit
    # the CRC choice and its leakage caveat, with the audit's report path
    crc = [n for n in recipe.table("table1").footnotes if n.startswith("CRC")]
    assert crc and f"results/leakage/{profile}/leakage.md" in crc[0] and "near-duplicates" in crc[0]


def test_retrieval_records_carry_the_label_and_the_timing_device(tmp_path, monkeypatch):
    """Stage 05 on stored features: the fallback row's records carry its label, the timing records the device they
    ran on, and the table prints the label with no timing Δ off the paper's device (an A100)."""
    import json

    import numpy as np

    from histokit.retrieval.features import FeatureSet
    from histokit.stages import index

    rng = np.random.default_rng(0)
    labels = np.arange(20) % 2
    feats = rng.normal(size=(20, 4)).astype(np.float32) + labels[:, None]
    parts = (FeatureSet(feats[:16], labels[:16], np.arange(16), {}), FeatureSet(feats[16:], labels[16:],
                                                                                 np.arange(16, 20), {}))
    monkeypatch.setattr(index, "gallery_and_queries", lambda *a, **k: parts)
    ctx = _ctx(tmp_path, "smoke")
    _trained(ctx, "esvit_pretrain", "esvit_finetune_CRC")
    timing = ctx.path("timing", "esvit_k-nn", "crc.json")
    timing.parent.mkdir(parents=True)
    timing.write_text(json.dumps({"device": "cpu", "device_name": "cpu", "precision": "fp32",
                                  "feature_extraction_ms": 3.0, "feature_extraction_batch_size": 1,
                                  "feature_extraction_amortized_ms": 0.5, "extraction_batch_size": 32,
                                  "retrieval_latency_ms": 4.0}))
    spec = _spec(ctx.recipe, "table1")
    records = spec.run(ctx)
    assert {r["row_label"] for r in records} == {"EsViT + k-NN (init: kit's own EsViT, 2 ep on the bundled Kather "
                                                 "2016 tiles, not ImageNet)"}
    by_metric = {r["metric"]: r for r in records}
    assert by_metric["feature_extraction_ms"]["value"] == 3.0 and "batch 1" in by_metric["feature_extraction_ms"]["note"]
    assert "batch 32" in by_metric["feature_extraction_amortized_ms"]["note"]
    assert {by_metric[m]["device"] for m in ("feature_extraction_ms", "retrieval_latency_ms")} == {"cpu"}
    table = build_table(ctx.recipe.table("table1"), pd.DataFrame(records))
    row = table[table.dataset == "CRC"].set_index("model").loc[records[0]["row_label"]]
    assert row["feature_extraction_ms (paper)"] == 7.1 and pd.isna(row["feature_extraction_ms Δ"])
    assert pd.notna(row["mAP@10 Δ"])
