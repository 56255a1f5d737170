"""The integrity chain past the checksum (issue 19, class 4): a sidecar names what the file beside it is, and every
reader checks that against what it asked for. A sha256 only proves that a file is the one its sidecar describes;
copying one model's feature file *and its sidecar* over another model's kept every checksum valid and put the
wrong model's numbers in a table row. Here, on a real tiny run (two random encoders, the bundled tiles), each
artifact with a sidecar is swapped or replaced and each reader must stop, naming the file, the field, the
expected and the found value; and stage 04 saves no FAISS index that nothing would ever load."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import histokit.stages.common as common
from histokit.crosspaper.collect import collect_feature_sets
from histokit.models.backbones import create_encoder
from histokit.evaluation.protocols import LabelFraction, Retrieval
from histokit.papers.recipe import DatasetSpec, ModelSpec, Recipe
from histokit.sidecars import SidecarError, check_sidecar
from histokit.stages.context import StageContext
from histokit.stages.index import extract_pair, feature_path, gallery_and_queries, load_feature_set
from histokit.stages.data import write_indexes

# 3 tiles per class leave fewer test tiles than classes: the split says so and falls back to an unstratified split
pytestmark = pytest.mark.filterwarnings("ignore:make_split. stratification impossible:UserWarning")

RECIPE = Recipe(paper="tiny", title="tiny", citation="", profile="smoke", image_size=32,
                datasets=(DatasetSpec("TILES", "kather2016_tiny"),),
                models=(ModelSpec("ViT", "vit_test", "random"), ModelSpec("ResNet", "resnet_test", "random"),
                        ModelSpec("Trained", "resnet_test", "train:run_b")),
                evaluations=(Retrieval("table1", ("ViT", "ResNet"), ("TILES",)),))


def tiny_run(run_dir: Path) -> StageContext:
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(paper="tiny", profile="smoke", recipe=RECIPE, run_dir=run_dir, data_root=run_dir,
                       device="cpu", seed=0, progress=False, rehearse={"max_images_per_class": 3})
    write_indexes(ctx)  # stage 01
    return ctx


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """A run directory where stage 04 extracted both models' features (what the swap tests copy from)."""
    ctx = tiny_run(tmp_path_factory.mktemp("integrity") / "run")
    for model in ("ViT", "ResNet"):
        extract_pair(ctx, model, "TILES", timed=False)
    return ctx


def fresh_copy(extracted, tmp_path) -> StageContext:
    """The extracted run directory, moved: its stage 04 runs again and stamps the features as this run's."""
    shutil.copytree(extracted.run_dir, tmp_path / "run")
    ctx = tiny_run(tmp_path / "run")
    for model in ("ViT", "ResNet"):
        extract_pair(ctx, model, "TILES", timed=False)
    return ctx


def swap(ctx, src_model: str, dst_model: str) -> Path:
    """Copy ``src_model``'s feature file and its sidecar over ``dst_model``'s; return the overwritten sidecar."""
    src, dst = feature_path(ctx, src_model, "TILES"), feature_path(ctx, dst_model, "TILES")
    shutil.copyfile(src, dst)
    shutil.copyfile(src.with_suffix(".json"), dst.with_suffix(".json"))
    return dst.with_suffix(".json")


@pytest.mark.bad_input
def test_a_feature_file_copied_with_its_sidecar_over_another_models_is_refused_by_every_reader(extracted, tmp_path):
    ctx = fresh_copy(extracted, tmp_path)
    want = load_feature_set(ctx, "ResNet", "TILES").features
    assert not np.allclose(load_feature_set(ctx, "ViT", "TILES").features[:, :4], want[:, :4])  # two models
    side = swap(ctx, "ViT", "ResNet")
    named = rf"{side}.*field 'model' is 'ViT', expected 'ResNet'.*re-run stage 04"
    with pytest.raises(SidecarError, match=named):  # every stage-05 / 07 read goes through load_feature_set
        load_feature_set(ctx, "ResNet", "TILES")
    with pytest.raises(SidecarError, match=named):  # the retrieval evaluation's own entry
        gallery_and_queries(ctx, "ResNet", "TILES")
    with pytest.raises(SidecarError, match=named):  # stage 04 again: it neither keeps nor silently redoes it
        extract_pair(ctx, "ResNet", "TILES", timed=False)
    from histokit.evaluation.protocols.records import weights_used

    with pytest.raises(SidecarError, match=named):  # the table's "weights used" column reads the sidecar too
        weights_used(ctx, "ResNet", "TILES")
    # deleting the file, as the message says, heals the run
    feature_path(ctx, "ResNet", "TILES").unlink()
    extract_pair(ctx, "ResNet", "TILES", timed=False)
    np.testing.assert_allclose(load_feature_set(ctx, "ResNet", "TILES").features, want, atol=1e-6, rtol=0)


