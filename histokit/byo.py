"""``histokit evaluate --encoder SPEC ... --paper P``: your own encoders under each paper's evaluation protocols.

The design is the recipe's: each encoder becomes one more model row (``ModelSpec`` with ``weights = "encoder:SPEC"``,
resolved by :mod:`histokit.models.encoder_spec`) of every evaluation that reads **frozen features**
(:data:`FROZEN_KINDS`: retrieval with its timings, the Kimia eta, k-NN / linear / AUC probes, the re-split k-NN)
and of every evaluation that fine-tunes from a row's weights (:data:`FINETUNED_KINDS`: Ye et al.'s label fractions,
with the paper's own fine-tuning recipe); the paper's own model rows stay in those tables beside them, with the
paper's numbers. The training ablations and the figures are not run for the new rows, and every table and the
folder's README say which protocols ran.

The paper's own run (``runs/<paper>/<profile>``) gives the paper rows' trained weights: its stages 01-03 are run
as ``histokit reproduce`` runs them when they are not finished (finished ones are skipped), never published. The
evaluation then runs in a run directory of its own (``runs/evaluate/<paper>/<profile>``: the paper run's splits,
trained weights and features are linked in, so nothing is re-extracted that is current) through the stage code of
04 (features, timings) and 05 (the tables), and is published to ``results/evaluate/<paper>/<profile>/`` — never
over the paper's own results.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from . import paths

if TYPE_CHECKING:
    from .papers.recipe import Recipe
    from .stages.context import StageContext

FROZEN_KINDS = ("retrieval", "classification_probes", "resplit_knn", "kimia_eta")
# evaluations that fine-tune each row from its weights with the paper's own fine-tuning recipe (Ye et al. Table 2)
FINETUNED_KINDS = ("label_fraction",)
# ablations that vary the protocol over frozen features (Habijan's split variants), not the paper's training
FROZEN_ABLATION_KINDS = ("retrieval_split_variants",)
AUTO_KEYS = ("model", "dataset", "method", "split")   # key columns every record gets without a label
PAPER_STAGES = ("01_data", "02_pretrain", "03_finetune")
# what the evaluation reads of the paper's own run (label_fraction: the paper rows' fine-tuned results, reused while
# their starting weights are the same)
LINKED = ("data", "train", "features", "timing", "label_fraction")



def evaluate_dir(paper: str, label: str, root: Optional[Path] = None) -> Path:
    return Path(root or paths.RESULTS_DIR / "evaluate") / paper / label


def user_model(text: str, image_size: int, lenient: bool):
    """(ModelSpec row, ResolvedEncoder) for one spec: resolved once here, so a spec that cannot be loaded stops
    before any work, and the row carries the weights' own input normalisation."""
    from .models.encoder_spec import resolve_encoder
    from .papers.recipe import ModelSpec

    resolved = resolve_encoder(text, image_size=image_size, lenient=lenient)
    escaped = resolved.spec.text.replace("{", "{{").replace("}", "}}")  # weight specs are str.format'ed
    row = ModelSpec(name=resolved.spec.label, encoder=resolved.spec.text, weights=f"encoder:{escaped}",
                    mean=tuple(resolved.mean), std=tuple(resolved.std), note=resolved.describe())
    return row, resolved


def _row_labels(table, name: str) -> dict:
    """Labels for the key columns a record does not fill itself: the first names the encoder, the rest say so."""
    labels, first = {}, not ({"model", "method"} & set(table.keys))
    for key in table.keys:
        if key in AUTO_KEYS:
            continue
        labels[key] = name if first else "your encoder"
        first = False
    return labels


def _with_user_rows(recipe, specs, kinds, names, tables) -> tuple[list, list]:
    """(the specs of ``kinds`` kept, one added spec per user row and table): the rows join the first spec of each
    table, with that spec's protocol parameters (not the paper rows' comparisons or labels)."""
    kept, added = [], []
    for spec in specs:
        if spec.kind not in kinds:
            continue
        kept.append(spec)
        if spec.table in tables:
            continue
        table = recipe.table(spec.table)
        tables[spec.table] = spec
        for name in names:
            labels = _row_labels(table, name)
            # the spec's protocol parameters, not the paper rows' weight labels, comparisons or row labels
            changes = dict(models=(name,), as_run={})
            changes.update({"rows": {name: labels}} if hasattr(spec, "rows") else {})
            changes.update({"compare": ()} if hasattr(spec, "compare") else {})
            if spec.labels:
                changes["labels"] = {**{k: name for k in spec.labels if k == "model"}, **labels}
            added.append(replace(spec, **changes))
    return kept, added


