"""The report grades a difference from the paper only for a real (full-profile) run: a smoke or rehearsal Δ, however
small, is shown without colour or marker and never counted in the summary (issue 16)."""
from __future__ import annotations

import re

import pandas as pd

from histokit.report.collect import collect
from histokit.report.html import render_html
from histokit.report.markdown import render_markdown
from histokit.tables import table_document, write_table_artifact

ROW = {"model": "ResNet50 + k-NN", "dataset": "CRC", "mAP@10": 59.4, "mAP@10 (paper)": 58.4, "mAP@10 Δ": 1.0}


def _tree(root):
    for profile in ("smoke", "rehearsal", "full"):  # the same small Δ (1 point) in every profile
        write_table_artifact(table_document(pd.DataFrame([ROW]), id="table1", title="Table I", profile=profile),
                             root / "esvit" / profile)
    bench = pd.DataFrame([{"method": "m", "acc": 71.0, "acc (paper)": 70.5, "acc Δ": 0.5}])
    write_table_artifact(table_document(bench, id="b", title="B", profile="smoke"), root / "benchmark" / "smoke")
    return collect(root)


def _summary_row(md: str, profile: str) -> str:
    return next(line for line in md.splitlines() if line.startswith("| [Habijan") and f"`{profile}`" in line)


def test_small_smoke_and_rehearsal_deltas_get_no_agreement_colour_and_are_not_counted(tmp_path):
    data = _tree(tmp_path)
    md, html = render_markdown(data), render_html(data)
    # summary: the full run counts its one close Δ; smoke and rehearsal count nothing, and say why
    assert _summary_row(md, "full").endswith("| 1 / 0 / 0 |")
    for profile in ("smoke", "rehearsal"):
        row = _summary_row(md, profile)
        assert row.endswith(f"| not graded ({profile}) |") and "0 / 0 / 0" not in row
    summary = html.split('<h2 id="summary">', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr>.*?</tr>", summary)
    esvit = {p: next(r for r in rows if "Habijan" in r and f"<code>{p}</code>" in r) for p in ("smoke", "full")}
    assert '<span class="swatch close">1</span>' in esvit["full"]
    assert "swatch" not in esvit["smoke"] and "not graded (smoke)" in esvit["smoke"]
    # cells: the full run's Δ is green, the smoke run's (and a smoke benchmark table's) carries no grade
    sections = {m.group(1): m.group(2) for m in re.finditer(r'<section id="([^"]+)"(.*?)</section>', html, re.S)}
    assert 'data-grade="close"' in sections["esvit-full"]
    for anchor in ("esvit-smoke", "esvit-rehearsal", "benchmark-smoke"):
        assert 'data-grade="close"' not in sections[anchor] and 'data-grade="none"' in sections[anchor], anchor
    smoke_md = md.split('<a id="esvit-smoke"></a>', 1)[1].split('<a id="', 1)[0]
    full_md = md.split('<a id="esvit-full"></a>', 1)[1].split('<a id="', 1)[0]
    assert "| 1.00 🟢 |" in full_md and "🟢" not in smoke_md.split("### ", 1)[1]
