"""A stage's plan, read from the recipe and shown as markdown at the top of its notebook: which tables or figures the
stage produces, which section of which paper they reproduce, which models (and their weights), datasets (and what
they stand in for), protocol and training runs. Nothing here runs anything; it only describes what the recipe lists.
"""
from __future__ import annotations

from dataclasses import fields

from ..papers.recipe import Recipe, weight_sources

# --- accessors: the one place that knows how evaluations and figures are spelled in a recipe ---------------------
# Both are typed frozen dataclasses (histokit.evaluation.protocols, histokit.viz.figures): a protocol's parameters
# are its fields beyond what every protocol has (table, models, datasets, row labels, as-run rules); a figure's are
# its fields beyond its id.
PROTOCOL_COMMON = ("table", "models", "datasets", "labels", "as_run")


def evaluation_kind(spec) -> str:
    return type(spec).kind


def evaluation_table(spec) -> str:
    return spec.table


def evaluation_models(spec) -> tuple:
    return tuple(spec.models)


def evaluation_datasets(spec) -> tuple:
    return tuple(spec.datasets)


def evaluation_parameters(spec) -> dict:
    """The protocol's parameters, name -> value (what ``run_one`` may override)."""
    return {f.name: getattr(spec, f.name) for f in fields(spec) if f.name not in PROTOCOL_COMMON}


def figure_id(figure) -> str:
    return figure.id


def figure_kind(figure) -> str:
    return type(figure).kind


def figure_parameters(figure) -> dict:
    return {f.name: getattr(figure, f.name) for f in fields(figure) if f.name != "id"}


def figure_models(figure) -> tuple:
    return tuple(figure.model_rows())


def figure_datasets(figure) -> tuple:
    return (figure.dataset,)


# The section of the paper each figure reproduces (TableSpec.section says it for tables). Read in
# ../shared/seeds (its README indexes the four papers).
FIGURE_SECTIONS = {
    ("esvit", "fig2"): "Sec. II-E (query processing and similarity search), Fig. 2",
    ("chen2022", "fig_attention_heads"): "abstract (the attention heads learn distinct morphological phenotypes); "
                                         "the public repository's attention visualisations",
    ("cyphervit", "fig1_umap"): "Introduction (contribution 1) and Results, Fig. 1",
    ("cyphervit", "fig2_cls_attention"): "Results (attention maps of the final [cls] tokens), Fig. 2",
    ("lgffem", "fig3_query"): "Sec. 4.1.1 (datasets and evaluation techniques), Fig. 3",
    ("lgffem", "fig4_6_gradcam"): "Sec. 4.2.2 (explanation with CAM), Figs. 4-6",
    ("lgffem", "fig7_projection"): "Sec. 4.2.3 (visualization of learned embeddings), Fig. 7",
}

STAGE_PLANS = ("01_data", "02_pretrain", "03_finetune", "04_index", "05_evaluate", "06_ablations", "07_visualize")


def _code(value) -> str:
    return f"`{value}`"


def _short(value, limit: int = 80) -> str:
    """A parameter value as a plan line shows it: scalars whole, long containers by their size."""
    text = repr(value)
    if len(text) <= limit:
        return text
    if isinstance(value, dict):
        return f"{{{len(value)} entries: {', '.join(map(str, list(value)[:4]))}{', …' if len(value) > 4 else ''}}}"
    if isinstance(value, (list, tuple)):
        return f"[{len(value)} items]"
    return text[:limit] + "…"


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


def describe_weights(spec: str) -> str:
    """``"checkpoint:esvit_swin_tiny|train:esvit_pretrain"`` -> "official checkpoint `esvit_swin_tiny` if given,
    else trained here (`esvit_pretrain`)": the alternatives in order, first available wins."""
    words = {"random": lambda v: "random initialisation", "timm": lambda v: "timm hub weights (ImageNet)",
             "train": lambda v: f"trained here ({_code(v)})", "checkpoint": lambda v: f"official checkpoint {_code(v)}",
             "encoder": lambda v: f"your encoder {_code(v)}"}
    parts = [words.get(kind, lambda v: f"{kind}:{v}")(value)
             for kind, value in weight_sources(spec.replace("{dataset}", "<dataset>"))]
    return parts[0] if len(parts) == 1 else " if given, else ".join(parts)


