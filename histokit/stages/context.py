"""The state one stage notebook works with: the recipe, the run directory and the run's notes."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import paths
from ..data.loading import seed_everything  # noqa: F401  (the kit's one; stages import it from here too)
from ..device import configure_backends, resolve_device
from ..io import atomic_write_json
from ..io import slug as io_slug
from ..papers import get_recipe
from ..papers.recipe import Recipe
from ..run_identity import check_stage_identity, run_identity


def slug(text: str) -> str:
    """A file-system-safe name for a model row or dataset key ("EsViT + k-NN" -> "esvit_k-nn")."""
    return io_slug(text, sep="_", keep="._-")


@dataclass
class StageContext:
    paper: str
    profile: str
    recipe: Recipe
    run_dir: Path
    data_root: Path
    device: str
    seed: int
    checkpoints: dict = field(default_factory=dict)
    progress: bool = True
    rehearse: dict = field(default_factory=dict)      # {} or caps: max_steps, max_images_per_split
    distributed: dict = field(default_factory=dict)   # {} or torchrun flags: nproc_per_node, nnodes, ...
    backends: dict = field(default_factory=dict)      # cuDNN / TF32 / matmul flags set by open_stage

    @property
    def rehearsal(self) -> bool:
        """A rehearsal runs the full recipe with only optimisation steps and images per split capped."""
        return bool(self.rehearse)

    @property
    def label(self) -> str:
        """``rehearsal`` for a rehearsal of the full profile, else the profile: what tables and notes call the run."""
        return "rehearsal" if self.rehearsal else self.profile

    @property
    def max_steps(self):
        return self.rehearse.get("max_steps") if self.rehearse else None

    @property
    def results_dir(self) -> Path:
        return self.run_dir / "results"

    def path(self, *parts: str) -> Path:
        return self.run_dir.joinpath(*parts)

    # Notes are footnotes gathered across stages (e.g. "ImageNet weights unreachable: random init") that the
    # tables must carry; they persist in the run directory because every notebook runs in its own kernel.
    def _notes_file(self) -> Path:
        return self.results_dir / "notes.json"

    def notes(self) -> dict:
        f = self._notes_file()
        return json.loads(f.read_text()) if f.exists() else {}

    def replace_notes(self, scope: str, prefix: str) -> None:
        """Drop the notes of ``scope`` that start with ``prefix`` (a note whose wording the code has since changed)."""
        notes = self.notes()
        kept = [n for n in notes.get(scope, []) if not n.startswith(prefix)]
        if kept != notes.get(scope, []):
            notes[scope] = kept
            atomic_write_json(self._notes_file(), notes)

    def add_note(self, scope: str, text: str) -> None:
        """Record a footnote for a table id (or "all"); repeated notes are stored once."""
        notes = self.notes()
        bucket = notes.setdefault(scope, [])
        if text not in bucket:
            bucket.append(text)
            atomic_write_json(self._notes_file(), notes)


REHEARSAL_NOTE = ("REHEARSAL — not a reproduction: the full profile's exact recipe (full-size models, heads, "
                  "optimisers, schedules, every training run, evaluation, table and figure) on the data under "
                  "{data_root} with only the optimisation steps capped ({max_steps} per training run, schedules kept at "
                  "full length), at most {max_images_per_class} images per class and split, and at most "
                  "{max_train_images} training images per training run (which bounds its batch); timings from one "
                  "pass without warm-up, the amortized one at a batch of at most 8 images; on a CPU, features extracted at a batch of at most "
                  "32 (the same features in eval mode, twice as fast per image). On mock data "
                  "(`histokit data mock`) every number is meaningless; it proves the path runs.")


def _portable_path(path: Path) -> str:
    """A path as a note in a committed table shows it: relative to the repository (or ~/) where it lies there."""
    from ..paths import portable

    return portable(str(Path(path).resolve()))


def open_stage(paper: str = "esvit", profile: str = "smoke", data_root: str = "", run_dir: str = "",
               device: str = "auto", seed: int = 0, checkpoints: dict | None = None, rehearse: dict | None = None,
               distributed: dict | None = None) -> StageContext:
    """What every stage notebook calls first; empty strings mean the defaults (``histokit.paths``).

    Before anything is read or written it checks that ``paper``, ``profile``, the recipe they give and ``run_dir``
    are the run directory's own (``<run_dir>/identity.json``, :mod:`histokit.run_identity`): a stage handed another
    paper, profile or run directory than its run's stops with :class:`~histokit.run_identity.IdentityError`."""
    recipe = get_recipe(paper, profile)
    ctx = StageContext(paper=paper, profile=profile, recipe=recipe,
                       run_dir=Path(run_dir) if run_dir else paths.default_run_dir(paper, profile),
                       data_root=Path(data_root) if data_root else paths.DATA_ROOT,
                       device=resolve_device(device), seed=int(seed), checkpoints=dict(checkpoints or {}),
                       rehearse=dict(rehearse or {}), distributed=dict(distributed or {}))
    check_stage_identity(ctx.run_dir, run_identity(paper, profile, ctx.label, ctx.run_dir, recipe))
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(ctx.seed)
    ctx.backends = configure_backends(ctx.device)  # each stage (and torchrun worker) is its own process
    for note in recipe.notes:
        ctx.add_note("all", note)
    if ctx.rehearsal:  # one rehearsal note, describing the caps of the code that runs now
        ctx.replace_notes("all", REHEARSAL_NOTE.split(":", 1)[0])
        ctx.add_note("all", REHEARSAL_NOTE.format(**{"max_steps": "?", "max_images_per_class": "?",
                                                     "max_train_images": "all", **ctx.rehearse},
                                                  data_root=_portable_path(ctx.data_root)))
    return ctx