def evaluation_recipe(recipe, rows: Sequence):
    """The paper's recipe with the user's rows added to one evaluation of every table that reads frozen features or
    fine-tunes from a row's weights (:data:`FROZEN_KINDS`, :data:`FINETUNED_KINDS`) and to each frozen-feature
    ablation (:data:`FROZEN_ABLATION_KINDS`); the training ablations and the figures left out; each table with a
    footnote saying how the rows ran and what did not run for them."""
    names = [r.name for r in rows]
    tables: dict = {}
    kept, added = _with_user_rows(recipe, recipe.evaluations, FROZEN_KINDS + FINETUNED_KINDS, names, tables)
    kept_ablations, added_ablations = _with_user_rows(recipe, recipe.ablations, FROZEN_ABLATION_KINDS, names, tables)
    skipped = sorted({f"{s.words or s.kind} ({s.table})" for s in recipe.evaluations
                      if s.kind not in FROZEN_KINDS + FINETUNED_KINDS})
    training_ablations = sorted({s.table for s in recipe.ablations if s.kind not in FROZEN_ABLATION_KINDS})
    skipped += [f"the training ablations ({', '.join(training_ablations)})"] if training_ablations else []
    skipped += ["the figures"] if recipe.figures else []
    out_tables = []
    for table in recipe.tables:
        if table.id not in tables:
            continue
        protocol = tables[table.id]
        how = ("fine-tuned from their weights with the paper's own fine-tuning recipe" if protocol.kind in
               FINETUNED_KINDS else "frozen")
        note = (f"Rows {', '.join(names)}: your encoders (histokit evaluate), {how}, under this table's protocol "
                f"({protocol.words}), on the same splits and features as the paper's rows; "
                "'weights used' says what each loaded. Not run for them: "
                + ("; ".join(skipped) if skipped else "nothing") + ".")
        out_tables.append(replace(table, footnotes=tuple(table.footnotes) + (note,)))
    return replace(recipe, models=tuple(recipe.models) + tuple(rows), evaluations=tuple(kept + added),
                   ablations=tuple(kept_ablations + added_ablations), figures=(),
                   tables=tuple(out_tables)).validate(), skipped


def _link_tree(source: Path, target: Path) -> None:
    """``target`` mirrors ``source`` by hard links (a copy across file systems); writers replace files by renames, so
    neither run changes the other's files."""
    for folder, _, files in os.walk(source):
        dest = target / Path(folder).relative_to(source)
        dest.mkdir(parents=True, exist_ok=True)
        for name in files:
            src, dst = Path(folder) / name, dest / name
            if dst.exists() and os.path.samefile(src, dst):
                continue
            dst.unlink(missing_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)


def run_paper_stages(paper: str, profile: str, *, data_root, device: str, seed: int, checkpoints: dict) -> Path:
    """The paper's own run's stages 01-03 (finished ones skipped), unpublished: the paper rows' trained weights."""
    from .runner import reproduce

    result = reproduce(paper, profile, data_root=data_root, device=device, seed=seed, only=PAPER_STAGES,
                       publish=False, fresh_kernels=True, extra={"checkpoints": checkpoints} if checkpoints else None)
    return result.run_dir


@dataclass
class EvaluationRun:
    """An evaluation run directory ready for stages 04 and 05: the paper's recipe with the user's rows, the paper
    run's splits, trained weights and features linked in, and the context the stage code runs under."""
    ctx: "StageContext"
    resolved: list                  # [(ModelSpec row, ResolvedEncoder)]
    recipe: "Recipe"                # the evaluation recipe (evaluation_recipe)
    skipped: list                   # protocols not run for the user's rows
    paper_run: Path
    identity: dict


