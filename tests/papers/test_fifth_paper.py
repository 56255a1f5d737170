"""A fifth paper is one recipe (issue 18): written here from existing parts only — a random-init ResNet-18 and a
ViT trained with DINO for one epoch on the bundled Kather 2016 tiles, a retrieval and a weighted k-NN protocol, one
table without a transcribed paper CSV — registered for the test and run through stages 01 (data), 02 (pretrain),
04 (index) and 05 (evaluate) to its table, with no file of the package touched."""
from __future__ import annotations

import math

import pytest

from histokit.evaluation.protocols import ClassificationProbes, Retrieval
from histokit.papers import get_recipe, list_papers, register
from histokit.papers.recipe import DatasetSpec, ModelSpec, Recipe, TableSpec, TrainSpec
from histokit.stages import data as data_stage
from histokit.stages import evaluate as evaluate_stage
from histokit.stages import index as index_stage
from histokit.stages import open_stage
from histokit.stages import train as train_stage

MODELS = ("ResNet-18 (random init)", "ViT + DINO (1 epoch)")
RETRIEVAL = ("mAP@10", "Precision@10", "nDCG@10")


def fifth_paper() -> Recipe:
    return Recipe(
        paper="fifth", title="A fifth paper from existing parts", citation="(test)", profile="smoke", image_size=32,
        datasets=(DatasetSpec("TILES", "kather2016_tiny"),),
        models=(ModelSpec(MODELS[0], "resnet18", "random"), ModelSpec(MODELS[1], "vit_smoke", "train:dino_vit")),
        pretrain=(TrainSpec(name="dino_vit", method="dino", encoder="vit_smoke", dataset="TILES", epochs=1,
                            batch_size=16, optimizer="adamw", lr=5e-4, warmup_epochs=0, image_size=32, local_size=16,
                            n_local=2, method_cfg=dict(out_dim=256, warmup_teacher_temp_epochs=0,
                                                       freeze_last_layer_epochs=0)),),
        evaluations=(Retrieval("table1", MODELS, ("TILES",)),
                     ClassificationProbes("table1", MODELS, ("TILES",), columns={"TILES": {"knn": "knn_top1"}},
                                          knn_ks=(10, 20))),
        tables=(TableSpec("table1", "Table 1 — retrieval and k-NN on frozen features", paper_csv="",
                          keys=("model", "dataset"), metrics=RETRIEVAL + ("knn_top1",)),),
        notes=("SMOKE — a test recipe, not a reproduction.",),
        extraction_batch_size=32)


def test_a_fifth_paper_runs_from_its_recipe_to_its_table(tmp_path):
    recipe = fifth_paper()
    with register(recipe):
        assert "fifth" in list_papers() and get_recipe("fifth", "smoke") is recipe
        ctx = open_stage("fifth", "smoke", run_dir=str(tmp_path / "run"), data_root=str(tmp_path), device="cpu")
        ctx.progress = False
        data_stage.run(ctx)
        trained = train_stage.run(ctx, "pretrain")
        assert [(t.name, t.status) for t in trained] == [("dino_vit", "trained")]
        index_stage.run(ctx)
        tables = evaluate_stage.run(ctx, "evaluate")
    assert "fifth" not in list_papers()  # registered only inside the block

    table = tables["table1"]
    assert sorted(table["model"]) == sorted(MODELS) and len(table) == len(MODELS)  # one row per model
    assert (ctx.results_dir / "table1.md").is_file()
    for _, row in table.iterrows():
        for metric in RETRIEVAL + ("knn_top1",):
            value = float(row[metric])
            assert math.isfinite(value) and 0.0 <= value <= 100.0, (row["model"], metric, value)
        assert float(row["mAP@10"]) > 0.0  # nine classes, ten neighbours: some hit
    weights = dict(zip(table["model"], table["weights used"]))
    assert "random" in weights[MODELS[0]] and "dino_vit" in weights[MODELS[1]]


def test_a_protocol_field_the_recipe_cannot_run_fails_when_the_recipe_is_built():
    from dataclasses import replace

    recipe = fifth_paper()
    bad = replace(recipe, evaluations=(Retrieval("table1", MODELS, ("TILES",), ap_normalization="min_R"),))
    with pytest.raises(ValueError, match=r"fifth: retrieval evaluation of table 'table1': ap_normalization"):
        bad.validate()
    with pytest.raises(TypeError, match="unexpected keyword argument 'kk'"):
        Retrieval("table1", MODELS, ("TILES",), kk=20)   # a typo is an error, not an ignored dict key
    with pytest.raises(ValueError, match="already a recipe"):
        with register(replace(recipe, paper="esvit")):
            pass