@pytest.mark.bad_input
def test_a_sidecar_edited_to_name_the_expected_model_still_fails_its_checksum_or_its_dataset(extracted, tmp_path):
    ctx = fresh_copy(extracted, tmp_path)
    side = swap(ctx, "ViT", "ResNet")
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "model": "ResNet", "dataset": "OTHER"}))
    with pytest.raises(SidecarError, match=rf"{side}.*field 'dataset' is 'OTHER', expected 'TILES'"):
        load_feature_set(ctx, "ResNet", "TILES")
    del meta["test"]
    side.write_text(json.dumps({**meta, "model": "ResNet"}))
    with pytest.raises(SidecarError, match=rf"{side}.*field 'test' is missing \(expected False\)"):
        load_feature_set(ctx, "ResNet", "TILES")


@pytest.mark.bad_input
def test_features_of_another_run_directory_are_refused_until_this_runs_stage_04_vets_them(extracted, tmp_path):
    other = tiny_run(tmp_path / "other")
    target = feature_path(other, "ResNet", "TILES")
    target.parent.mkdir(parents=True)
    src = feature_path(extracted, "ResNet", "TILES")
    shutil.copyfile(src, target)
    shutil.copyfile(src.with_suffix(".json"), target.with_suffix(".json"))
    with pytest.raises(SidecarError, match=rf"{target.with_suffix('.json')}.*field 'run.run_dir'"):
        load_feature_set(other, "ResNet", "TILES")
    # stage 04 of this run checks model, dataset, paper, profile, settings and weights, then stamps the file as its
    # own (nothing is extracted again: the same random ResNet under the same settings)
    mtime = target.stat().st_mtime_ns
    extract_pair(other, "ResNet", "TILES", timed=False)
    assert target.stat().st_mtime_ns == mtime
    assert len(load_feature_set(other, "ResNet", "TILES")) == len(load_feature_set(extracted, "ResNet", "TILES"))


@pytest.mark.bad_input
def test_a_feature_file_of_another_paper_or_profile_is_refused_by_stage_04(extracted, tmp_path):
    ctx = fresh_copy(extracted, tmp_path)
    side = feature_path(ctx, "ResNet", "TILES").with_suffix(".json")
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "run": {**meta["run"], "profile": "full", "label": "full"}}))
    with pytest.raises(SidecarError, match=rf"{side}.*field 'run.profile' is 'full', expected 'smoke'"):
        extract_pair(ctx, "ResNet", "TILES", timed=False)


@pytest.mark.bad_input
def test_stage_04_saves_no_faiss_index_that_nothing_would_load(extracted):
    """A saved index was never loaded (stage 05 builds its own from the checked features), so its checksum never
    ran and a garbage index changed nothing: stage 04 now keeps the index in memory for its timings only."""
    assert not list(extracted.run_dir.rglob("*.faiss")) and not extracted.path("index").exists()
    timing = extract_pair(extracted, "ViT", "TILES", timed=True)  # the latency still comes from a real index
    assert timing["gallery_size"] > 0 and timing["retrieval_latency_ms"] > 0
    assert not list(extracted.run_dir.rglob("*.faiss"))