def open_evaluation(paper: str, profile: str, encoders: Sequence[str], *, data_root: Optional[str] = None,
                    device: str = "auto", seed: int = 0, checkpoints: Optional[dict] = None,
                    paper_run: Optional[Path] = None, fresh_results: bool = True, say=print) -> EvaluationRun:
    """Resolve ``encoders`` (a spec that cannot be loaded stops here, before any work), finish the paper's own
    stages 01-03 unless ``paper_run`` is given, and prepare ``runs/evaluate/<paper>/<profile>``. ``fresh_results``
    empties the run's scratch ``results/`` first (``histokit evaluate``: no row of an earlier --encoder list stays)."""
    from .data.loading import seed_everything
    from .device import configure_backends, resolve_device
    from .papers import get_recipe
    from .run_identity import run_identity
    from .runner import establish_identity
    from .stages.context import StageContext

    if not encoders:
        raise ValueError("give at least one --encoder SPEC")
    recipe = get_recipe(paper, profile)
    lenient = profile == "smoke"
    resolved = [user_model(text, recipe.image_size, lenient) for text in encoders]
    if len({r.name for r, _ in resolved}) < len(resolved):
        raise ValueError(f"two --encoder arguments give the same row: {[r.name for r, _ in resolved]}")
    eval_recipe, skipped = evaluation_recipe(recipe, [r for r, _ in resolved])
    checkpoints = dict(checkpoints or {})
    if paper_run is None:
        say(f"[histokit] {paper} / {profile}: the paper's own stages {', '.join(PAPER_STAGES)} (finished ones skip)")
        paper_run = run_paper_stages(paper, profile, data_root=data_root, device=device, seed=seed,
                                     checkpoints=checkpoints)
    run_dir = paths.RUNS_DIR / "evaluate" / paper / profile
    run_dir.mkdir(parents=True, exist_ok=True)
    identity = run_identity(paper, profile, profile, run_dir, eval_recipe)
    establish_identity(run_dir, identity)
    for name in LINKED:
        if (Path(paper_run) / name).is_dir():
            _link_tree(Path(paper_run) / name, run_dir / name)
    results = run_dir / "results"
    if fresh_results:
        shutil.rmtree(results, ignore_errors=True)
    results.mkdir(parents=True, exist_ok=True)
    notes_file = Path(paper_run) / "results" / "notes.json"
    if notes_file.exists() and not (results / "notes.json").exists():  # what the paper's training stages noted
        shutil.copy2(notes_file, results / "notes.json")
    ctx = StageContext(paper=paper, profile=profile, recipe=eval_recipe, run_dir=run_dir,
                       data_root=Path(data_root) if data_root else paths.DATA_ROOT, device=resolve_device(device),
                       seed=int(seed), checkpoints=checkpoints)
    seed_everything(ctx.seed)
    ctx.backends = configure_backends(ctx.device)
    for note in eval_recipe.notes:
        ctx.add_note("all", note)
    for _, r in resolved:
        ctx.add_note("all", f"Your encoder {r.describe()}; evaluated at the protocol's input size, "
                            f"{eval_recipe.image_size} px in this profile's recipe.")
    return EvaluationRun(ctx, resolved, eval_recipe, skipped, Path(paper_run), identity)


def extract_user_features(run: EvaluationRun, say=print) -> None:
    """Stage 04 of an evaluation run: features (and timings) of every row the evaluations read; the paper rows'
    linked features are current and kept, so only the user's rows are extracted (once: a second call finds them)."""
    from .stages import index as index_stage

    say(f"[histokit] {run.ctx.paper} / {run.ctx.profile}: features and timings (stage 04) for "
        f"{len(run.recipe.models)} rows")
    index_stage.run(run.ctx)


def evaluate(paper: str, profile: str, encoders: Sequence[str], *, data_root: Optional[str] = None,
             device: str = "auto", seed: int = 0, checkpoints: Optional[dict] = None,
             out_root: Optional[Path] = None, paper_run: Optional[Path] = None, say=print) -> Path:
    """Evaluate ``encoders`` under ``paper``'s protocols that can take an encoder (:func:`evaluation_recipe`);
    returns the published results folder."""
    import json

    from .io import atomic_write_json, atomic_write_text
    from .provenance import device_info, git_commit, now_iso, package_versions
    from .run_identity import recipe_document
    from .runner import portable, publish_results
    from .stages import evaluate as evaluate_stage

    run = open_evaluation(paper, profile, encoders, data_root=data_root, device=device, seed=seed,
                          checkpoints=checkpoints, paper_run=paper_run, say=say)
    ctx, resolved = run.ctx, run.resolved
    extract_user_features(run, say=say)
    say(f"[histokit] {paper} / {profile}: tables (stage 05" + (" and 06)" if run.recipe.ablations else ")"))
    tables = evaluate_stage.run(ctx, "evaluate")
    if run.recipe.ablations:
        tables.update(evaluate_stage.run(ctx, "ablations"))
    results = ctx.results_dir
    atomic_write_text(results / "README.md", readme(paper, profile, resolved, tables, run.skipped))
    provenance = {"paper": paper, "profile": profile, "label": profile, "command": "histokit evaluate",
                  "encoders": [r.describe() for _, r in resolved],
                  "encoder_identity": [r.identity for _, r in resolved],
                  "parameters": portable({"paper": paper, "profile": profile, "encoders": list(encoders),
                                          "device": device, "seed": int(seed),
                                          "data_root": str(ctx.data_root)}),
                  "paper_run": portable(str(run.paper_run.resolve())), "git": git_commit(),
                  "packages": package_versions(), "device": device_info(device), "published": now_iso(),
                  "recipe": run.identity["recipe"]}
    target = evaluate_dir(paper, profile, out_root)
    published = publish_results(ctx.run_dir, target, json.loads(json.dumps(provenance, default=str)),
                                recipe=recipe_document(run.recipe))
    atomic_write_json(ctx.run_dir / "published.json", {"results": str(published)})
    return published


