"""Fake stage-04 features for the tests that read them (cross-paper benchmark, integrity chain, run_one)."""
from __future__ import annotations

import json
import re

import numpy as np

from histokit.papers import get_recipe
from histokit.retrieval.features import FeatureSet, save_features
from histokit.run_identity import recipe_digest


def write_features(runs, paper, profile, model, key, feats, labels, test=False):
    slug = lambda s: re.sub(r"[^a-z0-9._-]+", "_", s.lower()).strip("_")  # noqa: E731  (histokit.stages' slug)
    path = runs / paper / profile / "features" / slug(model) / (slug(key) + ("__test" if test else "") + ".npz")
    sha = save_features(path, FeatureSet(feats, labels, np.arange(len(labels)), {"device": "cpu"}))
    run = {"paper": paper, "profile": profile, "recipe": recipe_digest(get_recipe(paper, profile))}
    path.with_suffix(".json").write_text(json.dumps({"sha256": sha, "model": model, "dataset": key, "test": test,
                                                     "run": run, "weights": "fake", "timing": {}}))
    return path


def clustered(labels, seed, dim=16, noise=0.3):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(int(labels.max()) + 1, dim))
    return (centers[labels] + noise * rng.normal(size=(len(labels), dim))).astype(np.float32)
