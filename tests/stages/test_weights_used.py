"""Every table row says which weights it was computed with, as used (issue 16): ImageNet weights read from the
local Hugging Face cache, downloaded, or a random initialisation standing in for unreachable ones; weights trained
here on the bundled tiles. No test touches the network: the hub probe is faked, any connection attempt fails."""
from __future__ import annotations

import json
import socket

import pandas as pd
import pytest
import torch

import histokit.stages.common as common
from histokit.models import hub
from histokit.models.backbones import create_encoder
from histokit.evaluation.protocols import Retrieval
from histokit.papers.recipe import DatasetSpec, ModelSpec, Recipe, TableSpec, TrainSpec
from histokit.results import WEIGHTS_COLUMN, build_table, merge_records, records_frame
from histokit.stages.context import StageContext
from histokit.stages.data import write_indexes

pytestmark = pytest.mark.filterwarnings("ignore:make_split. stratification impossible:UserWarning")

TIMM_ID = "timm/test_resnet.r160_in1k"   # timm's tiny test ResNet, the default tag of "test_resnet"
RUN = TrainSpec(name="simclr_tiles", method="simclr", encoder="resnet_test", dataset="TILES", image_size=32)
RECIPE = Recipe(paper="tiny", title="tiny", citation="", profile="smoke", image_size=32,
                datasets=(DatasetSpec("TILES", "kather2016_tiny"),),
                models=(ModelSpec("ImageNet ResNet", "test_resnet", "timm"),
                        ModelSpec("SimCLR", "resnet_test", "train:simclr_tiles")),
                finetune=(RUN,))


def _ctx(tmp_path, profile="smoke"):
    ctx = StageContext(paper="tiny", profile=profile, recipe=RECIPE, run_dir=tmp_path / "run",
                       data_root=tmp_path, device="cpu", seed=0, progress=False)
    write_indexes(ctx)  # stage 01
    return ctx


