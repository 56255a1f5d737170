"""Every feature set the papers' runs stored for one profile, grouped by the data underneath.

Each run keeps ``runs/<paper>/<profile>/features/<model-slug>/<dataset-slug>.npz`` with a ``.json`` sidecar
``{sha256, model, dataset, test, run, weights, timing}`` (histokit.stages.index); a dataset with an official test
set adds ``<dataset-slug>__test.npz``. A sidecar must name the recipe model and dataset its place names, and the
paper, profile and recipe digest of the run it lies in; one that does not (a file copied over another model's)
is refused by name. Papers name the same images differently (esvit "CRC", chen2022 "CRC-NONORM", lgffem
"Kimia" are all the bundled tiles in smoke), so feature sets are grouped by what the recipe says is underneath:
the manifest, the stain normalization, the protocol's class merges and the official test set (:func:`data_key`).
Feature sets of one group share their images and labels, hence one split (:func:`common_split`) serves every
method.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .. import paths
from ..data.splits import make_split
from ..io import slug
from ..papers.recipe import DatasetSpec
from ..retrieval.features import FeatureFileError, FeatureSet, l2_normalize, load_features
from ..run_identity import recipe_digest
from ..sidecars import SidecarError, check_sidecar

SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
SPLIT_SEED = 0
TEST_SUFFIX = "__test"
_SIDECAR_FIELDS = ("sha256", "model", "dataset")


def data_key(spec: DatasetSpec) -> str:
    """``<manifest>[+<stain>][+<merges>][ (test: <official test set>)]``, e.g. ``kather2016_tiny+macenko`` or
    ``nct_crc_he_100k+MUS→STR (test: crc_val_he_7k)``: two recipe datasets with the same key are the same images
    with the same labels."""
    key = spec.dataset
    if spec.stain:
        key += f"+{spec.stain}"
    if spec.merges:
        key += "+" + ",".join(f"{src}→{dst}" for src, dst in spec.merges)
    if spec.test_dataset:
        key += f" (test: {spec.test_dataset})"
    return key


def file_slug(text: str) -> str:
    """A data key or split name as a file-name part (``kather2016_tiny+macenko`` stays as it is)."""
    return slug(text, sep="_", keep=".+-", lower=False)


@dataclass(frozen=True)
class FeatureEntry:
    """One stored feature set: a paper's model on one of its recipe datasets."""
    paper: str
    model: str
    key: str                        # the recipe's dataset key ("CRC", "CRC-NONORM", ...)
    spec: DatasetSpec
    path: Path
    sha256: str
    weights: str
    test_path: Optional[Path] = None
    test_sha256: Optional[str] = None
    model_rank: int = 0             # the model's place in its recipe: rows keep the paper's order
    l2_normalized: bool = True      # the sidecar's: False for a recipe that stores raw embeddings (chen2022)

    @property
    def method(self) -> str:
        return f"{self.paper}: {self.model}"

    def load(self) -> tuple[FeatureSet, Optional[FeatureSet]]:
        """(features of the dataset in dataset order, features of its official test set or None), sha256-checked;
        L2-normalized here when the run stored raw embeddings, so every method is compared on cosine similarity."""
        def read(path, sha):
            fs = in_dataset_order(load_features(path, expected_sha256=sha), path)
            if not self.l2_normalized:
                fs = FeatureSet(l2_normalize(fs.features), fs.labels, fs.indices, fs.timing)
            return fs

        main = read(self.path, self.sha256)
        test = read(self.test_path, self.test_sha256) if self.test_path is not None else None
        return main, test


@dataclass
class DataGroup:
    key: str
    spec: DatasetSpec               # the first recipe dataset seen with this key (all agree on what data_key names)
    entries: list = field(default_factory=list)

    @property
    def regression(self) -> bool:
        return self.spec.task == "regression"


@dataclass
class Collection:
    profile: str
    runs_dir: Path
    groups: dict                    # data key -> DataGroup, in the order found
    papers_found: list
    papers_missing: list
    notes: list = field(default_factory=list)

    @property
    def n_feature_sets(self) -> int:
        return sum(len(g.entries) for g in self.groups.values())


def shown_path(path: Path) -> str:
    """A path as the committed tables show it: relative to the repository when inside it (no machine's home)."""
    try:
        return Path(path).resolve().relative_to(paths.REPO_DIR.resolve()).as_posix()
    except ValueError:
        return str(path)


def in_dataset_order(fs: FeatureSet, path: Path) -> FeatureSet:
    """Rows sorted by dataset index; the file must cover the whole dataset (indices 0..N-1), since splits index it."""
    n = len(fs)
    if np.array_equal(fs.indices, np.arange(n)):
        return fs
    order = np.argsort(fs.indices, kind="stable")
    if not np.array_equal(fs.indices[order], np.arange(n)):
        raise FeatureFileError(f"feature file {path}: field 'indices' is not a permutation of 0..{n - 1}; the "
                               "common benchmark needs features of every image of the dataset")
    return FeatureSet(fs.features[order], fs.labels[order], fs.indices[order], fs.timing)


