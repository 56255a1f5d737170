"""What every evaluation protocol of a recipe is: a small frozen dataclass naming its table, model rows and
datasets, with its own typed parameters, a :meth:`Protocol.check` that ``Recipe.validate()`` calls, and
``run(ctx) -> records`` over the run's artifacts (stage 05 / 06 loop over them, :mod:`histokit.stages.evaluate`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


@dataclass(frozen=True)
class Protocol:
    table: str
    models: tuple
    datasets: tuple
    labels: dict = field(default_factory=dict)   # extra key columns written on every record, e.g. {"pretraining": ..}
    # weight source ("train:esvit_pretrain") -> {"row_label": ..., "note": ...}: :func:`records.weights_as_run`
    as_run: dict = field(default_factory=dict)

    kind: ClassVar[str] = ""               # the name tables' notes and `histokit evaluate` call the protocol by
    words: ClassVar[str] = ""              # the protocol in words (`histokit evaluate`'s footnotes)
    needs_images: ClassVar[bool] = False   # True: works on the images (fine-tuning), not on stage 04's features

    def row_labels(self, model: str) -> dict:
        """The key-column labels of ``model``'s records: ``labels``, then the protocol's per-row ``rows``."""
        return {**self.labels, **getattr(self, "rows", {}).get(model, {})}

    def feature_pairs(self) -> list[tuple[str, str]]:
        return [(m, d) for m in self.models for d in self.datasets]

    def check(self, recipe) -> None:
        """Raise ValueError naming the recipe, protocol and field for a parameter the recipe cannot run."""
        where = f"{recipe.paper}: {self.kind} evaluation of table {self.table!r}"
        for name in ("models", "datasets"):
            if not isinstance(getattr(self, name), tuple):
                raise ValueError(f"{where}: {name} must be a tuple, got {getattr(self, name)!r}")
        rows = getattr(self, "rows", {})
        for model in rows:
            if model not in self.models:
                raise ValueError(f"{where}: rows names {model!r}, which is not one of its models {self.models}")

    def run(self, ctx) -> list[dict]:
        raise NotImplementedError
