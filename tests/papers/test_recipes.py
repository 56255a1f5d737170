"""Paper recipes: every table is the paper's layout, every evaluation column lands in a table, smoke uses only
the bundled tiles, and the knobs that tables vary (CypherViT [cls] tokens x local views) reach the training runs."""
import pandas as pd
import pytest

from histokit.papers import get_recipe, list_papers
from histokit.results import PAPER_TABLES_DIR, NOT_REPRODUCIBLE, build_table

PAIRS = [(p, prof) for p in list_papers() for prof in ("smoke", "full")]


def test_the_four_papers_are_registered():
    assert set(list_papers()) == {"esvit", "chen2022", "cyphervit", "lgffem"}


@pytest.mark.parametrize("paper,profile", PAIRS)
def test_tables_match_the_transcribed_paper_csv(paper, profile):
    recipe = get_recipe(paper, profile)
    for table in recipe.tables:
        if not table.paper_csv:
            continue
        csv = pd.read_csv(PAPER_TABLES_DIR / table.paper_csv)
        missing = [c for c in table.keys + table.metrics if c not in csv.columns and c not in table.extra_metrics]
        assert not missing, f"{paper}/{table.id}: {missing} not in {table.paper_csv}"
        # kit-only columns are declared as such: among the metrics, and truly absent from the paper's table
        assert set(table.extra_metrics) <= set(table.metrics)
        assert not set(table.extra_metrics) & set(csv.columns), (paper, table.id)


@pytest.mark.parametrize("paper,profile", PAIRS)
def test_every_evaluation_column_is_a_table_metric(paper, profile):
    recipe = get_recipe(paper, profile)
    for spec in recipe.evaluations + recipe.ablations:
        metrics = set(recipe.table(spec.table).metrics)
        for dataset, columns in getattr(spec, "columns", {}).items():
            assert dataset in spec.datasets
            assert set(columns.values()) <= metrics, (paper, spec.table, set(columns.values()) - metrics)


@pytest.mark.parametrize("paper", list_papers())
def test_smoke_profiles_read_only_the_bundled_tiles(paper):
    recipe = get_recipe(paper, "smoke")
    assert {d.dataset for d in recipe.datasets} == {"kather2016_tiny"}
    assert any("not a reproduction" in n for n in recipe.notes)


@pytest.mark.parametrize("profile, cypher", [("smoke", "cyphervit_smoke"), ("full", "cyphervit_small")])
def test_cyphervit_table4_grid_reaches_the_training_runs(profile, cypher):
    recipe = get_recipe("cyphervit", profile)
    grid = recipe.ablations[0]
    rows = grid.rows
    seen = set()
    for model in grid.models:
        spec = recipe.model(model)
        run = recipe.train_spec(spec.weights.split(":", 1)[1])
        assert run.method == "dino" and run.encoder == cypher
        assert run.encoder_kwargs["num_final_cls"] == spec.encoder_kwargs["num_final_cls"] == int(rows[model]["num_cls"])
        assert run.n_local == int(rows[model]["num_local_views"])
        seen.add((rows[model]["num_cls"], rows[model]["num_local_views"]))
    paper = pd.read_csv(PAPER_TABLES_DIR / "ye2024_cyphervit_table4.csv", dtype=str)
    assert seen == set(zip(paper.num_cls, paper.num_local_views))


def test_cyphervit_table3_compares_each_framework_across_backbones():
    spec = get_recipe("cyphervit", "full").evaluations[2]
    assert spec.kind == "resplit_knn" and spec.n_splits == 5
    for vanilla, cypher in spec.compare:
        assert spec.rows[vanilla]["backbone"] == "VanillaViT"
        assert spec.rows[cypher]["backbone"] == "CypherViT"
        assert spec.rows[vanilla]["framework"] == spec.rows[cypher]["framework"]


