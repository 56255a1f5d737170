"""``results/report.html``: one self-contained page (inline CSS, figures as ``data:`` URIs, no script, no external
resource), so it opens offline and can be mailed as a single file. Links point to files relative to ``results/``
(tables' CSV, run.json, full-resolution figures) or to anchors in the page; a file outside ``results/`` (an
executed notebook in a run directory) is named as text, never linked, so the page has no broken link.
"""
from __future__ import annotations

from html import escape
from urllib.parse import quote

from ..tables import format_cell, html_table
from .cells import GRADE_LEGEND, NOT_GRADED, is_not_run, not_graded_words, row_grade, summary_grades, unit_scales
from .collect import PaperRun, ReportData, Section, Table, unpublished_notebooks
from .embed import data_uri

SUB_LABELS = {"": "this run", " 95% CI": "95% CI", " (paper)": "paper", " Δ": "Δ"}
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 0 auto;
       max-width: 1500px; padding: 1rem 2rem 4rem; line-height: 1.4; }
h1 { margin-bottom: .2rem; } h2 { border-bottom: 2px solid #ddd; padding-bottom: .2rem; margin-top: 2.5rem; }
h3 { margin-top: 1.8rem; } .meta { color: #666; font-size: .9rem; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: .82rem; margin: .4rem 0 .6rem; }
th, td { border: 1px solid #cfcfcf; padding: 2px 7px; text-align: right; white-space: nowrap; }
th { background: #f2f2f2; text-align: center; } th.key, td.key { text-align: left; }
td.paper { color: #555; } td.ci { color: #555; font-size: .78rem; }
td.notrun { color: #888; font-style: italic; background: #f4f4f4; }
td.close, span.close { background: #c8e6c9; } td.near, span.near { background: #ffe0a3; }
td.far, span.far { background: #f6b9b3; } td.none, span.none { background: #eeeeee; color: #777; }
span.swatch { display: inline-block; padding: 0 .5rem; margin-right: .3rem; border: 1px solid #bbb; }
.banner { border: 3px solid #d9822b; background: #fff4e5; padding: .6rem 1rem; font-weight: 600;
          font-size: 1.05rem; margin: .6rem 0; }
.alert { border: 3px solid #b03a2e; background: #fdecea; padding: .6rem 1rem; font-weight: 600; margin: .8rem 0; }
.notrun-block { border-left: 6px solid #999; background: #f7f7f7; padding: .4rem 1rem; margin: .6rem 0; }
ol.notes { font-size: .85rem; color: #333; margin-top: .2rem; } ul.prov { font-size: .88rem; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .85rem; color: #444; } code { background: #f4f4f4; padding: 0 .2rem; }
nav ul { columns: 2; font-size: .9rem; }
"""


def _e(value) -> str:
    return escape(str(value), quote=True)


def _href(path: str) -> str:
    return quote(path, safe="/#-._~")


def _a(text: str, target: str) -> str:
    return f'<a href="{_href(target)}">{_e(text)}</a>'


def _paper_table(table: Table) -> str:
    frame = table.frame
    columns = set(frame.columns)
    groups = [(m, [s for s in SUB_LABELS if f"{m}{s}" in columns]) for m in table.metrics]
    units = unit_scales(table)
    head1 = "".join(f'<th class="key" rowspan="2">{_e(k)}</th>' for k in table.keys)
    head1 += "".join(f'<th colspan="{len(subs)}">{_e(m)}</th>' for m, subs in groups)
    head2 = "".join(f"<th>{SUB_LABELS[s]}</th>" for _, subs in groups for s in subs)
    rows = []
    for _, row in frame.iterrows():
        cells = [f'<td class="key">{_e(format_cell(row[k]))}</td>' for k in table.keys]
        for metric, subs in groups:
            for s in subs:
                value = row[f"{metric}{s}"]
                if s == "":
                    css = "notrun" if is_not_run(value) else "run"
                    cells.append(f'<td class="{css}">{_e(format_cell(value))}</td>')
                elif s == " Δ":
                    grade = row_grade(table, row, metric, units[metric])
                    why = GRADE_LEGEND[grade] if getattr(table, "graded", True) else NOT_GRADED
                    cells.append(f'<td class="{grade}" data-grade="{grade}" title="{_e(why)}">'
                                 f"{_e(format_cell(value))}</td>")
                else:
                    css = "ci" if s == " 95% CI" else "paper"
                    cells.append(f'<td class="{css}">{_e(format_cell(value))}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table class="paper-table" data-table="{_e(table.id)}">'
            f"<thead><tr>{head1}</tr><tr>{head2}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")


def _plain_table(table: Table) -> str:
    table_html = html_table(list(table.frame.columns), table.frame.itertuples(index=False),
                            attrs=f' class="plain-table" data-table="{_e(table.id)}"')
    return f'<div class="scroll">{table_html}</div>'


def _table_block(table: Table, level: int = 3) -> str:
    out = [f"<h{level}>{_e(table.title)}</h{level}>"]
    if table.stale:
        out.append(f'<p class="notrun-block"><strong>To be regenerated.</strong> {_e(table.stale)}</p>')
        return "\n".join(out)
    if not table.written:
        out.append('<p class="notrun-block">Not run yet: this table has no measured values. The paper\'s numbers '
                   "are not copied into it.</p>")
        return "\n".join(out)
    out.append(_paper_table(table) if table.metrics else _plain_table(table))
    if table.footnotes:
        out.append('<ol class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in table.footnotes) + "</ol>")
    files = [_a(t.rsplit("/", 1)[-1], t) for t in (table.json, table.csv, table.md) if t]
    if files:
        out.append(f'<p class="meta">Files: {", ".join(files)}</p>')
    return "\n".join(out)


def _figures(figures) -> str:
    out = []
    for fig in figures:
        out.append(f'<figure><img src="{data_uri(fig.path)}" alt="{_e(fig.caption)}">'
                   f"<figcaption>{_e(fig.caption)} — {_a('full-resolution PNG', fig.rel)}</figcaption></figure>")
    return "\n".join(out)


def _provenance(run: PaperRun) -> str:
    prov = run.provenance or {}
    items = []
    if run.run_json:
        items.append(f"{_a('run.json', run.run_json)}: published {_e(prov.get('published', '?'))}")
    git = prov.get("git") or {}
    if git.get("commit"):
        items.append(f"git commit <code>{_e(git['commit'][:12])}</code>"
                     + (" (uncommitted changes)" if git.get("dirty") else ""))
    device = prov.get("device") or {}
    if device:
        items.append(f"device: {_e(device.get('cuda_device') or device.get('processor', '?'))} (requested "
                     f"<code>{_e(device.get('requested', '?'))}</code>, {_e(device.get('platform', '?'))})")
    params = prov.get("parameters") or {}
    if params:
        items.append("parameters: " + ", ".join(f"<code>{_e(k)}={_e(v)}</code>" for k, v in sorted(params.items())))
    stages = prov.get("stages") or []
    if stages:
        parts = ", ".join(f"{_e(s.get('stage', '?'))} {float(s.get('seconds', 0)):.0f} s" for s in stages)
        items.append(f"stages: {parts}")
    linked = [nb for nb in run.notebooks if nb.link]
    if linked:
        items.append("executed notebooks: " + ", ".join(_a(nb.name, nb.link) for nb in linked))
    for directory, nbs in unpublished_notebooks(run).items():
        missing = "" if all(nb.on_disk for nb in nbs) else " — not on this machine"
        items.append(f"executed notebooks in the run directory <code>{_e(directory)}/</code> (not published with "
                     f"the results{missing}): " + ", ".join(f"<code>{_e(nb.name)}</code>" for nb in nbs))
    packages = prov.get("packages") or {}
    if packages:
        items.append("packages: " + ", ".join(f"{_e(k)} {_e(v)}" for k, v in sorted(packages.items()) if v))
    for path, what in run.files:
        if not path.endswith("run.json"):
            items.append(f"{_a(path.rsplit('/', 1)[-1], path)}: {_e(what)}")
    return "<h3>Provenance</h3><ul class=\"prov\">" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def _paper(run: PaperRun) -> str:
    out = [f'<section id="{run.anchor}" class="paper" data-paper="{_e(run.paper)}" data-profile="{_e(run.profile)}"'
           f' data-status="{"ran" if run.ran else "not-run"}">',
           f"<h2>{_e(run.title)} — profile <code>{_e(run.profile)}</code></h2>"]
    if run.citation:
        out.append(f'<p class="meta">{_e(run.citation)}</p>')
    if not run.ran:
        out.append(f'<div class="notrun-block"><p><strong>Not run yet.</strong> No results folder '
                   f"<code>{_e(run.folder)}/</code>; run <code>histokit reproduce {_e(run.paper)} --profile "
                   f"{_e(run.profile)}</code>.</p>")
        if run.recipe_error:
            out.append(f"<p>Recipe: {_e(run.recipe_error)}</p>")
        if run.tables:
            out.append("<p>Tables it will fill:</p><ul>" + "".join(f"<li>{_e(t.title)}</li>" for t in run.tables)
                       + "</ul>")
        return "\n".join(out + ["</div></section>"])
    if run.smoke:
        out.append(f'<div class="banner">{_e(run.banner)}</div>')
    if run.recipe_error:
        out.append(f"<p>Recipe: {_e(run.recipe_error)} — tables read from the files as written.</p>")
    if run.notes:
        out.append("<ul>" + "".join(f"<li>{_e(n)}</li>" for n in run.notes) + "</ul>")
    out += [_table_block(t) for t in run.tables]
    if run.timing is not None:
        out.append(_table_block(run.timing))
    if run.figures:
        out += ["<h3>Figures</h3>", _figures(run.figures)]
    out += [_provenance(run), "</section>"]
    return "\n".join(out)


def _section(section: Section) -> str:
    label = f" — profile <code>{_e(section.profile)}</code>" if section.profile else ""
    out = [f'<section id="{section.anchor}" class="{_e(section.kind)}"><h3>{_e(section.title)}{label}</h3>']
    if not section.present:
        out.append(f'<p class="notrun-block">Not run yet: no folder <code>{_e(section.folder)}/</code>.</p>')
        return "\n".join(out + ["</section>"])
    out += [_table_block(t, 4) for t in section.tables]
    if section.documents:
        out.append("<p>Reports: " + ", ".join(_a(d.rsplit("/", 1)[-1], d) for d in section.documents) + "</p>")
    out.append(_figures(section.figures))
    if not (section.tables or section.documents or section.figures):
        out.append(f"<p>The folder <code>{_e(section.folder)}/</code> is empty.</p>")
    return "\n".join(out + ["</section>"])


def _summary(data: ReportData) -> str:
    rows = []
    for run in data.papers:
        written = sum(t.written for t in run.tables)
        counts = summary_grades(run)  # None: not run, or smoke / rehearsal (never counted as agreement)
        grades = (" ".join(f'<span class="swatch {g}">{counts[g]}</span>' for g in ("close", "near", "far"))
                  if counts else _e(not_graded_words(run)))
        status = f"<strong>{_e(run.status)}</strong>" if run.ran and run.smoke else _e(run.status)
        rows.append(f'<tr><td class="key"><a href="#{run.anchor}">{_e(run.title)}</a></td>'
                    f'<td class="key"><code>{_e(run.profile)}</code></td><td class="key">{status}</td>'
                    f"<td>{written} of {len(run.tables)}</td><td>{grades}</td></tr>")
    legend = " ".join(f'<span class="swatch {g}">{_e(text)}</span>' for g, text in GRADE_LEGEND.items())
    return ('<h2 id="summary">Summary</h2><div class="scroll"><table><thead><tr><th class="key">paper</th>'
            '<th class="key">profile</th><th class="key">status</th><th>tables measured</th><th>Δ cells by size</th>'
            f'</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
            f"<p>Δ = this run − the paper. {legend} Smoke and rehearsal differences are shown uncoloured and never "
            "counted: they measure nothing.</p>")


def _nav(data: ReportData) -> str:
    items = ['<li><a href="#summary">Summary</a></li>']
    items += [f'<li><a href="#{r.anchor}">{_e(r.title)} — {_e(r.profile)}</a>'
              f"{'' if r.ran else ' (not run yet)'}</li>" for r in data.papers]
    items += ['<li><a href="#benchmark">Common benchmark</a></li>', '<li><a href="#leakage">Leakage audit</a></li>',
              '<li><a href="#performance">Speed</a></li>']
    return "<nav><ul>" + "".join(items) + "</ul></nav>"


def render_html(data: ReportData) -> str:
    ran = [r for r in data.papers if r.ran]
    body = ["<h1>histokit reproduction report</h1>",
            f'<p class="meta">Generated {_e(data.generated)} by <code>histokit report</code>; profiles: '
            + ", ".join(f"<code>{_e(p)}</code>" for p in data.profiles)
            + ". Links are relative to the results folder; the figures are embedded.</p>"]
    if not any(not r.smoke for r in ran):
        body.append('<div class="alert">No paper has been reproduced at the full profile yet. Every number below '
                    "comes from a smoke run on the bundled tiles and is not a reproduction of any paper.</div>")
    body += [_nav(data), _summary(data)]
    body += [_paper(r) for r in data.papers]
    body.append('<h2 id="benchmark">Common benchmark</h2>')
    body += [_section(s) for s in data.benchmark]
    body.append('<h2 id="leakage">Leakage audit</h2><p>Near-duplicate (test, train) pairs found with the kit\'s exact '
                "FAISS index (cosine on L2-normalised features), per dataset and split variant "
                "(<code>histokit.evaluation.leakage</code>).</p>")
    body += [_section(s) for s in data.leakage]
    body.append('<h2 id="performance">Speed</h2>')
    body.append(_section(data.performance) if data.performance is not None else
                "<p>None yet: <code>histokit speed</code> writes them to <code>speed/</code>.</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>histokit reproduction report</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
