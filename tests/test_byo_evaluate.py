"""histokit evaluate --encoder (issue 21, item 2): user rows in every paper's frozen-feature tables."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import timm
import torch

from histokit import byo, paths
from histokit.papers import get_recipe, list_papers
from histokit.papers.recipe import ModelSpec
from histokit.stages import common

ROWS = (ModelSpec("timm:resnet18", "timm:resnet18", "encoder:timm:resnet18"),
        ModelSpec("local:x.pth@vit_small_patch16_224", "local:/w/x.pth@vit_small_patch16_224",
                  "encoder:local:/w/x.pth@vit_small_patch16_224"))


@pytest.mark.parametrize("paper", list_papers())
def test_user_rows_join_every_frozen_feature_table(paper):
    recipe = get_recipe(paper, "smoke")
    out, skipped = byo.evaluation_recipe(recipe, ROWS)
    frozen_tables = {e.table for e in recipe.evaluations if e.kind in byo.FROZEN_KINDS}
    assert {t.id for t in out.tables} == frozen_tables and not out.ablations and not out.figures
    for table in frozen_tables:
        users = [e for e in out.evaluations if e.table == table and set(e.models) & {r.name for r in ROWS}]
        assert len(users) == len(ROWS)  # one row per encoder per table, never twice
        assert "your encoders (histokit evaluate)" in out.table(table).footnotes[-1]
    # the paper's own rows of those evaluations are all still there
    for spec in recipe.evaluations:
        if spec.kind in byo.FROZEN_KINDS:
            assert spec in out.evaluations
    if paper == "cyphervit":
        assert any("label-fraction fine-tuning (table2)" in s for s in skipped)


def test_table_keys_get_labels():
    recipe = get_recipe("esvit", "smoke")
    out, _ = byo.evaluation_recipe(recipe, ROWS[:1])
    table2 = [e for e in out.evaluations if e.table == "table2" and e.models == ("timm:resnet18",)][0]
    assert table2.labels == {"model": "timm:resnet18", "pretraining": "your encoder"}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setenv("HISTOKIT_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("HISTOKIT_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(common, "hub_reachable", lambda *a, **k: False)
    return tmp_path


def test_evaluate_end_to_end_smoke(workdir):
    """Two extra encoders on lgffem's smoke protocol (the cheapest paper): a timm name whose weights are unreachable
    offline (the table says random init) and a local checkpoint; the paper's rows beside them."""
    from histokit.cli import main

    torch.manual_seed(0)
    weights = workdir / "vit.pth"
    torch.save(timm.create_model("test_vit", num_classes=0).state_dict(), weights)
    assert main(["evaluate", "--encoder", "timm:test_resnet.r160_in1k", "--encoder", f"local:{weights}@test_vit",
                 "--paper", "lgffem"]) == 0
    out = workdir / "results" / "evaluate" / "lgffem" / "smoke"
    table = pd.read_csv(out / "table2.csv").set_index("method")
    assert {"DenseNet 121", "LGFFEM", "timm:test_resnet.r160_in1k", "local:vit.pth@test_vit"} <= set(table.index)
    assert table.loc["timm:test_resnet.r160_in1k", "weights used"].startswith("random init")
    assert table.loc["local:vit.pth@test_vit", "weights used"].startswith("local checkpoint vit.pth (sha256 ")
    assert float(table.loc["local:vit.pth@test_vit", "eta_tot"]) >= 0
    assert "your encoders (histokit evaluate)" in (out / "table2.md").read_text()
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "histokit evaluate" and len(run["encoders"]) == 2
    assert not (workdir / "results" / "lgffem").exists()  # the paper's own results are never written
    # a second run with one encoder: its tables hold that row only, the features of the first are reused
    assert main(["evaluate", "--encoder", f"local:{weights}@test_vit", "--paper", "lgffem"]) == 0
    table = pd.read_csv(out / "table2.csv").set_index("method")
    assert "timm:test_resnet.r160_in1k" not in table.index and "local:vit.pth@test_vit" in table.index


def test_unloadable_encoder_stops_before_any_work(workdir, capsys):
    from histokit.cli import main

    assert main(["evaluate", "--encoder", "hf-hub:some-lab/gated-model", "--paper", "esvit"]) == 1
    assert "huggingface-cli download some-lab/gated-model" in capsys.readouterr().err
    assert not (workdir / "runs").exists()