def test_chen2022_dino_uses_half_normalisation_and_official_weights_first():
    recipe = get_recipe("chen2022", "full")
    dino = recipe.model("DINO ViT-S/16 (TCGA)")
    assert dino.mean == dino.std == (0.5, 0.5, 0.5)
    assert dino.weights == "checkpoint:chen2022_dino_vits16_tcga_brca"
    assert not recipe.pretrain, "the full profile never trains a stand-in for the TCGA weights"
    smoke = get_recipe("chen2022", "smoke").model("DINO ViT-S/16 (TCGA)")
    assert smoke.weights.startswith("checkpoint:chen2022_dino_vits16_tcga_brca|train:")


def test_lgffem_strategies_chain_and_ma_ms_loss_is_marked_not_reproducible():
    full = get_recipe("lgffem", "full")
    inits = {t.name: t.init for t in full.pretrain}
    assert inits == {"lgffem_A": "timm", "lgffem_B": "train:lgffem_A", "lgffem_C": "train:lgffem_B"}
    assert {t.epochs for t in full.pretrain} == {60, 300}
    assert all(t.method_cfg["variant"] == "paper" for t in full.pretrain)
    table2 = full.table("table2")
    built = build_table(table2, pd.DataFrame(columns=["table", "method", "metric", "value"]))
    row = built[built.method == "MA + MS-loss"].iloc[0]
    assert row["eta_p"] == NOT_REPRODUCIBLE and row["eta_p (paper)"] == 97.89
    protocols = {s.protocol for s in full.evaluations}
    assert protocols == {"standard", "public_code"}


@pytest.mark.parametrize("paper, full_size, smoke_variant", [
    ("esvit", "swin_tiny_patch4_window7_224", "swin_smoke"), ("esvit", "resnet50", "resnet26"),
    ("cyphervit", "vit_small_patch16_224", "vit_smoke"), ("cyphervit", "cyphervit_small", "cyphervit_smoke")])
def test_smoke_trains_a_named_smaller_variant_of_the_full_profiles_model(paper, full_size, smoke_variant):
    # issue 17: the smoke profile may shrink width and depth through registered variants of the same family, and
    # its tables must say which; the full profile keeps the paper's model.
    from histokit.models.backbones import create_encoder

    smoke, full = get_recipe(paper, "smoke"), get_recipe(paper, "full")
    assert full_size in {t.encoder for t in full.pretrain + full.finetune}
    assert smoke_variant not in {t.encoder for t in full.pretrain + full.finetune}
    assert smoke_variant in {t.encoder for t in smoke.pretrain + smoke.finetune}
    assert full_size not in {t.encoder for t in smoke.pretrain + smoke.finetune}
    assert any(smoke_variant in note for note in smoke.notes)
    small, big = create_encoder(smoke_variant, img_size=64), create_encoder(full_size, img_size=64)
    assert type(small.model if hasattr(small, "model") else small) is type(big.model if hasattr(big, "model") else big)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in big.parameters())


def test_chen2022_full_recipe_follows_the_reference_code():
    # issue 16: resnet50_trunc baseline, BreastPathQ at 512 px, raw features fitted on every training tile, the
    # reference's metrics in the compared columns, every paper cell transcribed with its source, a protocol card
    recipe = get_recipe("chen2022", "full")
    assert recipe.model("ImageNet ResNet-50").encoder == "resnet50_trunc"
    assert recipe.dataset("BreastPathQ").image_size == 512 and recipe.dataset("CRC-NORM").image_size is None
    assert recipe.feature_l2_normalize is False
    probes = recipe.evaluations[0]
    assert probes.fit_on == "train+val"
    assert probes.columns["BreastPathQ"] == {"mse_unclipped": "breastpathq_mse", "tau_bpq": "breastpathq_tau",
                                                "mse": "breastpathq_mse_clipped", "tau_unclipped": "breastpathq_tau_b"}
    table = recipe.table("table1")
    paper = pd.read_csv(PAPER_TABLES_DIR / table.paper_csv)
    compared = ["crc_nonorm_knn_auc", "crc_norm_knn_auc", "breastpathq_mse", "breastpathq_tau"]
    assert paper[compared].notna().all().all() and paper["source"].str.contains("patch_evaluation.ipynb").all()
    assert [p.aspect for p in table.protocol] == ["data + split", "preprocessing / normalisation", "input size",
                                                  "baselines' weights", "classifier / metric variant",
                                                  "evaluation protocol"]