def _models_section(recipe: Recipe, names) -> list[str]:
    rows = []
    for name in dict.fromkeys(names):
        model = recipe.model(name)
        rows.append([name, _code(model.encoder), describe_weights(model.weights), model.pooling or "the encoder's"])
    return ["**Models (rows)**", ""] + _table(["row", "encoder", "weights", "pooling"], rows) if rows else []


def _datasets_section(recipe: Recipe, keys) -> list[str]:
    rows = []
    for key in dict.fromkeys(keys):
        spec = recipe.dataset(key)
        extra = [f"test set {_code(spec.test_dataset)}"] if spec.test_dataset else []
        extra += [f"stain {spec.stain}"] if spec.stain else []
        extra += [f"task {spec.task}"] if spec.task != "classification" else []
        stands = f"stands in for {spec.stand_in_for}" if spec.stand_in_for else "the paper's dataset"
        rows.append([key, _code(spec.dataset), spec.split, stands, ", ".join(extra)])
    return ["**Datasets**", ""] + _table(["key", "manifest", "split", "in this profile", "notes"], rows) if rows else []


def _protocol_card(table, profile: str) -> list[str]:
    if not table.protocol:
        return []
    rows = [[p.aspect, p.paper, p.kit, "yes" if p.same else "**differs**", p.variant] for p in table.protocol]
    scope = "" if profile == "full" else f" — the full profile's settings; the {profile} profile's deviations are " \
                                          "in the table's notes"
    return [f"**Protocol card** (paper vs kit{scope})", ""] + _table(["aspect", "paper", "kit", "same", "variant"], rows)


def _evaluations_plan(recipe: Recipe, specs) -> list[str]:
    lines: list[str] = []
    by_table: dict = {}
    for spec in specs:
        by_table.setdefault(evaluation_table(spec), []).append(spec)
    if not by_table:
        return ["This recipe lists nothing for this stage."]
    for table_id, group in by_table.items():
        table = recipe.table(table_id)
        lines += [f"### {_code(table_id)} — {table.title}", ""]
        lines += [f"*Reproduces:* {table.section or 'a protocol variant the kit adds (not in the paper)'}",
                  f"*Paper's numbers:* {_code(table.paper_csv) if table.paper_csv else 'none (a kit-only table)'}", ""]
        for spec in group:
            params = ", ".join(f"{k}={_short(v)}" for k, v in evaluation_parameters(spec).items()) or "defaults"
            lines += [f"- protocol {_code(evaluation_kind(spec))} on {', '.join(map(_code, evaluation_datasets(spec)))}"
                      f" for {', '.join(evaluation_models(spec))}; parameters: {params}"]
        lines += [""]
        lines += _models_section(recipe, [m for s in group for m in evaluation_models(s)])
        lines += _datasets_section(recipe, [d for s in group for d in evaluation_datasets(s)])
        lines += _protocol_card(table, recipe.profile)
    return lines


def _training_plan(recipe: Recipe, runs, replaced) -> list[str]:
    if not runs:
        return ["This recipe has no training runs for this stage."]
    rows = [[r.name + (" (replaced by the given checkpoint)" if r.name in replaced else ""), r.method,
             _code(r.encoder), r.dataset, describe_weights(r.init), r.epochs, r.batch_size, f"{r.optimizer} {r.lr:g}"]
            for r in runs]
    lines = _table(["run", "method", "encoder", "dataset", "starts from", "epochs", "batch", "optimizer, lr"], rows)
    return lines + _datasets_section(recipe, [r.dataset for r in runs])


