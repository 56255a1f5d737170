"""histokit evaluate --encoder (issue 21, item 2): user rows in every paper's frozen-feature tables."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import timm
import torch

from histokit.models import hub
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
    frozen_tables = {e.table for e in recipe.evaluations if e.kind in byo.FROZEN_KINDS + byo.FINETUNED_KINDS}
    frozen_ablations = {e.table for e in recipe.ablations if e.kind in byo.FROZEN_ABLATION_KINDS}
    assert {t.id for t in out.tables} == frozen_tables | frozen_ablations and not out.figures
    assert {e.table for e in out.ablations} == frozen_ablations  # the training ablations are not run
    assert frozen_ablations == ({"table1_splits"} if paper == "esvit" else set())
    for table in frozen_tables | frozen_ablations:
        specs = out.evaluations if table in frozen_tables else out.ablations
        users = [e for e in specs if e.table == table and set(e.models) & {r.name for r in ROWS}]
        assert len(users) == len(ROWS)  # one row per encoder per table, never twice
        assert "your encoders (histokit evaluate)" in out.table(table).footnotes[-1]
    # the paper's own rows of those evaluations are all still there
    for spec in recipe.evaluations:
        if spec.kind in byo.FROZEN_KINDS + byo.FINETUNED_KINDS:
            assert spec in out.evaluations
    if paper == "cyphervit":  # Table 2 fine-tunes your encoders with the paper's recipe; Table 4 is not theirs
        assert "table2" in frozen_tables and not any("table2" in s for s in skipped)
        assert "fine-tuned from their weights" in out.table("table2").footnotes[-1]
        assert "the training ablations (table4)" in skipped


def test_table_keys_get_labels():
    recipe = get_recipe("esvit", "smoke")
    out, _ = byo.evaluation_recipe(recipe, ROWS[:1])
    table2 = [e for e in out.evaluations if e.table == "table2" and e.models == ("timm:resnet18",)][0]
    assert table2.labels == {"model": "timm:resnet18", "pretraining": "your encoder"}


def _use_workdir(mp: pytest.MonkeyPatch, root) -> None:
    mp.setattr(paths, "RESULTS_DIR", root / "results")
    mp.setattr(paths, "RUNS_DIR", root / "runs")
    mp.setenv("HISTOKIT_RESULTS_DIR", str(root / "results"))
    mp.setenv("HISTOKIT_RUNS_DIR", str(root / "runs"))
    mp.setenv("HF_HUB_CACHE", str(root / "hub"))
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setattr(hub, "hub_reachable", lambda *a, **k: False)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    _use_workdir(monkeypatch, tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def lgffem_workdir(tmp_path_factory):
    """One work directory whose lgffem smoke run has finished stages 01-04 (the paper's own features: what the
    common benchmark reads), shared by the end-to-end tests below; lgffem is the cheapest paper to train."""
    from histokit.cli import main

    root = tmp_path_factory.mktemp("byo")
    with pytest.MonkeyPatch.context() as mp:
        _use_workdir(mp, root)
        assert main(["reproduce", "lgffem", "--only", "01", "02", "03", "04", "--quiet", "--fresh-kernels"]) == 0
    return root


@pytest.fixture
def lgffem_run(lgffem_workdir, monkeypatch):
    _use_workdir(monkeypatch, lgffem_workdir)
    return lgffem_workdir


def test_evaluate_end_to_end_smoke(lgffem_run):
    """Two extra encoders on lgffem's smoke protocol (the cheapest paper): a timm name whose weights are unreachable
    offline (the table says random init) and a local checkpoint; the paper's rows beside them."""
    from histokit.cli import main

    workdir = lgffem_run
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


def test_benchmark_takes_your_encoders_beside_the_papers_models(lgffem_run):
    """histokit benchmark --encoder (issue 21, item 3): a row per encoder and data, with bootstrap intervals, beside
    the paper's models, in results/evaluate/benchmark/<profile>/ (the papers-only benchmark is not written)."""
    from histokit.cli import main

    workdir = lgffem_run
    torch.manual_seed(0)
    weights = workdir / "vit.pth"
    torch.save(timm.create_model("test_vit", num_classes=0).state_dict(), weights)
    assert main(["benchmark", "--encoder", f"local:{weights}@test_vit"]) == 0
    out = workdir / "results" / "evaluate" / "benchmark" / "smoke"
    table = pd.read_csv(out / "benchmark.csv")
    mine = table[table["paper"] == "your encoder"]
    assert list(mine["method"]) == ["your encoder: local:vit.pth@test_vit"] * len(mine) and len(mine) >= 1
    assert set(mine["data"]) == set(table.loc[table["paper"] == "lgffem", "data"])  # every data the paper has
    assert mine["mAP@10 95% CI"].str.match(r"^\[\d").all()  # bootstrap intervals, as every other row
    assert (mine["weights"].str.startswith("local checkpoint vit.pth")).all()
    md = (out / "benchmark.md").read_text()
    assert "features extracted in the lgffem evaluation run" in md
    assert json.loads((out / "benchmark_inputs.json").read_text())["encoders"] == [f"local:{weights}@test_vit"]
    assert (out / "benchmark_heatmap.png").is_file() and not (workdir / "results" / "benchmark").exists()
    # the same features a second time: found current, not extracted again
    feature = next((workdir / "runs" / "evaluate" / "lgffem" / "smoke" / "features").glob("local_vit*/*.npz"))
    stamp = feature.stat().st_mtime_ns
    assert main(["benchmark", "--encoder", f"local:{weights}@test_vit"]) == 0
    assert feature.stat().st_mtime_ns == stamp
