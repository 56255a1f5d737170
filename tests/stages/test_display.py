"""Notebook tables: the .md's banner, cell formatter and footnotes, in HTML (histokit.stages.display.show_tables)."""
import html
import re

import pandas as pd

from histokit.papers import get_recipe
from histokit.results import NOT_RUN, build_table, write_table
from histokit.tables import PROFILE_BANNERS
from histokit.stages import display


def _written_table(tmp_path, profile="smoke"):
    spec = get_recipe("esvit", "smoke").table("table1")
    records = pd.DataFrame([
        {"table": "table1", "model": "EsViT + k-NN", "dataset": "CRC", "metric": "mAP@10",
         "value": 26.479365, "ci_low": 20.123456, "ci_high": 31.987654},
        {"table": "table1", "model": "EsViT + k-NN", "dataset": "CRC", "metric": "nDCG@10", "value": 0.4123456},
    ])
    table = build_table(spec, records)
    md = write_table(spec, table, tmp_path, profile=profile, notes=["a run note"], paper_title="EsViT paper")["md"]
    return spec, table, md


def _md_rows(md_text):
    rows = [line for line in md_text.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in rows[1:]]  # rows[0]: the header


def _shown(monkeypatch, tables):
    shown = []
    monkeypatch.setattr(display, "_ipython_display", lambda: shown.append)
    display.show_tables(tables)
    return [obj.data for obj in shown]


def test_show_tables_renders_the_md_cells_banner_and_footnotes_as_html(tmp_path, monkeypatch):
    spec, table, md = _written_table(tmp_path)
    [out] = _shown(monkeypatch, {spec.id: table})
    text = md.read_text()
    headline, sentence = PROFILE_BANNERS["smoke"]
    assert f"> **{headline}** {sentence}" in text, "the .md carries the same banner sentence"
    assert html.escape(headline) in out and html.escape(sentence) in out
    assert out.index(html.escape(headline)) < out.index("<table"), "the banner heads the table"
    assert "26.48" in out and "[20.12, 31.99]" in out and "0.412" in out
    assert "26.479365" not in out and "0.4123456" not in out
    assert f">{NOT_RUN}</td>" in out
    assert not re.search(r"\bnan\b", out, re.IGNORECASE) and not re.search(r"\bNone\b", out)
    cells = [html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", out)]
    assert cells == [c for row in _md_rows(text) for c in row], "every cell exactly as the .md prints it"
    assert "a run note" in out and out.index("a run note") > out.index("</table>"), "footnotes below the table"
    assert "<details>" in out, "the long protocol footnotes are collapsed"


def test_rehearsal_and_full_profiles(tmp_path, monkeypatch):
    spec, table, _ = _written_table(tmp_path / "r", profile="rehearsal")
    [out] = _shown(monkeypatch, {spec.id: table})
    assert html.escape(PROFILE_BANNERS["rehearsal"][1]) in out
    spec, table, _ = _written_table(tmp_path / "f", profile="full")
    [out] = _shown(monkeypatch, {spec.id: table})
    assert "not a reproduction" not in out and "26.48" in out


def test_outside_ipython_show_tables_prints_the_md(tmp_path, monkeypatch, capsys):
    spec, table, md = _written_table(tmp_path)
    monkeypatch.setattr(display, "_ipython_display", lambda: None)
    display.show_tables({spec.id: table})
    assert capsys.readouterr().out == md.read_text() + "\n"


def test_a_frame_without_write_table_metadata_still_uses_the_formatter(monkeypatch):
    frame = pd.DataFrame({"model": ["a", "b"], "acc": [26.479365, float("nan")], "note": [NOT_RUN, "x"]})
    [out] = _shown(monkeypatch, {"t": frame})
    assert "<h4>t</h4>" in out and "26.48" in out and "—" in out and "nan" not in out.lower()
