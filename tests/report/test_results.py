"""Tables: the paper's layout and numbers beside the measured ones, never in their place."""
import pandas as pd
import pytest

from histokit.papers import get_recipe, list_papers
from histokit.results import NOT_RUN, build_table, paper_table, write_table


def _spec():
    return get_recipe("esvit", "smoke").table("table1")


def test_measured_value_paper_value_and_difference():
    records = pd.DataFrame([{"table": "table1", "model": "EsViT + k-NN", "dataset": "CRC", "metric": "mAP@10",
                             "value": 70.0, "ci_low": 60.0, "ci_high": 80.0}])
    table = build_table(_spec(), records)
    row = table[(table.model == "EsViT + k-NN") & (table.dataset == "CRC")].iloc[0]
    assert row["mAP@10"] == 70.0 and row["mAP@10 (paper)"] == 74.9
    assert abs(row["mAP@10 Δ"] - (70.0 - 74.9)) < 1e-9
    assert row["mAP@10 95% CI"] == "[60.00, 80.00]"


def test_unmeasured_rows_say_not_run_and_keep_paper_values_apart():
    table = build_table(_spec(), pd.DataFrame(columns=["table", "model", "dataset", "metric", "value"]))
    assert len(table) == len(paper_table(_spec())) == 12
    assert (table["mAP@10"] == NOT_RUN).all()
    assert table["mAP@10 Δ"].isna().all()
    assert list(table.model[:3]) == ["ResNet50 + k-NN"] * 3, "paper row order is kept"


def test_markdown_has_smoke_banner_and_footnotes(tmp_path):
    spec = _spec()
    table = build_table(spec, pd.DataFrame(columns=["table", "model", "dataset", "metric", "value"]))
    text = write_table(spec, table, tmp_path, profile="smoke", notes=["a run note"])["md"].read_text()
    assert "not a reproduction" in text and "a run note" in text and "| ResNet50 + k-NN |" in text


def test_protocol_card_is_written_as_numbered_footnotes_after_the_tables_own(tmp_path):
    import dataclasses

    from histokit.papers.recipe import ProtocolPoint

    card = (ProtocolPoint("split", "80/10/10 random", "80/10/10 random"),
            ProtocolPoint("epochs", "not stated", "100", same=False, variant="--param epochs=N"))
    spec = dataclasses.replace(_spec(), protocol=card)
    table = build_table(spec, pd.DataFrame(columns=["table", "model", "dataset", "metric", "value"]))
    lines = write_table(spec, table, tmp_path, profile="full")["md"].read_text().splitlines()
    n = len(spec.footnotes)
    assert lines[lines.index(f"{n}. {spec.footnotes[-1]}") + 1] == \
        f"{n + 1}. Protocol — split (as the paper): paper: 80/10/10 random; kit: 80/10/10 random."
    assert f"{n + 2}. Protocol — epochs (differs): paper: not stated; kit: 100; variant: --param epochs=N." in lines


def test_every_recipe_builds_for_every_profile():
    for paper in list_papers():
        for profile in ("smoke", "full"):
            recipe = get_recipe(paper, profile)
            assert recipe.tables and recipe.models
            for table in recipe.tables:
                paper_table(table)  # the paper CSV exists and has the key columns



def test_small_values_such_as_p_values_keep_their_magnitude():
    from histokit.tables import format_cell

    assert format_cell(9.759e-05) == "9.759e-05"
    assert format_cell(0.021) == "0.021" and format_cell(93.37) == "93.37" and format_cell(0.0) == "0.000"


def test_a_cell_the_paper_lacks_too_is_empty_not_not_run():
    """Table 3's MAE row has no CypherViT arm, so neither the paper nor the kit has its p-values: '—', never
    'not run'; the cells the paper has stay 'not run' until measured."""
    spec = get_recipe("cyphervit", "full").table("table3")
    table = build_table(spec, pd.DataFrame(columns=["table", "framework", "backbone", "metric", "value"]))
    mae = table[(table.framework == "MAE") & (table.backbone == "VanillaViT")].iloc[0]
    assert pd.isna(mae["pvalue_crc"]) and pd.isna(mae["pvalue_crc (paper)"])
    assert mae["crc_norm_acc_mean"] == NOT_RUN


def test_a_timing_gets_a_delta_only_on_the_papers_device_class():
    """Habijan et al. name one device (an NVIDIA A100): a time measured elsewhere is shown beside the paper's, never
    subtracted from it; the accuracy columns keep their Δ whatever the device."""
    spec = get_recipe("esvit", "full").table("table1")
    assert spec.paper_device == "NVIDIA A100"

    def table(device):
        rows = [{"metric": "mAP@10", "value": 70.0},
                {"metric": "feature_extraction_ms", "value": 3.0, "device": device},
                {"metric": "retrieval_latency_ms", "value": 4.0, "device": device},
                {"metric": "feature_extraction_amortized_ms", "value": 0.5, "device": device}]
        records = pd.DataFrame([dict(r, table="table1", model="EsViT + k-NN", dataset="CRC") for r in rows])
        built = build_table(spec, records)
        return built[(built.model == "EsViT + k-NN") & (built.dataset == "CRC")].iloc[0]

    for device in ("NVIDIA H200", "cpu"):
        row = table(device)
        assert row["feature_extraction_ms"] == 3.0 and row["feature_extraction_ms (paper)"] == 7.1
        assert pd.isna(row["feature_extraction_ms Δ"]) and pd.isna(row["retrieval_latency_ms Δ"]), device
        assert row["mAP@10 Δ"] == pytest.approx(70.0 - 74.9)
        assert row["feature_extraction_amortized_ms"] == 0.5  # kit-only column: no paper value, no Δ
        assert "feature_extraction_amortized_ms (paper)" not in row.index
    row = table("NVIDIA A100-SXM4-80GB")
    assert row["feature_extraction_ms Δ"] == pytest.approx(3.0 - 7.1)
    assert row["retrieval_latency_ms Δ"] == pytest.approx(4.0 - 8.7)
    from histokit.results import same_device

    assert not same_device("NVIDIA A10", "NVIDIA A100") and not same_device("NVIDIA A100", "")


def test_row_label_and_device_do_not_split_a_cell_when_records_are_merged():
    from histokit.results import merge_records

    key = {"table": "table2", "model": "m", "pretraining": "p", "metric": "mAP@10"}
    old = pd.DataFrame([dict(key, value=1.0, row_label="m (kit's own)", device="cpu")])
    new = pd.DataFrame([dict(key, value=2.0, row_label="", device="NVIDIA A100")])
    merged = merge_records(old, new)
    assert len(merged) == 1 and merged["value"].iloc[0] == 2.0