def _figures_plan(recipe: Recipe) -> list[str]:
    if not recipe.figures:
        return ["This recipe lists no figures."]
    lines: list[str] = []
    for fig in recipe.figures:
        fid, params = figure_id(fig), figure_parameters(fig)
        lines += [f"### {_code(fid)} — {figure_kind(fig)}", "",
                  f"*Reproduces:* {FIGURE_SECTIONS.get((recipe.paper, fid), 'a figure the kit adds')}",
                  "- parameters: " + (", ".join(f"{k}={_short(v)}" for k, v in params.items()) or "defaults"), ""]
        lines += _models_section(recipe, figure_models(fig))
        lines += _datasets_section(recipe, figure_datasets(fig))
    return lines


def _index_plan(recipe: Recipe) -> list[str]:
    rows = [[m.name, _code(m.encoder), describe_weights(m.weights), ", ".join(recipe.model_datasets(m.name))]
            for m in recipe.models]
    lines = [f"Features for every (model, dataset) pair below, extraction batch {recipe.extraction_batch_size}, "
             + ("L2-normalised" if recipe.feature_l2_normalize else "raw (not L2-normalised)") + "; exact FAISS index "
             "of each gallery; batch-1 timings.", ""]
    return lines + _table(["model", "encoder", "weights", "datasets"], rows)


def _data_plan(recipe: Recipe, checkpoints) -> list[str]:
    needed = recipe.datasets_needed(checkpoints)
    users: dict = {}
    for spec in recipe.evaluations + recipe.ablations:
        for key in evaluation_datasets(spec):
            users.setdefault(key, []).append(evaluation_table(spec))
    for fig in recipe.figures:
        for key in figure_datasets(fig):
            users.setdefault(key, []).append(figure_id(fig))
    for run in recipe.pretrain + recipe.finetune:
        users.setdefault(run.dataset, []).append(f"training {run.name}")
    lines = _datasets_section(recipe, [d.key for d in needed])
    lines += ["**Read by**", ""]
    lines += [f"- {_code(d.key)}: {', '.join(dict.fromkeys(users.get(d.key, [])))}" for d in needed]
    return lines + [""]


def stage_plan(recipe: Recipe, stage: str, checkpoints=None) -> str:
    """The plan of one stage (a name of :data:`STAGE_PLANS`) for this recipe, as markdown."""
    if stage not in STAGE_PLANS:
        raise ValueError(f"unknown stage {stage!r} for a plan; stages are {', '.join(STAGE_PLANS)}")
    head = [f"## Plan of {stage} — {recipe.title}", "", f"{recipe.citation} Profile {_code(recipe.profile)}."
            + (" Smoke numbers only prove the path runs: they are never a reproduction." if recipe.profile == "smoke"
               else ""), ""]
    if stage == "01_data":
        body = _data_plan(recipe, checkpoints)
    elif stage in ("02_pretrain", "03_finetune"):
        runs = recipe.pretrain if stage == "02_pretrain" else recipe.finetune
        body = _training_plan(recipe, runs, recipe.replaced_runs(checkpoints) if stage == "02_pretrain" else set())
    elif stage == "04_index":
        body = _index_plan(recipe)
    elif stage in ("05_evaluate", "06_ablations"):
        body = _evaluations_plan(recipe, recipe.evaluations if stage == "05_evaluate" else recipe.ablations)
    else:
        body = _figures_plan(recipe)
    return "\n".join(head + body).rstrip() + "\n"


def show_plan(ctx, stage: str) -> None:
    """Display the stage's plan: markdown in a notebook, printed elsewhere (:func:`stage_plan` returns the text)."""
    text = stage_plan(ctx.recipe, stage, ctx.checkpoints)
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:
        get_ipython = None  # noqa: N806
    if get_ipython is not None and get_ipython() is not None:
        display(Markdown(text))
    else:
        print(text)