@pytest.fixture
def no_network(monkeypatch):
    def refuse(address, *args, **kwargs):
        raise AssertionError(f"a test tried to reach {address}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: False)
    for var in ("HF_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)


def _fake_hf_cache(home, state: dict) -> None:
    """``state`` as huggingface_hub's cache keeps a download of ``TIMM_ID``: hub/models--org--name/snapshots/<commit>/
    model.safetensors, with refs/main naming the commit."""
    from safetensors.torch import save_file

    repo = home / "hub" / ("models--" + TIMM_ID.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(repo / "snapshots" / commit / "model.safetensors"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_offline_run_loads_imagenet_weights_from_the_local_cache(tmp_path, monkeypatch, no_network):
    torch.manual_seed(123)
    published = create_encoder("test_resnet")
    _fake_hf_cache(tmp_path / "hf", published.model.state_dict())
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    ctx = _ctx(tmp_path)
    encoder, source = common.resolve_weights(ctx, "test_resnet", "timm", "TILES", image_size=32)
    assert source.startswith(common.WEIGHTS_FROM_CACHE) and "random" not in source
    assert _same_weights(encoder, published)  # the cached weights, not a random initialisation
    assert not any("random initialisation" in n for n in ctx.notes().get("all", []))
    # a training run starting from them is fingerprinted as starting from hub weights, not from random ones
    assert common.init_identity(ctx, "timm", "TILES", "test_resnet") == {"kind": "timm"}


def test_empty_cache_and_no_network_fall_back_to_random_and_say_so(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    ctx = _ctx(tmp_path)
    torch.manual_seed(0)
    encoder, source = common.resolve_weights(ctx, "test_resnet", "timm", "TILES", image_size=32)
    assert source.startswith(common.WEIGHTS_UNREACHABLE)
    assert any("random initialisation instead" in n and "local cache" in n for n in ctx.notes()["all"])
    torch.manual_seed(0)
    assert _same_weights(encoder, create_encoder("test_resnet", img_size=32))  # the failed cache look-up drew nothing
    assert common.init_identity(ctx, "timm", "TILES", "test_resnet") == {"kind": "random (hub offline)"}


def test_weights_fetched_from_the_hub_say_downloaded(tmp_path, monkeypatch, no_network):
    from huggingface_hub import constants

    real = common._create_encoder

    def fake_hub(name, *, pretrained=False, **kw):  # the hub answers; the local cache is empty
        if pretrained and constants.HF_HUB_OFFLINE:
            raise FileNotFoundError("not in the local cache")
        return real(name, **kw)

    monkeypatch.setattr(common, "_create_encoder", fake_hub)
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: True)
    _, source = common.resolve_weights(_ctx(tmp_path), "test_resnet", "timm", "TILES", image_size=32)
    assert source.startswith(common.WEIGHTS_DOWNLOADED)


def test_trained_weights_say_what_they_were_trained_on_and_started_from(tmp_path):
    ctx = _ctx(tmp_path)
    path = common.trained_weights_path(ctx, RUN.name)
    path.parent.mkdir(parents=True)
    torch.save(create_encoder("resnet_test", img_size=32).state_dict(), path)
    start = f"{common.WEIGHTS_UNREACHABLE} (hub offline, not in the local cache)"
    (path.parent / "history.json").write_text(json.dumps({"init": start, "history": [],
                                                           **common.trained_weights_identity(ctx, RUN.name)}))
    _, source = common.resolve_weights(ctx, "resnet_test", "train:simclr_tiles", "TILES", image_size=32)
    # 80 of the 100 bundled tiles are the stratified 80/10/10 training split
    assert source == f"trained here on 80 bundled Kather 2016 tiles (simclr_tiles) ← {start}"


TABLE = TableSpec("table1", "Table I", "habijan2025_esvit_table1.csv", keys=("model", "dataset"),
                  metrics=("mAP@10",))


def test_table_row_shows_the_weights_used_beside_the_paper_label_and_value():
    text = f"{common.WEIGHTS_UNREACHABLE} (hub offline, not in the local cache)"
    records = records_frame([{"table": "table1", "model": "ResNet50 + k-NN", "dataset": "CRC", "metric": "mAP@10",
                              "value": 30.0, WEIGHTS_COLUMN: text}])
    table = build_table(TABLE, records)
    assert list(table.columns[:3]) == ["model", "dataset", WEIGHTS_COLUMN]
    row = table[(table["model"] == "ResNet50 + k-NN") & (table["dataset"] == "CRC")].iloc[0]
    assert row[WEIGHTS_COLUMN] == text
    assert row["mAP@10 (paper)"] == pytest.approx(58.4) and row["mAP@10 Δ"] == pytest.approx(30.0 - 58.4)
    assert table.loc[table["dataset"] == "BracS", WEIGHTS_COLUMN].eq("").all()  # not run: no weights to name


def test_a_rerun_on_other_weights_replaces_the_record():
    cell = {"table": "table1", "model": "ResNet50 + k-NN", "dataset": "CRC", "metric": "mAP@10"}
    old = records_frame([dict(cell, value=30.0, **{WEIGHTS_COLUMN: "random init"})])
    new = records_frame([dict(cell, value=55.0, **{WEIGHTS_COLUMN: "ImageNet weights from the local cache"})])
    merged = merge_records(old, new)
    assert len(merged) == 1 and merged["value"].iloc[0] == 55.0


def test_records_of_a_relabelled_row_get_their_models_weights(tmp_path):
    from histokit.evaluation.protocols.records import with_weights_used
    from histokit.stages.index import feature_path

    ctx = _ctx(tmp_path)
    sidecar = feature_path(ctx, "SimCLR", "TILES").with_suffix(".json")
    sidecar.parent.mkdir(parents=True)
    sidecar.write_text(json.dumps({"sha256": "0", "model": "SimCLR", "dataset": "TILES",
                                   "weights": "trained here on 80 bundled Kather 2016 tiles (simclr_tiles)"}))
    spec = Retrieval("table2", ("SimCLR",), ("TILES",), labels={"model": "SimCLR (paper's label)"})
    records = with_weights_used(ctx, spec, [{"table": "table2", "model": "SimCLR (paper's label)",
                                             "dataset": "TILES", "metric": "mAP@10", "value": 1.0}])
    assert records[0][WEIGHTS_COLUMN] == "trained here on 80 bundled Kather 2016 tiles (simclr_tiles)"
    assert pd.DataFrame(records)["model"].iloc[0] == "SimCLR (paper's label)"  # the paper's key is untouched
