"""Read the results tree into plain dataclasses: what each paper and profile measured, what it did not, and where
the files are. Nothing here formats; :mod:`.markdown` and :mod:`.html` render the same :class:`ReportData`.

Layout read (written by :mod:`histokit.results` and :func:`histokit.runner.publish_results`)::

    results/<paper>/<profile>/   <table>.json (the table artifact, histokit.tables) + its .csv and .md, *.png,
                                 figures/*.png, records.csv, timing.csv, notes.json, run.json (provenance),
                                 notebooks/*.ipynb where published
    results/benchmark/<profile>/ the common benchmark: table artifacts and figures
    results/leakage/<profile>/   the leakage audit: table artifacts and figures (histokit.evaluation.leakage)
    results/speed/               speed (performance) benchmarks (``histokit speed``, ``histokit gpucheck``), one
                                 report per device: .md documents and plain .csv tables

Tables are read from their ``.json``, never from the markdown. A table written before the artifact existed (a
``.csv`` and ``.md`` without the ``.json``) is reported as to be regenerated, with the command that does it.

A paper or profile without its folder is reported as not run; its tables are listed by title only, never with the
paper's numbers in place of measured ones.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import pandas as pd

from ..io import slug
from ..runner import PROFILES
from ..tables import PROFILE_BANNERS, document_frame, read_table_artifact

SECTION_DIRS = {"benchmark": "Common benchmark", "leakage": "Leakage audit"}
PERFORMANCE_DIR = "speed"
# "benchmarks": where the speed reports were before `histokit bench` became `histokit speed`; never a paper
RESERVED_DIRS = set(SECTION_DIRS) | {PERFORMANCE_DIR, "benchmarks"}
PAPER_SUFFIX = " (paper)"
# Files of a paper folder that are not tables in the paper's layout, and what they hold.
RUN_FILES = {
    "run.json": "provenance: parameters, git commit, package versions, device, stage timings",
    "records.csv": "every measured number with its protocol, one row per model × dataset × metric",
    "timing.csv": "timing conditions: device, precision, batch sizes, whether decoding is included",
    "notes.json": "notes the stages wrote (fallbacks, deviations), per table",
}


@dataclass
class Table:
    """One table. ``frame`` holds the artifact's cells (None: this run did not write the table, or ``stale``)."""
    id: str
    title: str
    frame: Optional[pd.DataFrame]
    keys: list = field(default_factory=list)
    metrics: list = field(default_factory=list)   # empty: a plain table, not in the paper-vs-run layout
    footnotes: list = field(default_factory=list)
    json: Optional[str] = None                    # paths relative to the results folder
    csv: Optional[str] = None
    md: Optional[str] = None
    stale: Optional[str] = None                   # why the table on disk cannot be read, and how to regenerate it
    graded: bool = True                           # False: smoke / rehearsal, whose Δ is never graded as agreement

    @property
    def written(self) -> bool:
        return self.frame is not None


@dataclass
class Figure:
    rel: str        # relative to the results folder
    path: Path
    caption: str


@dataclass
class Notebook:
    stage: str
    location: str               # where it is: relative to the results folder's parent when inside it, else absolute
    link: Optional[str] = None  # relative to the results folder, when the notebook lies under it
    on_disk: bool = False

    @property
    def name(self) -> str:
        return self.location.rsplit("/", 1)[-1]

    @property
    def directory(self) -> str:
        return self.location.rsplit("/", 1)[0] if "/" in self.location else "."


def profile_banner(profile: str) -> str:
    """The warning that heads a run that is not a reproduction (empty for a real one): the tables' own banner."""
    return " ".join(PROFILE_BANNERS.get(profile, ()))


