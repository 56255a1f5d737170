"""Stage 07: the figures a recipe lists (typed parts of :mod:`histokit.viz.figures`, each ``run(ctx) -> Path``)."""
from __future__ import annotations

from pathlib import Path

from .context import StageContext


def run(ctx: StageContext) -> list[Path]:
    return [figure.run(ctx) for figure in ctx.recipe.figures]
