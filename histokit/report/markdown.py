"""``results/REPORT.md``: the report as Markdown, with figures and files linked relative to ``results/``.

Markdown cannot colour a cell, so a Δ carries a marker for its grade (:mod:`.cells`).
"""
from __future__ import annotations

from ..tables import PROFILE_BANNERS, format_cell, markdown_table, md_cell as _cell
from .cells import GRADE_LEGEND, not_graded_words, row_grade, summary_grades, unit_scales
from .collect import PaperRun, ReportData, Section, Table, unpublished_notebooks

MARKERS = {"close": "🟢", "near": "🟠", "far": "🔴", "none": ""}

def _link(text: str, target: str) -> str:
    return f"[{_cell(text)}]({target.replace(' ', '%20')})"


def table_markdown(table: Table) -> str:
    """The table through the tables' own renderer; a paper-layout Δ gets its grade marker."""
    frame = table.frame
    units = unit_scales(table) if table.metrics else {}
    deltas = {f"{m} Δ": m for m in table.metrics}

    def cell(row, c):
        if c in deltas:
            grade = row_grade(table, row, deltas[c], units[deltas[c]])
            return f"{format_cell(row[c])} {MARKERS[grade]}".strip()
        return row[c]

    return markdown_table(list(frame.columns), ([cell(row, c) for c in frame.columns] for _, row in frame.iterrows()))


def _table_block(table: Table, level: str = "###") -> list:
    out = [f"{level} {table.title}", ""]
    if table.stale:
        return out + [f"**To be regenerated.** {table.stale}", ""]
    if not table.written:
        return out + ["*Not run yet* — this table has no measured values; the paper's numbers are not copied "
                      "into it.", ""]
    out += [table_markdown(table), ""]
    if table.footnotes:
        out += [f"{i}. {_cell(n)}" for i, n in enumerate(table.footnotes, 1)] + [""]
    files = [_link(t, t) for t in (table.json, table.csv, table.md) if t]
    return out + ([f"Files: {', '.join(files)}", ""] if files else [])


def _figures(figures) -> list:
    out = []
    for fig in figures:
        out += [f"![{_cell(fig.caption)}]({fig.rel.replace(' ', '%20')})", f"*{_cell(fig.caption)}*", ""]
    return out


def _provenance(run: PaperRun) -> list:
    prov = run.provenance or {}
    out = ["### Provenance", ""]
    if run.run_json:
        out.append(f"- {_link('run.json', run.run_json)}: published {prov.get('published', '?')}")
    git = prov.get("git") or {}
    if git.get("commit"):
        out.append(f"- git commit `{git['commit'][:12]}`" + (" (uncommitted changes)" if git.get("dirty") else ""))
    device = prov.get("device") or {}
    if device:
        out.append(f"- device: {device.get('cuda_device') or device.get('processor', '?')} "
                   f"(requested `{device.get('requested', '?')}`, {device.get('platform', '?')})")
    params = prov.get("parameters") or {}
    if params:
        out.append("- parameters: " + ", ".join(f"`{k}={v}`" for k, v in sorted(params.items())))
    stages = prov.get("stages") or []
    if stages:
        total = sum(float(s.get("seconds", 0)) for s in stages)
        out.append(f"- stages: {len(stages)}, {total:.0f} s in all")
    linked = [nb for nb in run.notebooks if nb.link]
    if linked:
        out.append("- executed notebooks: " + ", ".join(_link(nb.name, nb.link) for nb in linked))
    for directory, nbs in unpublished_notebooks(run).items():
        missing = "" if all(nb.on_disk for nb in nbs) else " — not on this machine"
        out.append(f"- executed notebooks in the run directory `{directory}/` (not published with the results"
                   f"{missing}): " + ", ".join(f"`{nb.name}`" for nb in nbs))
    for path, what in run.files:
        if not path.endswith("run.json"):
            out.append(f"- {_link(path.rsplit('/', 1)[-1], path)}: {what}")
    return out + [""]


