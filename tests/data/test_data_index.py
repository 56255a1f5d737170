"""The data index stage 01 writes (``data/<key>/index.csv`` + ``index.json``) is what every later stage reads: it
round-trips every layout of the full profile (class folders, csv with a regression target, PanNuke's npy rows,
Kimia, tiles of VGH/NKI, a separate official test set), its splits are the ones stage 01 made, stain normalization is
fitted once, in stage 01, and a reader stops — naming the file and what to do — on a missing, edited or foreign
index."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from histokit.data.mock import write_all_mocks
from histokit.papers import get_recipe
from histokit.papers.recipe import DatasetSpec, ModelSpec, Recipe
from histokit.sidecars import SidecarError
from histokit.stages.common import load_recipe_dataset, split_indices
from histokit.stages.context import StageContext
from histokit.stages.data import write_indexes
from histokit.stages.data_index import VARIANTS, index_path, source_dataset, split_of_dataset

pytestmark = pytest.mark.filterwarnings("ignore:make_split. stratification impossible:UserWarning")

TINY = Recipe(paper="tiny", title="tiny", citation="", profile="smoke", image_size=32,
              datasets=(DatasetSpec("TILES", "kather2016_tiny"), DatasetSpec("NORM", "kather2016_tiny", stain="macenko")),
              models=(ModelSpec("tiny", "vit_test", "random"),))


def _ctx(run_dir, recipe=TINY, data_root=None, seed=0, rehearse=None) -> StageContext:
    run_dir.mkdir(parents=True, exist_ok=True)
    return StageContext(paper=recipe.paper, profile=recipe.profile, recipe=recipe, run_dir=run_dir,
                        data_root=data_root or run_dir, device="cpu", seed=seed, progress=False,
                        rehearse=dict(rehearse or {}))


@pytest.fixture(scope="module")
def mock_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mock")
    write_all_mocks(root, per_class=1, seed=0)
    return root


def _same_dataset(indexed, source):
    assert indexed.samples == source.samples and indexed.classes == source.classes
    assert np.array_equal(indexed.labels, source.labels) and indexed.labels.dtype == source.labels.dtype


@pytest.mark.parametrize("paper", ["esvit", "chen2022", "cyphervit", "lgffem"])
def test_every_full_profile_dataset_round_trips_through_its_index(mock_root, tmp_path, paper):
    ctx = _ctx(tmp_path / "run", get_recipe(paper, "full"), data_root=mock_root, rehearse={"max_images_per_class": 2})
    written = write_indexes(ctx)
    assert set(written) == {d.key for d in ctx.recipe.datasets_needed(ctx.checkpoints)}
    for key, meta in written.items():
        spec = ctx.recipe.dataset(key)
        source = source_dataset(ctx, key)
        indexed = load_recipe_dataset(ctx, key)
        if spec.stain:  # the same samples, read from the normalized tiles stage 01 wrote
            assert indexed.name == f"{source.name}+{spec.stain}"
            assert indexed[0][0].size == source[0][0].size
        _same_dataset(indexed, source)
        if spec.test_dataset:
            _same_dataset(load_recipe_dataset(ctx, key, test=True), source_dataset(ctx, key, test=True))
        for scheme in dict.fromkeys((spec.split,) + VARIANTS):
            want, got = split_of_dataset(ctx, key, source, scheme), split_indices(ctx, key, scheme)
            assert (got is None) == (want is None), (key, scheme)
            if want is not None:
                assert list(got) == list(want) and all(np.array_equal(got[k], want[k]) for k in want), (key, scheme)
        assert meta["counts"]["dataset"] == len(source) and meta["seed"] == 0
        assert set(meta["manifests"]) == {spec.dataset} | ({spec.test_dataset} if spec.test_dataset else set())


def test_array_rows_and_tiles_are_path_plus_row_or_box(mock_root, tmp_path):
    recipe = replace(TINY, datasets=(DatasetSpec("PanNuke", "pannuke", split="official"),
                                     DatasetSpec("VGH", "vgh_nki"), DatasetSpec("BPQ", "breastpathq", split="official",
                                                                                task="regression")))
    ctx = _ctx(tmp_path / "run", recipe, data_root=mock_root)
    for key in ("PanNuke", "VGH", "BPQ"):
        from histokit.stages.data_index import write_index

        write_index(ctx, key)
    import pandas as pd

    pannuke = pd.read_csv(index_path(ctx, "PanNuke"), dtype=str, keep_default_na=False)
    assert pannuke["path"].str.endswith(".npy").all() and (pannuke["row"] != "").all() and (pannuke["box"] == "").all()
    vgh = pd.read_csv(index_path(ctx, "VGH"), dtype=str, keep_default_na=False)
    assert (vgh["box"].str.count(",") == 3).all() and (vgh["row"] == "").all()
    bpq = load_recipe_dataset(ctx, "BPQ")
    assert bpq.is_regression and np.array_equal(bpq.labels, source_dataset(ctx, "BPQ").labels)  # floats exact


def test_a_later_stage_without_stage_01_is_told_to_run_it(tmp_path):
    ctx = _ctx(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match=r"data/tiles/index\.csv.*run stage 01 \(01_data\) first"):
        load_recipe_dataset(ctx, "TILES")
    with pytest.raises(FileNotFoundError, match=r"data/tiles/index\.csv"):
        split_indices(ctx, "TILES")


def test_macenko_is_fitted_once_in_stage_01_and_its_note_written_there(tmp_path, monkeypatch):
    from histokit.data.stain import MacenkoNormalizer

    ctx = _ctx(tmp_path / "run")
    write_indexes(ctx)
    assert sum("Macenko" in n for n in ctx.notes()["all"]) == 1
    notes = (ctx.results_dir / "notes.json").read_text()
    monkeypatch.setattr(MacenkoNormalizer, "fit", lambda *a: pytest.fail("a reader re-fitted Macenko"))
    raw, normed = load_recipe_dataset(ctx, "TILES"), load_recipe_dataset(ctx, "NORM")
    tumour = int(np.flatnonzero(raw.labels == raw.classes.index("TUMOR"))[0])
    a, b = (np.asarray(d[tumour][0], dtype=np.float64) for d in (raw, normed))
    assert a.shape == b.shape and np.abs(a - b).mean() > 1.0
    split_indices(ctx, "NORM")
    assert (ctx.results_dir / "notes.json").read_text() == notes, "readers write no notes"
    import pickle

    assert pickle.loads(pickle.dumps(normed))[tumour][0].tobytes() == normed[tumour][0].tobytes()  # spawn workers


def test_an_edited_or_foreign_index_stops_the_reader(tmp_path):
    ctx = _ctx(tmp_path / "run")
    write_indexes(ctx)
    with pytest.raises(SidecarError, match=r"field 'seed' is 0, expected 1.*run stage 01"):
        split_indices(_ctx(tmp_path / "run", seed=1), "TILES")
    with pytest.raises(SidecarError, match="max_images_per_class"):
        split_indices(_ctx(tmp_path / "run", rehearse={"max_images_per_class": 2}), "TILES")
    other = replace(TINY, datasets=(DatasetSpec("TILES", "kather2016_tiny", split="group"),) + TINY.datasets[1:])
    with pytest.raises(SidecarError, match=r"spec\.split"):
        split_indices(_ctx(tmp_path / "run", other), "TILES")
    path = index_path(ctx, "TILES")
    lines = path.read_text().splitlines()
    assert ",TUMOR," in lines[1]
    lines[1] = lines[1].replace(",TUMOR,", ",STROMA,")  # a label edited by hand
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SidecarError, match="index_sha256"):
        split_indices(ctx, "TILES")


def test_the_split_sizes_and_digest_are_in_the_sidecar(tmp_path):
    ctx = _ctx(tmp_path / "run")
    meta = write_indexes(ctx)["TILES"]
    side = json.loads(index_path(ctx, "TILES").with_suffix(".json").read_text())
    assert side == meta and side["splits"]["random"] == {"train": 80, "val": 10, "test": 10}
    assert side["splits"]["group"] is None and split_indices(ctx, "TILES", "group") is None  # no group ids
    assert side["manifests"]["kather2016_tiny"]["access"] == "bundled"
    from histokit.io import sha256_file

    assert side["index_sha256"] == sha256_file(index_path(ctx, "TILES"))
