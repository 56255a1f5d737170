"""The notebooks' research surface: each stage's plan read from the recipe (tables, paper sections, models, datasets,
protocol card, training runs) and ``run_one``, which re-runs one table or figure with overrides into its own folder,
never over the run's records — on an esvit smoke run directory with fake features of the bundled tiles."""
import json

import numpy as np
import pytest

from histokit.data.datasets import load_dataset
from histokit.papers import get_recipe, list_papers
from histokit.stages import open_stage
from histokit.stages.data import write_indexes
from histokit.stages import evaluate as evaluate_stage
from histokit.retrieval.features import FeatureSet, save_features
from histokit.stages.common import slug
from histokit.stages.index import feature_identity, feature_path
from histokit.stages.interactive import feature_shapes, override_dir, run_one
from histokit.stages.plan import FIGURE_SECTIONS, STAGE_PLANS, stage_plan


@pytest.mark.parametrize("paper", list_papers())
def test_every_table_and_figure_of_the_papers_names_its_section(paper):
    recipe = get_recipe(paper, "full")
    assert all(t.section for t in recipe.tables), [t.id for t in recipe.tables if not t.section]
    assert all((paper, fig.id) in FIGURE_SECTIONS for fig in recipe.figures)


def test_the_evaluate_plan_names_tables_sections_models_datasets_and_the_protocol_card():
    recipe = get_recipe("esvit", "smoke")
    text = stage_plan(recipe, "05_evaluate")
    assert "`table1` — Table I — retrieval performance and efficiency" in text
    assert "Sec. III-A (quantitative results), Table I" in text and "Table II" in text
    assert "EsViT + k-NN" in text and "trained here (`esvit_finetune_<dataset>`)" in text
    assert "stands in for CRC" in text and "`kather2016_tiny`" in text
    assert "protocol `retrieval`" in text and "k=10" in text
    card = recipe.table("table1").protocol[0]
    assert card.paper in text and card.kit in text and "**differs**" in text
    assert "### `table1_splits`" not in text, "the ablation belongs to 06's plan"
    assert "### `table1_splits`" in stage_plan(recipe, "06_ablations")


def test_training_index_data_and_figure_plans():
    recipe = get_recipe("esvit", "full")
    pre = stage_plan(recipe, "02_pretrain")
    assert "esvit_pretrain" in pre and "| esvit |" in pre and "| 100 | 32 | adam 0.0001 |" in pre
    replaced = stage_plan(recipe, "02_pretrain", {"esvit_swin_tiny": "/w/esvit.pth"})
    assert "esvit_pretrain (replaced by the given checkpoint)" in replaced
    fine = stage_plan(recipe, "03_finetune")
    assert "official checkpoint `esvit_swin_tiny` if given, else trained here (`esvit_pretrain`)" in fine
    assert "nct_crc_he_100k" in stage_plan(recipe, "01_data")
    assert "DenseNet121 + k-NN" in stage_plan(recipe, "04_index")
    assert "Sec. II-E" in stage_plan(recipe, "07_visualize") and "retrieval_gallery" in stage_plan(recipe, "07_visualize")
    assert set(STAGE_PLANS) == {"01_data", "02_pretrain", "03_finetune", "04_index", "05_evaluate", "06_ablations",
                                "07_visualize"}
    with pytest.raises(ValueError, match="unknown stage '08_x'"):
        stage_plan(recipe, "08_x")


