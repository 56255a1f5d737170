"""What every figure of a recipe is: a small frozen dataclass with its id (the file ``<id>.png``), the model rows and
the dataset it shows, its typed parameters, and ``run(ctx) -> Path`` (stage 07 loops over them)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar


@dataclass(frozen=True)
class Figure:
    id: str

    kind: ClassVar[str] = ""
    needs_features: ClassVar[bool] = True   # False: computed from the model and images, not stage 04's features

    def model_rows(self) -> tuple:
        """The recipe models the figure shows (one ``model`` unless the figure says otherwise)."""
        return (self.model,)

    def check(self, recipe) -> None:
        """Raise ValueError naming the figure and field when a model or dataset is not the recipe's."""
        names, keys = {m.name for m in recipe.models}, {d.key for d in recipe.datasets}
        for model in self.model_rows():
            if model not in names:
                raise ValueError(f"{recipe.paper}: figure {self.id!r} ({self.kind}) names unknown model {model!r}")
        if self.dataset not in keys:
            raise ValueError(f"{recipe.paper}: figure {self.id!r} ({self.kind}) names unknown dataset "
                             f"{self.dataset!r}")

    def caption(self) -> str:
        """``fig2: retrieval gallery (model=..., dataset=..., k=5)``: the figure and its parameters, for the report."""
        detail = ", ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self) if f.name != "id")
        return f"{self.id}: {self.kind.replace('_', ' ')}" + (f" ({detail})" if detail else "")

    def path(self, ctx):
        return ctx.results_dir / f"{self.id}.png"

    def run(self, ctx):
        raise NotImplementedError
