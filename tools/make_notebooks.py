"""Write notebooks/*.ipynb from one description, so the seven stage notebooks start uniform.

Maintainers edit this file, run ``python tools/make_notebooks.py``, and commit the notebooks. Cells stay thin:
markdown that says what the step does, the stage's plan read from the recipe (which table or figure, which section
of which paper, which models, datasets and protocol: ``histokit.stages.plan``), and calls into histokit that run
the stage and show what it left. The one cell per notebook marked ``# NBVAL_CHECK_OUTPUT`` keeps its
(deterministic) output for nbval to compare; all others are stored empty. tests/test_notebooks.py checks the
parameters cell and the structure only, so a researcher's edit of a markdown cell or an extra cell still passes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

PARAMETERS = '''# Parameters (papermill injects overrides after this cell; the defaults run the smoke profile)
paper = "esvit"        # esvit | chen2022 | cyphervit | lgffem
profile = "smoke"      # smoke | full
data_root = ""         # empty means $HISTOKIT_DATA_ROOT or ~/histokit_data
run_dir = ""           # empty means runs/<paper>/<profile>
device = "auto"        # auto | cpu | cuda | cuda:N
seed = 0
checkpoints = {}       # official weights, e.g. {"esvit_swin_tiny": "/weights/esvit_swin_t.pth"}
rehearse = {}          # rehearsal caps of the full profile, e.g. {"max_steps": 2, "max_images_per_class": 10}
distributed = {}       # torchrun for the training runs, e.g. {"nproc_per_node": 8} (empty: one process)
encoders = []          # your encoders in 05 / 06's tables, e.g. ["timm:resnet18", "local:/w/x.pth@vit_small_patch16_224"]'''

OPEN = '''from histokit.stages import open_stage
from histokit.stages.display import show_figures, show_tables
from histokit.stages.plan import show_plan

ctx = open_stage(paper, profile, data_root, run_dir, device, seed, checkpoints, rehearse, distributed)
print(ctx.recipe.title, "|", ctx.profile, "| run directory:", ctx.run_dir)'''

# The stage's plan for the paper and profile in the parameters: the cell right after the context.
PLAN = 'show_plan(ctx, "{stage}")'

PLAN_MD = ("The cell after the parameters shows this stage's plan for the paper and profile in them, read from the "
           "recipe: which\ntables or figures, which section of the paper, which models, datasets and protocol.")

RERUN_MD = """## Re-run one {what} with other parameters

`run_one(ctx, ID, **overrides)` runs only what writes that {what}, with the overrides, reading this run's
artifacts, and writes to `<run_dir>/overrides/ID-<overrides>/`: the run's own records and {what}s stay as they are.
The {what}s of this stage and the parameters `run_one` may change:"""

RERUN = '''from histokit.stages.interactive import overridable, run_one

overridable(ctx, "{stage}")
# e.g. {example}'''

# A cell text starting with "## " is a markdown cell (see build).
YOURS_MD = """## Your encoders

With `encoders` set (specs as `histokit evaluate --encoder` takes them: `timm:NAME`, `hf-hub:ORG/REPO`,
`local:PATH@ARCH`, `package.module:function`), {what} Empty: this cell does nothing.
They run in `runs/evaluate/<paper>/<profile>/`; `histokit evaluate` also publishes them to `results/evaluate/`."""

STAGES = {
    "01_data": ("Data: datasets, splits, a look at the tiles", """
Loads every dataset the paper's recipe names through its manifest (`data_manifests/`), makes the splits once per run
(the paper's stratified 80/10/10 with the run's seed, and a group-aware variant where the data has patient or slide
ids) and writes them to the run directory, where every later stage reads them.

The smoke profile uses the 100 bundled Kather 2016 tiles (CC BY 4.0, `histokit/assets/kather2016_tiny/`).""", [
        "from histokit.stages import data as data_stage\n\nsummary = data_stage.run(ctx)\nsummary.class_counts",
        "# NBVAL_CHECK_OUTPUT\nprint(summary.class_counts.groupby(\"dataset\")[\"tiles\"].sum().to_string())",
        "summary.split_sizes",
        "show_figures(summary.figures)",
    ]),
    "02_pretrain": ("Self-supervised pretraining", """
Runs the recipe's pretraining (EsViT, DINO, iBOT, MoCo v3, SimCLR or MAE, as the paper uses) through the kit's one
training engine: AMP on GPU, EMA teacher, cosine schedule with warm-up, atomic checkpoints and resume. An official
checkpoint passed as `checkpoints={"name": path}` replaces the pretraining it stands for.""", [
        "from histokit.stages import train as train_stage\n\noutcomes = train_stage.run(ctx, \"pretrain\")\n"
        "[(o.name, o.status, o.init) for o in outcomes]",
        "show_figures(o.figure for o in outcomes)",
    ]),
    "03_finetune": ("Fine-tuning / adaptation on each dataset", """
