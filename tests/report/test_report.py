"""``histokit report``: built from a copy of the real esvit smoke results plus planted cases (a paper not run, a
full-profile run with known differences, a paper the kit no longer lists, benchmark and leakage folders) and from
the repository's own results; the HTML is parsed (every paper present, every image a data URI, every link resolves)
and rendered by Chromium where one is installed."""
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import histokit.papers as papers
from histokit import paths
from histokit.cli import main
from histokit.data.datasets import load_dataset
from histokit.evaluation.leakage import leakage_summary, near_duplicates, pixel_descriptors
from histokit.report import build_report, write_report
from histokit.crosspaper.tables import write_table_files
from histokit.report.cells import delta_grade
from histokit.results import build_table, read_records, write_table
from histokit.tables import format_cell, read_table_artifact, table_document, write_table_artifact
from histokit.viz.pairs import duplicate_pairs_figure

ESVIT_SMOKE = paths.RESULTS_DIR / "esvit" / "smoke"
GRADES = {"close", "near", "far", "none"}


class ReportParser(HTMLParser):
    """Everything the checks need: ids, image sources, links, external resources, paper sections and the cells
    of every table (class, text) row by row, keyed by the section and the table id."""

    def __init__(self):
        super().__init__()
        self.ids, self.img_src, self.hrefs, self.external = set(), [], [], []
        self.sections, self.tables = {}, {}
        self._section = self._table = None
        self._row = self._cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "section":
            self._section = a.get("id")
            if "data-paper" in a:
                self.sections[a["id"]] = (a["data-paper"], a["data-profile"], a["data-status"])
        elif tag == "img":
            self.img_src.append(a.get("src", ""))
        elif tag == "a" and "href" in a:
            self.hrefs.append(a["href"])
        elif tag in ("script", "link", "iframe", "object", "embed", "source", "video", "audio"):
            self.external.append((tag, a))
        elif tag == "table" and "data-table" in a:
            self._table = (self._section, a["data-table"])
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = [a.get("class", ""), ""]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row.append(tuple(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row:
                self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "section":
            self._section = None


def check_html(html: str, results_dir: Path) -> ReportParser:
    parser = ReportParser()
    parser.feed(html)
    assert parser.img_src, "the report embeds no figure"
    for src in parser.img_src:
        assert src.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")), src[:60]
    assert not parser.external, f"external resources: {parser.external}"
    for href in parser.hrefs:
        if href.startswith("#"):
            assert href[1:] in parser.ids, f"anchor {href} has no target"
        else:
            assert "://" not in href and not href.startswith("/"), f"absolute link {href}"
            assert (results_dir / unquote(href)).is_file(), f"link {href} does not resolve under {results_dir}"
    for paper in papers.list_papers():
        assert any(p == paper for p, _, _ in parser.sections.values()), f"paper {paper} missing"
    return parser


def _section_html(html: str, anchor: str) -> str:
    start = html.index(f'<section id="{anchor}"')
    return html[start:html.index("</section>", start)]


def publish_tables(folder: Path, paper: str, profile: str) -> None:
    """The table artifacts of a copied publication, rebuilt from its own records.csv and notes.json as the evaluate
    stage writes them (the committed results may predate the .json artifact)."""
    import json

    recipe = papers.get_recipe(paper, profile)
    records = read_records(folder / "records.csv")
    notes = json.loads((folder / "notes.json").read_text()) if (folder / "notes.json").is_file() else {}
    for spec in recipe.tables:
        if spec.id in set(records["table"]):
            write_table(spec, build_table(spec, records), folder, profile=folder.name, paper_title=recipe.title,
                        notes=notes.get("all", []) + notes.get(spec.id, []))


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A results tree: esvit smoke as run; esvit full with planted differences; 'ghost' (a listed paper that never
    ran); 'retired' (on disk, no longer listed); a common benchmark and a leakage audit for smoke."""
    root = tmp_path / "results"
    shutil.copytree(ESVIT_SMOKE, root / "esvit" / "smoke")
    publish_tables(root / "esvit" / "smoke", "esvit", "smoke")
    monkeypatch.setitem(papers._PAPERS, "ghost", "histokit.papers.esvit")

    full = root / "esvit" / "full"
    shutil.copytree(root / "esvit" / "smoke", full, ignore=shutil.ignore_patterns("*.png", "figures"))
    doc = read_table_artifact(full / "table1.json")
    doc["profile"] = "full"
    table = pd.DataFrame(doc["rows"], columns=doc["columns"], dtype=object)
    # the row's label says what its EsViT was trained on when the ImageNet weights were not used ("EsViT + k-NN
    # (init: ...)"), so it is found by the model's name
    row = table.model.str.startswith("EsViT + k-NN") & (table.dataset == "CRC")
    assert row.sum() == 1
    for metric, delta in (("mAP@10", 1.0), ("Precision@10", -3.0), ("nDCG@10", 10.0)):
        paper = float(table.loc[row, f"{metric} (paper)"].iloc[0])
        table.loc[row, metric] = paper + delta
        table.loc[row, f"{metric} Δ"] = delta
    write_table_artifact({**doc, "rows": table.values.tolist()}, full)

    retired = root / "retired" / "smoke"
    retired.mkdir(parents=True)
    for name in ("table2.json", "table2.csv", "table2.md"):
        shutil.copy(root / "esvit" / "smoke" / name, retired / name)

    bench = root / "benchmark" / "smoke"
    frame = pd.DataFrame({"model": ["EsViT + k-NN"], "dataset": ["CRC"], "mAP@10": [31.8]})
    write_table_artifact(table_document(frame, id="common", title="Common benchmark — all papers' models on one "
                                        "split", profile="smoke", footnotes=["one protocol"]), bench)
    shutil.copy(ESVIT_SMOKE / "figures" / "data_crc_class_counts.png", bench / "common.png")

    leak = root / "leakage" / "smoke"
    tiles = [np.asarray(Image.open(p).convert("RGB")) for p in load_dataset("kather2016_tiny").paths[:12]]
    train, test = tiles[:8], tiles[8:] + [tiles[2]]
    pairs = near_duplicates(pixel_descriptors(train), pixel_descriptors(test), 0.95)
    leak.mkdir(parents=True)
    write_table_files(leak, "leakage", "Leakage audit", pd.DataFrame([leakage_summary(
        pairs, len(test), 0.95, n_train=len(train), dataset="CRC", split="random")]), profile="smoke")
    duplicate_pairs_figure(pairs, test, train, leak / "pairs_CRC_random.png", threshold=0.95)
    return root


def test_report_from_a_results_tree(tree):
    md_path, html_path = write_report(tree)
    assert (md_path, html_path) == (tree / "REPORT.md", tree / "report.html")
    html, md = html_path.read_text(encoding="utf-8"), md_path.read_text(encoding="utf-8")
    parser = check_html(html, tree)
    assert len(parser.img_src) == len(list(tree.rglob("*.png")))  # every figure, each once

    assert parser.sections["esvit-smoke"] == ("esvit", "smoke", "ran")
    assert parser.sections["esvit-full"] == ("esvit", "full", "ran")
    assert parser.sections["ghost-smoke"] == ("ghost", "smoke", "not-run")
    assert parser.sections["retired-smoke"][2] == "ran" and "retired-full" not in parser.sections

    # a paper not run says so and carries no table, so no paper value can stand in for a measured one
    ghost = _section_html(html, "ghost-smoke")
    assert "Not run yet" in ghost and "<table" not in ghost and "74.90" not in ghost
    assert "Table I — retrieval performance and efficiency" in ghost

    # every 'not run' cell of the CSV is a grey 'not run' cell, the CI column is shown
    smoke_rows = parser.tables[("esvit-smoke", "table1")]
    csv = pd.read_csv(tree / "esvit" / "smoke" / "table1.csv", dtype=str, keep_default_na=False)
    assert sum(c == ("notrun", "not run") for r in smoke_rows for c in r) == int((csv == "not run").sum().sum())
    interval = next(v for v in csv["mAP@10 95% CI"] if v.startswith("["))  # the committed run's own interval
    assert interval in _section_html(html, "esvit-smoke")

    # the smoke banner is on the smoke run only; a full run lifts the page's 'no full reproduction' alert
    assert "Smoke profile: not a reproduction" in _section_html(html, "esvit-smoke")
    assert "Smoke profile: not a reproduction" not in _section_html(html, "esvit-full")
    assert 'class="alert"' not in html

    # planted differences are graded by size: 1 point, 3 points, 10 points
    full_rows = parser.tables[("esvit-full", "table1")]
    esvit_crc = next(r for r in full_rows if r[0][1].startswith("EsViT + k-NN") and r[1][1] == "CRC")
    grades = [cls for cls, _ in esvit_crc if cls in GRADES]
    assert grades[:3] == ["close", "near", "far"]

    # the table of a paper the kit no longer lists is read from its own files
    assert "Table II — effect of self-supervised pretraining" in _section_html(html, "retired-smoke")

    assert "Common benchmark — all papers" in _section_html(html, "benchmark-smoke")
    leak = _section_html(html, "leakage-smoke")
    assert "fraction_test_with_duplicate" in leak and "data:image/png;base64," in leak
    assert "Not run yet" in _section_html(html, "leakage-full")

    # the Markdown says the same and links only files that exist
    assert "**Not run yet.** No results folder `ghost/smoke/`" in md and "Smoke profile: not a reproduction" in md
    assert "1.00 🟢" in md and "-3.00 🟠" in md and "10.00 🔴" in md
    for target in re.findall(r"\]\(([^)#][^)]*)\)", md):
        assert (tree / unquote(target)).is_file(), target


def test_smoke_only_tree_warns_that_nothing_is_reproduced(tmp_path):
    root = tmp_path / "results"
    shutil.copytree(ESVIT_SMOKE, root / "esvit" / "smoke", ignore=shutil.ignore_patterns("fig2.png", "data_*.png"))
    md, html = build_report(root)
    assert 'class="alert"' in html and "No paper has been reproduced at the full profile yet" in md
    with pytest.raises(ValueError, match="profile 'tiny'"):
        build_report(root, profile="tiny")
    with pytest.raises(FileNotFoundError, match="results directory not found"):
        build_report(tmp_path / "nowhere")


def test_report_on_the_repository_results():
    md, html = build_report(paths.RESULTS_DIR)
    parser = check_html(html, paths.RESULTS_DIR)
    assert parser.sections["esvit-smoke"][2] == "ran"
    assert "# histokit reproduction report" in md
    # the speed reports (histokit speed, gpucheck) are read from results/speed/, linked from their own section
    speed = md.split("\n## Speed\n", 1)[1]
    assert "(speed/cpu-amd-epyc.md)" in speed and "(speed/gpucheck-cpu.md)" in speed and "benchmarks/" not in speed


def test_cli_writes_the_report(tmp_path, capsys):
    root = tmp_path / "results"
    shutil.copytree(ESVIT_SMOKE, root / "esvit" / "smoke", ignore=shutil.ignore_patterns("fig2.png", "figures"))
    assert main(["report", "--results-dir", str(root), "--profile", "smoke"]) == 0
    assert (root / "report.html").is_file() and "report.html" in capsys.readouterr().out
    assert 'id="esvit-full"' not in (root / "report.html").read_text(encoding="utf-8")  # --profile filters
    assert main(["report", "--results-dir", str(tmp_path / "missing")]) == 1
    assert "results directory not found" in capsys.readouterr().err


def test_delta_grades_and_formatting():
    assert [delta_grade("mAP@10", d, 70.0) for d in (1.99, -2.0, 4.99, 5.0)] == ["close", "near", "near", "far"]
    assert [delta_grade("AUC", d, 0.94, unit=True) for d in (0.019, -0.03, 0.06)] == ["close", "near", "far"]
    assert [delta_grade("retrieval_latency_ms", d, 10.0) for d in (0.5, -3.0, 6.0)] == ["close", "near", "far"]
    assert delta_grade("mAP@10", "", 70.0) == delta_grade("mAP@10", 1.0, "") == "none"
    assert [format_cell(v) for v in (26.4793, 0.2741, 80, "not run", None, "[1.00, 2.00]")] == \
        ["26.48", "0.274", "80", "not run", "—", "[1.00, 2.00]"]


def _chromium():
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(_chromium() is None, reason="no Chromium on this machine (looked for chromium, "
                    "chromium-browser, google-chrome): the headless render check needs one")
def test_chromium_renders_the_report(tree, tmp_path):
    _, html_path = write_report(tree)
    png = tmp_path / "report.png"
    done = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1400,3000", f"--screenshot={png}", html_path.as_uri()],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and png.is_file(), f"{_chromium()} failed: {done.stderr[-2000:]}"
    shot = np.asarray(Image.open(png).convert("L"))
    assert shot.shape == (3000, 1400) and shot.std() > 10, "the page rendered blank"


def test_smoke_and_rehearsal_deltas_are_never_graded():
    """A Δ of a smoke or rehearsal run is shown but never graded as agreement with the paper."""
    from histokit.report.cells import row_grade
    from histokit.report.collect import PaperRun, Table

    row = {"mAP@10 Δ": 1.0, "mAP@10 (paper)": 70.0}
    table = Table("table1", "t", pd.DataFrame([row]), keys=["model"], metrics=["mAP@10"])
    assert row_grade(table, row, "mAP@10", False) == "close"
    table.graded = False
    assert row_grade(table, row, "mAP@10", False) == "none"
    for profile in ("smoke", "rehearsal"):
        assert PaperRun(paper="esvit", profile=profile, title="", citation="", folder="", ran=True).smoke


def test_a_large_figure_is_reencoded_once_and_then_read_from_the_cache(tmp_path):
    # The report re-encodes large figures (the slow part of writing it); the cache keeps them by content.
    import numpy as np
    from PIL import Image

    from histokit.report.embed import data_uri, figure_cache

    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1600, 1200, 3), dtype=np.uint8)).save(big)
    cache = tmp_path / "cache"
    with figure_cache(cache):
        first = data_uri(big)
    assert first.startswith("data:image/jpeg;base64,")  # noise does not fit as PNG: JPEG at <= MAX_SIDE
    (entry,) = cache.iterdir()
    entry.write_text("data:image/png;base64,CACHED")
    assert data_uri(big, cache_dir=cache) == "data:image/png;base64,CACHED"  # served from the cache
    assert data_uri(big) == first  # no cache outside the block: encoded again, same bytes
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 30), "white").save(small)
    data_uri(small, cache_dir=cache)
    assert len(list(cache.iterdir())) == 1  # a figure embedded byte for byte is not cached