@dataclass
class PaperRun:
    paper: str
    profile: str
    title: str
    citation: str
    folder: str
    ran: bool
    tables: list = field(default_factory=list)
    figures: list = field(default_factory=list)
    notes: list = field(default_factory=list)       # the recipe's notes
    provenance: Optional[dict] = None
    run_json: Optional[str] = None
    notebooks: list = field(default_factory=list)
    files: list = field(default_factory=list)       # (relative path, what it holds)
    timing: Optional[Table] = None
    recipe_error: Optional[str] = None

    @property
    def smoke(self) -> bool:
        """Not a reproduction: the smoke profile or a rehearsal of the full profile."""
        return self.profile in ("smoke", "rehearsal")

    @property
    def banner(self) -> str:
        return profile_banner(self.profile)

    @property
    def anchor(self) -> str:
        return slug(f"{self.paper}-{self.profile}")

    @property
    def status(self) -> str:
        if not self.ran:
            return "not run yet"
        if self.profile == "rehearsal":
            return "rehearsal of the full profile — not a reproduction"
        if self.smoke:
            return "smoke run — not a reproduction"
        return f"reproduction ({self.profile} profile)"


@dataclass
class Section:
    """A folder of tables and figures written by a stage: the common benchmark, the leakage audit, ``speed``."""
    kind: str
    title: str
    profile: Optional[str]
    folder: str
    present: bool
    tables: list = field(default_factory=list)
    figures: list = field(default_factory=list)
    documents: list = field(default_factory=list)   # .md reports without a CSV twin, linked

    @property
    def anchor(self) -> str:
        return slug(f"{self.kind}-{self.profile or 'all'}")


@dataclass
class ReportData:
    results_dir: Path
    profiles: list
    generated: str
    papers: list
    benchmark: list
    leakage: list
    performance: Optional[Section]