@pytest.mark.bad_input
def test_a_training_runs_weights_swapped_with_their_history_are_refused_by_the_reader(tmp_path):
    ctx = tiny_run(tmp_path / "run")
    for name, seed in (("run_a", 0), ("run_b", 1)):
        path = common.trained_weights_path(ctx, name)
        path.parent.mkdir(parents=True)
        torch.manual_seed(seed)
        torch.save(create_encoder("resnet_test", img_size=32).state_dict(), path)
        (path.parent / "history.json").write_text(json.dumps({"init": "random", "history": [],
                                                              **common.trained_weights_identity(ctx, name)}))
    common.resolve_weights(ctx, "resnet_test", "train:run_b", "TILES", image_size=32)  # its own: loads
    a, b = (common.trained_weights_path(ctx, n) for n in ("run_a", "run_b"))
    shutil.copyfile(a, b)  # weights replaced under their history
    with pytest.raises(SidecarError, match=rf"{b.parent / 'history.json'}.*field 'encoder_sha256'"):
        common.resolve_weights(ctx, "resnet_test", "train:run_b", "TILES", image_size=32)
    shutil.copyfile(a.parent / "history.json", b.parent / "history.json")  # and the history with them
    with pytest.raises(SidecarError, match=rf"history\.json.*field 'name' is 'run_a', expected 'run_b'"):
        common.resolve_weights(ctx, "resnet_test", "train:run_b", "TILES", image_size=32)


@pytest.mark.bad_input
def test_a_label_fraction_result_of_another_model_is_refused(tmp_path):
    ctx = tiny_run(tmp_path / "run")
    path = ctx.path("label_fraction", "resnet", "tiles", "0.1.json")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"model": "ViT", "dataset": "TILES", "fraction": 0.1, "accuracy": 99.0}))
    with pytest.raises(SidecarError, match=rf"{path}.*field 'model' is 'ViT', expected 'ResNet'"):
        LabelFraction("all", ("ResNet",), ("TILES",), fractions={"0.1": "10%"}).finetune(ctx, "ResNet", "TILES", 0.1)


@pytest.mark.bad_input
def test_the_cross_paper_benchmark_refuses_a_feature_file_copied_over_another_models(extracted, tmp_path):
    """The common benchmark reads every paper's run; a sidecar must name the model and dataset its place names and
    the paper, profile and recipe of the run it lies in."""
    from feature_helpers import write_features

    labels = np.arange(8) % 2
    feats = np.eye(8, 4, dtype=np.float32)
    kept = write_features(tmp_path, "esvit", "smoke", "EsViT + k-NN", "CRC", feats, labels)
    other = write_features(tmp_path, "esvit", "smoke", "ResNet50 + k-NN", "CRC", feats + 1, labels)
    assert collect_feature_sets("smoke", tmp_path).n_feature_sets == 2
    shutil.copyfile(other, kept)
    shutil.copyfile(other.with_suffix(".json"), kept.with_suffix(".json"))
    with pytest.raises(SidecarError, match=rf"{kept.with_suffix('.json')}.*field 'model' is 'ResNet50 \+ k-NN', "
                                           r"expected 'EsViT \+ k-NN'"):
        collect_feature_sets("smoke", tmp_path)


@pytest.mark.bad_input
def test_check_sidecar_names_file_field_expected_found_and_remedy(tmp_path):
    side = tmp_path / "a.json"
    side.write_text(json.dumps({"model": "B", "run": {"paper": "esvit"}}))
    with pytest.raises(SidecarError) as err:
        check_sidecar(side, {"model": "A", "run": {"paper": "esvit", "recipe": "abc"}}, what="A's features",
                      remedy="delete it")
    text = str(err.value)
    assert str(side) in text and "field 'model' is 'B', expected 'A'" in text and "A's features" in text
    assert "field 'run.recipe' is missing (expected 'abc')" in text and text.endswith("delete it")
    side.write_text("[1, 2")
    with pytest.raises(SidecarError, match=rf"{side} is damaged \(not valid JSON"):
        check_sidecar(side, {"model": "A"})
    with pytest.raises(SidecarError, match=rf"{tmp_path / 'none.json'} is missing"):
        check_sidecar(tmp_path / "none.json", {"model": "A"})