@pytest.fixture(scope="module")
def esvit_run(tmp_path_factory):
    """An esvit smoke run whose stage 04 is faked (clustered features of the tiles' real labels, a timing file per
    row), then stage 05 run for real: its records.csv is the run's own."""
    from feature_helpers import clustered

    runs = tmp_path_factory.mktemp("runs")
    labels = load_dataset("kather2016_tiny").labels
    recipe = get_recipe("esvit", "smoke")
    ctx = open_stage("esvit", "smoke", run_dir=str(runs / "esvit" / "smoke"), device="cpu")
    write_indexes(ctx)  # stage 01: the data index every later stage reads
    timing = {"device": "cpu", "device_name": "cpu", "precision": "fp32", "feature_extraction_ms": 1.0,
              "feature_extraction_batch_size": 1, "retrieval_latency_ms": 2.0,
              "feature_extraction_amortized_ms": 0.5, "extraction_batch_size": 32}
    for i, model in enumerate(recipe.models):
        path = feature_path(ctx, model.name, "CRC")
        sha = save_features(path, FeatureSet(clustered(labels, i, noise=1.5), labels, np.arange(len(labels)), {}))
        path.with_suffix(".json").write_text(json.dumps({**feature_identity(ctx, model.name, "CRC"), "sha256": sha,
                                                         "weights": "fake"}))
        path = ctx.path("timing", slug(model.name), "crc.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(timing))
    evaluate_stage.run(ctx, "evaluate")
    return ctx


def test_run_one_reruns_a_table_with_overrides_beside_the_runs_own_records(esvit_run):
    ctx = esvit_run
    own = (ctx.results_dir / "records.csv").read_bytes()
    own_table = (ctx.results_dir / "table1.md").read_bytes()
    at_10 = run_one(ctx, "table1")
    at_5 = run_one(ctx, "table1", k=5)
    assert "mAP@5" in at_5.columns and "mAP@10" not in at_5.columns, "k=5 measures AP@5, a kit-only column"
    assert "mAP@5 (paper)" not in at_5.columns, "the paper's AP@10 is not compared with an AP@5"
    row = at_10["model"].str.startswith("ResNet50") & (at_10["dataset"] == "CRC")
    assert float(at_5.loc[row, "mAP@5"].iloc[0]) != pytest.approx(float(at_10.loc[row, "mAP@10"].iloc[0]))
    assert float(at_10.loc[row, "mAP@10"].iloc[0]) == pytest.approx(
        float(evaluate_stage.read_records(ctx.results_dir / "records.csv").query(
            "table == 'table1' and metric == 'mAP@10' and model == 'ResNet50 + k-NN'")["value"].iloc[0]))
    out = override_dir(ctx, "table1", {"k": 5})
    assert out == ctx.run_dir / "overrides" / "table1-k5"
    assert (out / "records.csv").exists() and (out / "table1.md").exists()
    assert "Override re-run" in (out / "table1.md").read_text() and "k=5 (recipe: 10)" in (out / "table1.md").read_text()
    assert (ctx.results_dir / "records.csv").read_bytes() == own, "the run's own records are never rewritten"
    assert (ctx.results_dir / "table1.md").read_bytes() == own_table


def test_run_one_reruns_a_figure_into_its_override_folder(esvit_run):
    path = run_one(esvit_run, "fig2", k=3)
    assert path == override_dir(esvit_run, "fig2", {"k": 3}) / "fig2.png" and path.read_bytes()[:4] == b"\x89PNG"
    assert not (esvit_run.results_dir / "fig2.png").exists()


@pytest.mark.bad_input
def test_run_one_names_an_unknown_table_or_parameter(esvit_run):
    with pytest.raises(KeyError, match=r"no table or figure 'table9'; tables: table1, table2, table1_splits; "
                                       r"figures: fig2"):
        run_one(esvit_run, "table9")
    with pytest.raises(ValueError, match=r"table 'table1' has no parameter 'kk'; its parameters are .*\bk\b"):
        run_one(esvit_run, "table1", kk=5)
    with pytest.raises(ValueError, match=r"figure 'fig2' \(retrieval_gallery\) has no parameter 'T'"):
        run_one(esvit_run, "fig2", T=0.1)


def test_feature_shapes_lists_what_stage_04_left(esvit_run):
    shapes = feature_shapes(esvit_run)
    assert len(shapes) == 5 and set(shapes["images"]) == {100} and set(shapes["dimensions"]) == {16}
