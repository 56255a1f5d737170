"""The common benchmark explains a tie (issue 16: kNN top-1 70.0 for 17 of 19 methods on kather2016_tiny+macenko,
random ones included): with 10 test images an accuracy has 11 possible values, and near-identical features (the
same seeded ViT initialisation, barely trained) get the same images right. The table's footnote says so, counted
from the rows themselves."""
import json
import re

import numpy as np

from histokit.crosspaper import run_benchmark
from histokit.data.datasets import load_dataset
from histokit.papers import get_recipe
from histokit.retrieval.features import FeatureSet, save_features
from histokit.run_identity import recipe_digest


def _write(runs, model, feats, labels, weights):
    slug = re.sub(r"[^a-z0-9._-]+", "_", model.lower()).strip("_")
    path = runs / "esvit" / "smoke" / "features" / slug / "crc.npz"
    sha = save_features(path, FeatureSet(feats, labels, np.arange(len(labels)), {"device": "cpu"}))
    run = {"paper": "esvit", "profile": "smoke", "recipe": recipe_digest(get_recipe("esvit", "smoke"))}
    path.with_suffix(".json").write_text(json.dumps({"sha256": sha, "model": model, "dataset": "CRC", "test": False,
                                                     "run": run, "weights": weights, "timing": {}}))


def test_a_tie_of_most_methods_gets_a_footnote_that_counts_it(tmp_path):
    labels = load_dataset("kather2016_tiny").labels
    rng = np.random.default_rng(0)
    base = rng.normal(size=(len(labels), 16)).astype(np.float32)  # one "random encoder"...
    runs = tmp_path / "runs"
    weights = ("random init: ImageNet weights unreachable", "trained here on 80 bundled Kather 2016 tiles (a)",
               "trained here on 80 bundled Kather 2016 tiles (b)")
    for i, w in enumerate(weights):  # ...and two barely moved from it: the same neighbours, the same votes
        _write(runs, f"m{i}", base + 1e-4 * rng.normal(size=base.shape).astype(np.float32), labels, w)
    centers = rng.normal(size=(int(labels.max()) + 1, 16))
    _write(runs, "clustered", (centers[labels] + 0.3 * rng.normal(size=(len(labels), 16))).astype(np.float32),
           labels, "trained here (c)")
    out = run_benchmark("smoke", runs_dir=runs, out=tmp_path / "benchmark" / "smoke")
    table = out["table"]
    knn = table.set_index("model")["kNN top-1"]
    assert knn["m0"] == knn["m1"] == knn["m2"] != knn["clustered"]
    md = out["md"].read_text()
    (note,) = [line for line in md.splitlines() if "kNN top-1 is" in line]
    assert f"kather2016_tiny: kNN top-1 is {knn['m0']:.2f} for 3 of 4 methods" in note
    assert "1 of them with randomly initialised weights" in note and "steps of 10 points" in note
    assert "3 of the 3 miss exactly the same test images" in note
    assert "weights" in table.columns and "_hits" not in table.columns