def _paper(run: PaperRun) -> list:
    out = [f'<a id="{run.anchor}"></a>', "", f"## {run.title} — profile `{run.profile}`", ""]
    if run.citation:
        out += [run.citation, ""]
    if not run.ran:
        out += [f"**Not run yet.** No results folder `{run.folder}/`; run "
                f"`histokit reproduce {run.paper} --profile {run.profile}`.", ""]
        if run.recipe_error:
            out += [f"Recipe: {run.recipe_error}", ""]
        titles = [t.title for t in run.tables]
        return out + ([f"Tables it will fill: {'; '.join(titles)}.", ""] if titles else [])
    if run.smoke:
        out += ["> **{}** {}".format(*PROFILE_BANNERS[run.profile]), ""]
    if run.recipe_error:
        out += [f"Recipe: {run.recipe_error} — tables read from the files as written.", ""]
    for note in run.notes:
        out += [f"- {note}"]
    out += [""] if run.notes else []
    for table in run.tables:
        out += _table_block(table)
    if run.timing is not None:
        out += _table_block(run.timing)
    if run.figures:
        out += ["### Figures", ""] + _figures(run.figures)
    return out + _provenance(run)


def _section(section: Section) -> list:
    label = f" — profile `{section.profile}`" if section.profile else ""
    out = [f'<a id="{section.anchor}"></a>', "", f"### {section.title}{label}", ""]
    if not section.present:
        return out + [f"Not run yet: no folder `{section.folder}/`.", ""]
    for table in section.tables:
        out += _table_block(table, "####")
    if section.documents:
        out += ["Reports: " + ", ".join(_link(d.rsplit("/", 1)[-1], d) for d in section.documents), ""]
    out += _figures(section.figures)
    if not (section.tables or section.documents or section.figures):
        out += [f"The folder `{section.folder}/` is empty.", ""]
    return out


def render_markdown(data: ReportData) -> str:
    out = ["# histokit reproduction report", "",
           f"Generated {data.generated} by `histokit report` from the results folder; profiles: "
           + ", ".join(f"`{p}`" for p in data.profiles) + ". Paths are relative to `results/`; "
           "`report.html` is the same report as one self-contained page.", ""]
    ran = [r for r in data.papers if r.ran]
    if not any(not r.smoke for r in ran):
        out += ["> **No paper has been reproduced at the full profile yet.** Every number below comes from a smoke "
                "run on the bundled tiles and is not a reproduction of any paper.", ""]
    out += ["## Summary", "", "| paper | profile | status | tables measured | Δ 🟢 / 🟠 / 🔴 |",
            "|---|---|---|---|---|"]
    for run in data.papers:
        written = sum(t.written for t in run.tables)
        counts = summary_grades(run)  # None: not run, or smoke / rehearsal (never counted as agreement)
        grades = " / ".join(str(counts[g]) for g in ("close", "near", "far")) if counts else not_graded_words(run)
        out.append(f"| [{_cell(run.title)}](#{run.anchor}) | `{run.profile}` | {run.status} | "
                   f"{written} of {len(run.tables)} | {grades} |")
    out += ["", "Δ = this run − the paper. " + "; ".join(f"{MARKERS[g] or '(no marker)'} {text}"
                                                     for g, text in GRADE_LEGEND.items())
            + ". Smoke and rehearsal differences are shown without a marker and never counted: they measure "
              "nothing.", ""]
    for run in data.papers:
        out += _paper(run)
    out += ["## Common benchmark", ""]
    for section in data.benchmark:
        out += _section(section)
    out += ["## Leakage audit", "",
            "Near-duplicate (test, train) pairs found with the kit's exact FAISS index (cosine on L2-normalised "
            "features) per dataset and split variant (`histokit.evaluation.leakage`).", ""]
    for section in data.leakage:
        out += _section(section)
    out += ["## Speed", ""]
    if data.performance is None:
        out += ["None yet: `histokit speed` writes them to `speed/`.", ""]
    else:
        out += _section(data.performance)
    return "\n".join(out).rstrip() + "\n"