@pytest.mark.parametrize("bad, message", [
    (dict(kind="label_fraction", fractions={"0": "0%"}), r"fraction '0' must be a number in \(0, 1\]"),
    (dict(kind="label_fraction", fractions={"1.5": "150%"}), r"fraction '1.5' must be a number in \(0, 1\]"),
    (dict(kind="probes", columns={"CRC-NORM": {"knn_top5": "x"}}), r"unknown measures \['knn_top5'\]"),
    (dict(kind="probes", fit_on="val"), r"fit_on must be one of"),
    (dict(kind="resplit", test_fraction=1.0), r"test_fraction must be 'original' or in \(0, 1\)"),
    (dict(kind="kimia", protocol="ffnir"), r"protocol must be one of"),
    (dict(kind="retrieval", gallery="all"), r"gallery must be one of"),
])
def test_a_protocol_parameter_the_kit_cannot_run_fails_in_validate(bad, message):
    """Typed protocol fields are checked when the recipe is built, naming the paper, the protocol and the table."""
    from dataclasses import replace

    from histokit.evaluation.protocols import ClassificationProbes, KimiaEta, LabelFraction, ResplitKnn, Retrieval

    recipe = get_recipe("cyphervit", "smoke")
    models, sets = ("DINO",), ("CRC-NORM",)
    kind = bad.pop("kind")
    protocol = {"label_fraction": lambda: LabelFraction("table2", models, sets, **bad),
                "probes": lambda: ClassificationProbes("table1", models, sets, **{"columns": {"CRC-NORM": {}}, **bad}),
                "resplit": lambda: ResplitKnn("table3", models, sets, columns={"CRC-NORM": {}}, **bad),
                "kimia": lambda: KimiaEta("table1", models, sets, **bad),
                "retrieval": lambda: Retrieval("table1", models, sets, **bad)}[kind]()
    with pytest.raises(ValueError, match=rf"cyphervit: {protocol.kind} evaluation of table '{protocol.table}'"):
        replace(recipe, evaluations=(protocol,)).validate()
    with pytest.raises(ValueError, match=message):
        replace(recipe, evaluations=(protocol,)).validate()


def test_a_figure_naming_an_unknown_model_fails_in_validate():
    from dataclasses import replace

    from histokit.viz.figures import UmapPanels

    recipe = get_recipe("cyphervit", "smoke")
    with pytest.raises(ValueError, match=r"figure 'fig1_umap' \(umap_panels\) names unknown model 'DINOv2'"):
        replace(recipe, figures=(UmapPanels("fig1_umap", models=("DINO", "DINOv2"), dataset="CRC-NORM"),)).validate()


def test_derive_overrides_fields_then_renames_encoders_but_hub_rows_and_maps_every_run():
    # the smoke profile is derive(full, ...): explicit fields first, then the encoder renames and the run / table maps
    from dataclasses import replace

    from histokit.papers.recipe import DatasetSpec, derive
    full = get_recipe("esvit", "full")
    tiles = (DatasetSpec("CRC", "kather2016_tiny"),)
    out = derive(full, "smoke", encoders={"resnet50": "resnet26"}, datasets=tiles,
                 pretrain=(replace(full.train_spec("esvit_pretrain"), dataset="CRC"),),
                 finetune=tuple(t for t in full.finetune if t.dataset == "CRC"),
                 train=lambda t: replace(t, epochs=2), table=lambda t: replace(t, footnotes=()))
    assert (out.profile, out.datasets, full.profile) == ("smoke", tiles, "full")
    assert {t.epochs for t in out.pretrain + out.finetune} == {2} and out.pretrain[0].dataset == "CRC"
    assert out.train_spec("simclr_CRC").encoder == "resnet26"
    assert out.model("SimCLR + k-NN").encoder == "resnet26"      # a trained row: the smaller variant
    assert out.model("ResNet50 + k-NN").encoder == "resnet50"    # a hub-weight row: hub weights fit full size only
    assert all(t.footnotes == () for t in out.tables) and [t.footnotes != () for t in full.tables] == [True] * 3