def notebook_tables(ctx: "StageContext", encoders: Sequence[str], stage: str = "evaluate", say=print) -> dict:
    """What notebooks 05 (``stage="evaluate"``) and 06 (``"ablations"``) show for their ``encoders`` parameter: the
    stage's frozen-feature tables of the paper run ``ctx`` with your encoders' rows added, computed in
    ``runs/evaluate/<paper>/<profile>`` as ``histokit evaluate`` computes them (which also publishes them to
    ``results/evaluate/``; a notebook does not publish)."""
    from .stages import evaluate as evaluate_stage

    if not encoders:
        return {}
    run = open_evaluation(ctx.paper, ctx.profile, list(encoders), data_root=str(ctx.data_root), device=ctx.device,
                          seed=ctx.seed, checkpoints=ctx.checkpoints, paper_run=ctx.run_dir,
                          fresh_results=stage == "evaluate", say=say)
    specs = run.recipe.evaluations if stage == "evaluate" else run.recipe.ablations
    if not specs:
        say(f"[histokit] {ctx.paper}: no {stage} table of this paper reads frozen features; not run for your "
            f"encoders: " + ("; ".join(run.skipped) or "nothing"))
        return {}
    extract_user_features(run, say=say)
    tables = evaluate_stage.run(run.ctx, stage)
    ids = {s.table for s in specs}
    say(f"[histokit] your encoders' tables: {run.ctx.results_dir}")
    return {k: v for k, v in tables.items() if k in ids}


def readme(paper: str, profile: str, resolved, tables: dict, skipped: list) -> str:
    lines = [f"# histokit evaluate — {paper} / {profile}", "",
             "Your encoders beside the paper's models, under the paper's frozen-feature protocols "
             "(`histokit evaluate`). Tables: " + (", ".join(f"`{t}.md`" for t in tables) or "none") + ".", "",
             "Encoders:", ""]
    lines += [f"- {r.describe()}" for _, r in resolved]
    lines += ["", "Not run for your encoders: " + ("; ".join(skipped) if skipped else "nothing") + ".", ""]
    if profile == "smoke":
        lines += ["Smoke profile: the bundled tiles at small images — numbers are not reproductions.", ""]
    return "\n".join(lines)


PAPER_CHOICES = ("esvit", "lgffem", "chen2022", "cyphervit", "all")


def add_parser(sub) -> None:
    """``histokit evaluate``: registered by histokit.cli."""
    p = sub.add_parser("evaluate", help="your own encoders under each paper's evaluation protocols -> "
                                        "results/evaluate/<paper>/<profile>/")
    p.add_argument("--encoder", action="append", required=True, metavar="SPEC",
                   help="timm:NAME | hf-hub:ORG/REPO | open_clip:hf-hub:ORG/REPO | open_clip:MODEL@TAG | "
                        "local:PATH@TIMM_ARCH | package.module:function (repeatable)")
    p.add_argument("--paper", default="all", choices=PAPER_CHOICES)
    p.add_argument("--profile", default="smoke", choices=("smoke", "full"))
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                   help="official weights of the paper's own rows, as histokit reproduce takes them")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .models.encoder_spec import EncoderSpecError
    from .papers import list_papers
    from .runner import RunnerError

    from .models.checkpoints import recipe_checkpoint_names
    from .papers import get_recipe

    checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
    papers = list_papers() if args.paper == "all" else [args.paper]
    try:
        for paper in papers:
            own = recipe_checkpoint_names(get_recipe(paper, args.profile))  # each paper takes its own names
            out = evaluate(paper, args.profile, args.encoder, data_root=args.data_root, device=args.device,
                           seed=args.seed, checkpoints={k: v for k, v in checkpoints.items() if k in own})
            print(f"[histokit] {paper} / {args.profile}: tables with your encoders in {portable_path(out)}")
    except (EncoderSpecError, RunnerError, ValueError, FileNotFoundError) as exc:
        print(f"histokit: {exc}", file=sys.stderr)
        return 1
    return 0


def portable_path(path: Path) -> str:
    from .runner import portable

    return portable(str(Path(path).resolve()))
