"""The one table artifact (histokit.tables): written once as <id>.json, the .md and .csv rendered from it, every
cell of every rendering (paper tables, cross-paper tables, the report, the notebooks) through one formatter."""
import json
import re

import numpy as np
import pandas as pd
import pytest

from histokit.crosspaper.tables import write_table_files
from histokit.papers import get_recipe
from histokit.report import build_report
from histokit.results import build_table, write_table
from histokit.stages import display
from histokit.tables import (SCHEMA, TableArtifactError, document_frame, format_cell, read_table_artifact,
                             render_csv, render_markdown, table_document, write_table_artifact)

# (value, how every table prints it): missing, NaN, an integer count, a float from 1 up, below 1, a p-value,
# text, a CI string
CELLS = [(None, "—"), (float("nan"), "—"), (np.int64(80), "80"), (26.479365, "26.48"), (0.4123456, "0.412"),
         (9.759e-05, "9.759e-05"), ("not run", "not run"), ("[20.12, 31.99]", "[20.12, 31.99]")]


def _esvit_table(tmp_path):
    spec = get_recipe("esvit", "smoke").table("table1")
    records = pd.DataFrame([
        {"table": "table1", "model": "EsViT + k-NN", "dataset": "CRC", "metric": "mAP@10", "value": 26.479365,
         "ci_low": 20.123456, "ci_high": 31.987654}])
    table = build_table(spec, records)
    paths = write_table(spec, table, tmp_path, profile="smoke", notes=["a run note"], paper_title="EsViT paper",
                        provenance={"records_sha256": "ab" * 32})
    return spec, table, paths


def test_round_trip_write_read_render_is_what_write_table_wrote(tmp_path):
    spec, table, paths = _esvit_table(tmp_path)
    assert set(paths) == {"json", "csv", "md"} and all(p.is_file() for p in paths.values())
    doc = read_table_artifact(paths["json"])
    assert doc["schema"] == SCHEMA and doc["spec"]["id"] == "table1" and doc["spec"]["keys"] == list(spec.keys)
    assert doc["profile"] == "smoke" and doc["paper_title"] == "EsViT paper"
    assert doc["provenance"] == {"records_sha256": "ab" * 32} and "a run note" in doc["footnotes"]
    assert render_markdown(doc) == paths["md"].read_text(encoding="utf-8")
    assert render_csv(doc) == paths["csv"].read_text(encoding="utf-8")
    # the .csv is the frame's own CSV: machine-readable values, not formatted text
    assert paths["csv"].read_text(encoding="utf-8") == table.to_csv(index=False)
    back = document_frame(doc)
    assert list(back.columns) == list(table.columns) and back["mAP@10"].tolist()[0] == "not run"


@pytest.mark.parametrize("text, match", [
    ("{not json", "invalid JSON"),
    ('{"id": "t1", "columns": [], "rows": []}', "schema None"),
    (json.dumps({"schema": SCHEMA, "id": "t1", "title": "t", "profile": "smoke", "columns": ["a"],
                 "rows": [[1, 2]], "footnotes": []}), "row 0 does not have the 1 cells"),
    (json.dumps({"schema": SCHEMA, "id": "t1", "title": "t", "profile": "smoke", "columns": ["a"], "rows": []}),
     "field 'footnotes' missing"),
])
def test_a_malformed_or_old_artifact_is_refused_naming_the_file(tmp_path, text, match):
    path = tmp_path / "t1.json"
    path.write_text(text)
    with pytest.raises(TableArtifactError, match=match) as err:
        read_table_artifact(path)
    assert str(path) in str(err.value)
    with pytest.raises(TableArtifactError, match="not found"):
        read_table_artifact(tmp_path / "missing.json")


def test_format_cell():
    assert [format_cell(v) for v, _ in CELLS] == [want for _, want in CELLS]
    assert format_cell(float("inf")) == format_cell(pd.NA) == "—" and format_cell(True) == "True"


def test_one_formatter_in_paper_tables_cross_paper_tables_the_report_and_the_notebook(tmp_path, monkeypatch):
    values = [v for v, _ in CELLS]
    frame = pd.DataFrame({"method": [f"m{i}" for i in range(len(values))], "value": pd.Series(values, dtype=object)})
    want = [w for _, w in CELLS]

    def md_cells(text):  # the "value" column of a pipe table
        rows = [line for line in text.splitlines() if re.match(r"\| m\d", line)]
        return [line.strip("|").split(" | ")[1].strip() for line in rows]

    # a paper's table (the same renderer write_table uses) and a cross-paper table
    paper_doc = table_document(frame, id="tableX", title="X", profile="full", paper_title="Paper")
    assert md_cells(write_table_artifact(paper_doc, tmp_path / "paper")["md"].read_text()) == want
    root = tmp_path / "results"
    cross = write_table_files(root / "benchmark" / "full", "bench", "Common", frame, profile="full")
    assert md_cells(cross["md"].read_text()) == want
    # the report reads that artifact (never its .md) and prints the same cells, in Markdown and HTML
    cross["md"].write_text("# a title the report must not read\n")
    md, html = build_report(root, profile="full")
    assert md_cells(md.split("#### Common", 1)[1]) == want and "a title the report must not read" not in md
    table = html.split('data-table="bench"', 1)[1].split("</table>", 1)[0]
    cells = re.findall(r"<tr><td>m\d+</td><td>(.*?)</td></tr>", table)
    assert cells == want
    # the notebook's display of the same frame
    shown = []
    monkeypatch.setattr(display, "_ipython_display", lambda: shown.append)
    display.show_tables({"t": frame})
    assert re.findall(r"<td[^>]*>m\d+</td><td[^>]*>(.*?)</td>", shown[0].data) == want


def test_the_report_reads_the_json_and_says_which_old_tables_to_regenerate(tmp_path):
    root = tmp_path / "results"
    folder = root / "esvit" / "smoke"
    _, _, paths = _esvit_table(folder)
    md, html = build_report(root, profile="smoke")
    assert "EsViT + k-NN" in md and "26.48" in md and "a run note" in md and "To be regenerated" not in md
    # a table from before the artifact: a .csv and .md, no .json
    paths["json"].unlink()
    md, html = build_report(root, profile="smoke")
    section = md.split("Table I", 1)[1]
    assert "**To be regenerated.** esvit/smoke/table1.csv was written by an older histokit" in section
    assert "`histokit reproduce esvit --profile smoke`" in section and "26.48" not in md
    assert "To be regenerated." in html and "26.48" not in html
    # the same for a cross-paper table
    bench = root / "benchmark" / "smoke"
    bench.mkdir(parents=True)
    (bench / "benchmark.csv").write_text("method,x\nm,1\n")
    (bench / "benchmark.md").write_text("# Common benchmark\n")
    md, _ = build_report(root, profile="smoke")
    assert "`histokit benchmark --profile smoke`" in md