Adapts the pretrained models on each dataset's training split as the paper describes (for Habijan et al.: EsViT's
self-supervised objective, Adam 1e-4, batch 32, 5 warm-up epochs then cosine), and the control arms (no pretraining,
the SimCLR baseline) under the same schedule.""", [
        "from histokit.stages import train as train_stage\n\noutcomes = train_stage.run(ctx, \"finetune\")\n"
        "[(o.name, o.status, o.init) for o in outcomes]",
        "show_figures(o.figure for o in outcomes)",
    ]),
    "04_index": ("Features and FAISS indexes", """
Extracts each model's features (the paper's pooling, L2-normalised) for every image, builds the exact FAISS
inner-product index of each gallery, and times extraction (amortised, batch as stated) and batch-1 retrieval
latency. Devices, batch sizes and precision are recorded beside every number.""", [
        "from histokit.stages import index as index_stage\n\nsummary = index_stage.run(ctx)\nsummary.timing",
        "from histokit.stages.interactive import feature_shapes\n\nfeature_shapes(ctx)",
    ]),
    "05_evaluate": ("Evaluation: the paper's tables", """
Runs the recipe's evaluation protocols and writes each table in the paper's layout: the reproduced number, the
paper's number and the difference, with the protocol in the footnotes.""", [
        "from histokit.stages import evaluate as evaluate_stage\n\ntables = evaluate_stage.run(ctx, \"evaluate\")\n"
        "show_tables(tables)",
        YOURS_MD.format(what="the tables above that read frozen features (retrieval with its timings, the k-NN / "
                             "linear / AUC probes,\nthe Kimia eta, the re-split k-NN) are computed again with a row "
                             "per encoder beside the paper's\nmodels, and the label fractions fine-tune them with the "
                             "paper's own recipe; each table's footnote says what ran."),
        "from histokit import byo\n\nshow_tables(byo.notebook_tables(ctx, encoders, \"evaluate\"))",
        RERUN_MD.format(what="table"),
        RERUN.format(stage="05_evaluate", example='run_one(ctx, "table1", k=20)   # esvit: Table I at k = 20'),
    ]),
    "06_ablations": ("Ablations and protocol variants", """
The paper's ablations and the protocol variants the kit adds (e.g. a patient-aware split beside the paper's random
one, so the leakage effect is visible).""", [
        "from histokit.stages import evaluate as evaluate_stage\n\ntables = evaluate_stage.run(ctx, \"ablations\")\n"
        "show_tables(tables)",
        YOURS_MD.format(what="the ablations that vary the protocol over frozen features (the random vs the "
                             "group-aware split) get a row\nper encoder; ablations of the paper's own training "
                             "settings are not run for them."),
        "from histokit import byo\n\nshow_tables(byo.notebook_tables(ctx, encoders, \"ablations\"))",
        RERUN_MD.format(what="table"),
        RERUN.format(stage="06_ablations",
                     example='run_one(ctx, "table1_splits", ap_normalization="hits")   # esvit: another AP@k'),
    ]),
    "07_visualize": ("Figures", """
The paper's figures from this run's artifacts: retrieval galleries, embedding projections, attention maps.""", [
        "from histokit.stages import visualize as visualize_stage\n\nfigures = visualize_stage.run(ctx)\n"
        "show_figures(figures)",
        RERUN_MD.format(what="figure"),
        RERUN.format(stage="07_visualize", example='run_one(ctx, "fig2", k=8)   # esvit: Fig. 2 with 8 neighbours'),
    ]),
}


def build(stage: str) -> nbformat.NotebookNode:
    title, text, cells = STAGES[stage]
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (histokit)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells.append(new_markdown_cell(f"# {stage[:2]} · {title}\n{text}\n\n{PLAN_MD}"))
    params = new_code_cell(PARAMETERS)
    params.metadata["tags"] = ["parameters"]
    nb.cells.append(params)
    nb.cells.append(new_code_cell(OPEN))
    nb.cells.append(new_code_cell(PLAN.format(stage=stage)))
    nb.cells += [new_markdown_cell(src) if src.startswith("## ") else new_code_cell(src) for src in cells]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{stage}-{i}"
    return nb


def keep_checked_outputs(nb: nbformat.NotebookNode, executed: Path) -> None:
    """Copy outputs of NBVAL_CHECK_OUTPUT cells from an executed copy (matched by source, so that an inserted cell
    does not lose them; the committed notebooks themselves serve when nothing was executed)."""
    done = {"".join(c["source"]): c for c in json.loads(executed.read_text())["cells"] if c.get("outputs")}
    for cell in nb.cells:
        if cell.cell_type == "code" and "NBVAL_CHECK_OUTPUT" in cell.source and cell.source in done:
            cell.outputs = nbformat.from_dict(done[cell.source]["outputs"])
            cell.execution_count = 1  # nbval skips an "unrun" reference cell that holds outputs


if __name__ == "__main__":
    executed_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else NOTEBOOKS  # default: keep the committed outputs
    for stage in STAGES:
        nb = build(stage)
        if (executed_dir / f"{stage}.ipynb").exists():
            keep_checked_outputs(nb, executed_dir / f"{stage}.ipynb")
        nbformat.write(nb, NOTEBOOKS / f"{stage}.ipynb")
        print("wrote", NOTEBOOKS / f"{stage}.ipynb")