def rel(path: Path, root: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix()


def _layout(table_id: str, title: str, frame: pd.DataFrame, root: Path, files: list, footnotes=()) -> Table:
    """A table in the paper-vs-run layout where its columns have ``<metric> (paper)`` twins, else a plain one."""
    columns = list(frame.columns)
    metrics = [c[: -len(PAPER_SUFFIX)] for c in columns if c.endswith(PAPER_SUFFIX)]
    grouped = {f"{m}{s}" for m in metrics for s in ("", " 95% CI", PAPER_SUFFIX, " Δ")}
    csv, md = (rel(p, root) if p.is_file() else None for p in files)
    return Table(id=table_id, title=title, frame=frame, keys=[c for c in columns if c not in grouped],
                 metrics=metrics, footnotes=list(footnotes), csv=csv, md=md)


def read_table(json_path: Path, root: Path) -> Table:
    """A table from its artifact ``<id>.json`` (:mod:`histokit.tables`); its .csv and .md are linked."""
    doc = read_table_artifact(json_path)
    table = _layout(doc["id"], doc["title"], document_frame(doc), root,
                    [json_path.with_suffix(".csv"), json_path.with_suffix(".md")], doc["footnotes"])
    table.json = rel(json_path, root)
    return table


def read_csv_table(csv_path: Path, root: Path, table_id: str, title: str) -> Table:
    """A plain data CSV that is no table artifact (``timing.csv``, a speed report's rows), its numbers typed."""
    try:
        frame = pd.read_csv(csv_path, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"table {csv_path} cannot be read as CSV: {err}") from err
    return _layout(table_id, title, frame.astype(object), root, [csv_path, csv_path.with_suffix(".md")])


def stale_table(csv_path: Path, root: Path, title: str, command: str) -> Table:
    """A table written before the table artifact: its ``.json`` is missing, so it is shown as to be regenerated."""
    why = (f"{rel(csv_path, root)} was written by an older histokit, without its table artifact "
           f"{csv_path.stem}.json; regenerate it with `{command}`.")
    return Table(csv_path.stem, title or csv_path.stem, None, csv=rel(csv_path, root), stale=why)


# File-name prefixes the stages use for their figures (histokit.stages.data / train), read as captions.
CAPTION_PREFIXES = {"loss_": "training loss: ", "data_": "data: "}


def _caption(stem: str) -> str:
    for prefix, words in CAPTION_PREFIXES.items():
        if stem.startswith(prefix):
            return words + stem[len(prefix):]
    return stem


def _figures(folder: Path, root: Path, captions: dict) -> list:
    pngs = [p for p in folder.rglob("*.png") if not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    pngs.sort(key=lambda p: (len(p.relative_to(folder).parts), p.as_posix()))  # top-level figures first
    return [Figure(rel(p, root), p, captions.get(p.stem, _caption(p.stem))) for p in pngs]


def _notebooks(provenance: dict, folder: Path, root: Path) -> list:
    run_dir = Path(str(provenance.get("parameters", {}).get("run_dir", "")))
    out = []
    for stage in provenance.get("stages", []):
        name = f"{stage.get('stage', '?')}.ipynb"
        published = folder / "notebooks" / name
        if published.is_file():
            out.append(Notebook(stage.get("stage", "?"), rel(published, root), rel(published, root), True))
            continue
        executed = run_dir / "notebooks" / name
        inside = executed.is_file() and executed.resolve().is_relative_to(root.resolve())
        out.append(Notebook(stage.get("stage", "?"), _display_path(executed, root),
                            rel(executed, root) if inside else None, executed.is_file()))
    return out


def unpublished_notebooks(run: "PaperRun") -> dict:
    """Executed notebooks outside the results folder, grouped by directory (named as text, never linked)."""
    groups: dict = {}
    for nb in run.notebooks:
        if not nb.link:
            groups.setdefault(nb.directory, []).append(nb)
    return groups


def _display_path(path: Path, root: Path) -> str:
    """``runs/esvit/smoke/...`` for a run directory in the checkout beside results/, else the absolute path."""
    try:
        return path.resolve().relative_to(root.resolve().parent).as_posix()
    except ValueError:
        return path.as_posix()


def _load_recipe(paper: str, profile: str):
    from ..papers import get_recipe

    try:  # a rehearsal (results/<paper>/rehearsal/) runs the full profile's recipe
        return get_recipe(paper, "full" if profile == "rehearsal" else profile), None
    except (ValueError, KeyError, ImportError) as err:
        return None, str(err)


def collect_paper(root: Path, paper: str, profile: str) -> PaperRun:
    folder = root / paper / profile
    recipe, error = _load_recipe(paper, profile)
    run = PaperRun(paper=paper, profile=profile, title=recipe.title if recipe else paper,
                   citation=recipe.citation if recipe else "", folder=f"{paper}/{profile}", ran=folder.is_dir(),
                   notes=list(recipe.notes) if recipe else [], recipe_error=error)
    specs = list(recipe.tables) if recipe else []
    if not run.ran:
        run.tables = [Table(s.id, s.title, None, footnotes=list(s.all_footnotes)) for s in specs]
        return run

    command = f"histokit reproduce {paper} --profile {profile}"
    tables, seen = [], set()
    for spec in specs:
        json_path, csv_path = folder / f"{spec.id}.json", folder / f"{spec.id}.csv"
        if json_path.is_file():
            tables.append(read_table(json_path, root))
        elif csv_path.is_file():
            tables.append(stale_table(csv_path, root, spec.title, command))
        else:
            tables.append(Table(spec.id, spec.title, None, footnotes=list(spec.all_footnotes)))
        seen.add(spec.id)
    for csv_path in sorted(folder.glob("*.csv")):  # tables of a paper whose recipe is not (or no longer) known
        if csv_path.stem in seen or csv_path.name in RUN_FILES:
            continue
        if csv_path.with_suffix(".json").is_file():
            tables.append(read_table(csv_path.with_suffix(".json"), root))
        elif csv_path.with_suffix(".md").is_file():
            tables.append(stale_table(csv_path, root, "", command))
    for table in tables:  # a smoke or rehearsal number is never graded against the paper
        table.graded = not run.smoke
    run.tables = tables
    if not recipe:  # the tables' own artifacts name the paper
        for json_path in sorted(folder.glob("*.json")):
            if json_path.with_suffix(".csv").is_file():
                run.title = read_table_artifact(json_path).get("paper_title") or run.title
                break

    captions = {}
    for figure in (recipe.figures if recipe else ()):
        captions[figure.id] = figure.caption()
    run.figures = _figures(folder, root, captions)
    run_json = folder / "run.json"
    if run_json.is_file():
        try:
            run.provenance = json.loads(run_json.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{run_json} is not valid JSON: {err}") from err
        run.run_json = rel(run_json, root)
        run.notebooks = _notebooks(run.provenance, folder, root)
    run.files = [(rel(folder / name, root), what) for name, what in RUN_FILES.items() if (folder / name).is_file()]
    if (folder / "timing.csv").is_file():
        run.timing = read_csv_table(folder / "timing.csv", root, "timing", "Timing conditions")
    return run


def collect_section(root: Path, kind: str, title: str, profile: Optional[str], folder: Path) -> Section:
    section = Section(kind, title, profile, folder.relative_to(root).as_posix(), folder.is_dir())
    if not section.present:
        return section
    for csv_path in sorted(folder.glob("*.csv")):
        if csv_path.with_suffix(".json").is_file():
            section.tables.append(read_table(csv_path.with_suffix(".json"), root))
        elif kind == "performance":  # the speed reports: a .md document and its plain rows
            section.tables.append(read_csv_table(csv_path, root, csv_path.stem, csv_path.stem))
        else:
            command = f"histokit {'audit' if kind == 'leakage' else kind} --profile {profile}"
            section.tables.append(stale_table(csv_path, root, "", command))
    for table in section.tables:  # a smoke or rehearsal section's Δ (if any) is never graded either
        table.graded = profile not in ("smoke", "rehearsal")
    with_csv = {p.stem for p in folder.glob("*.csv")}
    section.documents = [rel(p, root) for p in sorted(folder.glob("*.md")) if p.stem not in with_csv]
    section.figures = _figures(folder, root, {})
    return section


def _paper_dirs(root: Path) -> list:
    """Folders under results/ that hold a paper's runs (a profile folder with a table or run.json)."""
    if not root.is_dir():
        return []
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if d.name in RESERVED_DIRS:
            continue
        if any(sub.is_dir() and (any(sub.glob("*.json")) or any(sub.glob("*.csv"))) for sub in d.iterdir()):
            out.append(d.name)
    return out


def _profiles_on_disk(root: Path, papers: list) -> list:
    found = set()
    for paper in papers:
        if (root / paper).is_dir():
            found |= {p.name for p in (root / paper).iterdir() if p.is_dir() and not p.name.startswith(".")}
    for name in SECTION_DIRS:
        if (root / name).is_dir():
            found |= {p.name for p in (root / name).iterdir() if p.is_dir() and not p.name.startswith(".")}
    return found


def collect(results_dir: Path, profile: Optional[str] = None) -> ReportData:
    """Everything the report shows, for one ``profile`` or (None) every profile known or found on disk."""
    from ..papers import list_papers

    root = Path(results_dir)
    known = list_papers()
    on_disk = _paper_dirs(root)
    papers = known + [p for p in on_disk if p not in known]
    if profile is not None:
        profiles = [profile]
    else:
        extra = sorted(_profiles_on_disk(root, papers) - set(PROFILES))
        profiles = list(PROFILES) + extra
    runs = []
    for paper in papers:
        for prof in profiles:
            run = collect_paper(root, paper, prof)
            # Every kit profile of a known paper is reported, run or not; a paper the kit no longer lists only
            # where something is on disk.
            if run.ran or (paper in known and prof in PROFILES):
                runs.append(run)
    sections = {kind: [collect_section(root, kind, title, prof, root / kind / prof) for prof in profiles]
                for kind, title in SECTION_DIRS.items()}
    perf_dir = root / PERFORMANCE_DIR
    performance = (collect_section(root, "performance", "Speed", None, perf_dir)
                   if perf_dir.is_dir() else None)
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return ReportData(root, profiles, generated, runs, sections["benchmark"], sections["leakage"], performance)