def _read_sidecar(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise FeatureFileError(f"feature sidecar {path} is not readable JSON: {err}") from err
    missing = [k for k in _SIDECAR_FIELDS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise FeatureFileError(f"feature sidecar {path} lacks field(s) {missing} (expected {list(_SIDECAR_FIELDS)})")
    return meta


def collect_feature_sets(profile: str, runs_dir: Optional[Path] = None) -> Collection:
    """Every ``features/*/*.npz`` of every paper's run for ``profile`` under ``runs_dir`` (default runs/)."""
    from ..papers import get_recipe, list_papers
    from ..stages.common import slug

    runs_dir = Path(paths.RUNS_DIR if runs_dir is None else runs_dir)
    groups: dict = {}
    found, missing, notes = [], [], []
    for paper in list_papers():
        feature_dir = runs_dir / paper / profile / "features"
        if not feature_dir.is_dir():
            missing.append(paper)
            continue
        recipe = get_recipe(paper, profile)
        found.append(paper)
        models = {slug(m.name): m.name for m in recipe.models}
        datasets = {slug(d.key): d.key for d in recipe.datasets}
        digest = recipe_digest(recipe)
        for sidecar in sorted(feature_dir.glob("*/*.json")):
            if sidecar.stem.endswith(TEST_SUFFIX):
                continue  # read with its dataset's main file below
            meta = _read_sidecar(sidecar)
            # what the file is, by where stage 04 wrote it (features/<model slug>/<dataset slug>.npz): the sidecar
            # must say the same, and that this paper's run of this profile under today's recipe wrote it
            npz = sidecar.with_suffix(".npz")
            remedy = (f"re-run stage 04 of the {paper} {profile} run (histokit reproduce {paper}), or delete {npz} "
                      "and its sidecar")
            key = datasets.get(sidecar.stem)
            if key is None:
                notes.append(f"{shown_path(sidecar)}: dataset file {sidecar.stem!r} is not one of the {paper} "
                             f"{profile} recipe's datasets; skipped")
                continue
            model = models.get(sidecar.parent.name)
            if model is None:  # no row of today's recipe: the sidecar's model must still be its folder's
                model = str(meta.get("model"))
                if slug(model) != sidecar.parent.name:
                    raise SidecarError(f"sidecar {sidecar} describes another artifact than the features in model "
                                       f"folder {sidecar.parent.name!r}: field 'model' is {model!r} (folder "
                                       f"{slug(model)!r}); {remedy}")
            spec = recipe.dataset(key)
            expected = {"model": model, "dataset": key, "run": {"paper": paper, "profile": profile, "recipe": digest}}
            check_sidecar(sidecar, {**expected, "test": False}, meta=meta, remedy=remedy,
                          what=f"the features of {model!r} on {key!r} of the {paper} {profile} run")
            if not npz.is_file():
                raise FeatureFileError(f"feature sidecar {sidecar} has no feature file beside it ({npz.name})")
            test_path = test_sha = None
            if spec.test_dataset:
                test_sidecar = sidecar.with_name(sidecar.stem + TEST_SUFFIX + ".json")
                if not test_sidecar.is_file():
                    notes.append(f"{paper}: {meta['model']} on {meta['dataset']}: no features of the official test "
                                 f"set {spec.test_dataset} ({test_sidecar.name} missing); skipped")
                    continue
                test_meta = check_sidecar(test_sidecar, {**expected, "test": True}, meta=_read_sidecar(test_sidecar),
                                          remedy=remedy, what=f"the features of {model!r} on the official test set "
                                                              f"of {key!r} of the {paper} {profile} run")
                test_path, test_sha = test_sidecar.with_suffix(".npz"), test_meta["sha256"]
            ranks = {m.name: i for i, m in enumerate(recipe.models)}
            entry = FeatureEntry(paper, str(meta["model"]), spec.key, spec, npz, str(meta["sha256"]),
                                 str(meta.get("weights", "")), test_path, test_sha,
                                 ranks.get(str(meta["model"]), len(ranks)), bool(meta.get("l2_normalized", True)))
            key = data_key(spec)
            groups.setdefault(key, DataGroup(key, spec)).entries.append(entry)
    return Collection(profile, runs_dir, groups, found, missing, notes)


def common_split(labels: np.ndarray) -> dict:
    """The one split every method of a data group is evaluated on: stratified 80/10/10, seed 0 (make_split)."""
    return make_split(labels, fractions=SPLIT_FRACTIONS, seed=SPLIT_SEED)


def check_same_labels(reference: np.ndarray, fs: FeatureSet, entry: FeatureEntry, what: str = "") -> None:
    """Feature sets grouped as one data must label the same images the same way, or one split cannot serve them."""
    if fs.labels.shape != reference.shape or not np.array_equal(fs.labels, reference):
        raise FeatureFileError(
            f"feature file {entry.test_path if what == 'test' else entry.path}: its labels differ from the other "
            f"feature sets of data {data_key(entry.spec)!r} ({len(fs.labels)} vs {len(reference)} labels); "
            "re-run that paper's index stage")


def check_profile_folder(out: Path, profile: str, kind: str) -> Path:
    """Refuse to write one profile's tables into a folder named after another profile."""
    from ..runner import PROFILES

    out = Path(out)
    if out.name in PROFILES and out.name != profile:
        raise ValueError(f"{kind} of profile {profile!r} would be written to {out}, the {out.name!r} profile's "
                         f"folder; pass out=.../{kind}/{profile}")
    return out
