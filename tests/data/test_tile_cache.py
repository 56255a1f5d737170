"""The decoded-tile cache on the bundled real Kather 2016 tiles: same pixels and features as the file path, reuse,
checksum, and batched serving."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from histokit.data.datasets import PatchDataset, Sample
from histokit.data.tile_cache import TileCache, TileCacheError, build_tile_cache, decode_resize_torchvision
from histokit.data.transforms import eval_transform
from histokit.models.backbones import create_encoder
from histokit.paths import BUNDLED_TILES_DIR
from histokit.retrieval.features import extract_features

SIZE = 32


@pytest.fixture(scope="module")
def tiles():
    rows = pd.read_csv(BUNDLED_TILES_DIR / "labels.csv").iloc[::9].head(10)
    samples = [Sample(str(BUNDLED_TILES_DIR / p), int(y)) for p, y in zip(rows["path"], rows["label"])]
    return PatchDataset(samples, [f"c{i}" for i in range(8)], name="kather-tiny")


def test_cache_pixels_and_features_equal_the_file_path(tmp_path, tiles):
    cache = build_tile_cache(tiles, tmp_path / "c.npy", SIZE)
    assert len(cache) == 10 and cache.images.shape == (10, SIZE, SIZE, 3) and cache.images.dtype == np.uint8
    files = tiles.with_transform(eval_transform(SIZE))
    x, y, i = cache[3]
    assert x.dtype == torch.uint8 and x.shape == (3, SIZE, SIZE) and (y, i) == (int(tiles.labels[3]), 3)
    # uint8 / 255 then (x - mean) / std on the cached pixels is eval_transform on the file, bit for bit.
    mean, std = (torch.tensor(v).reshape(3, 1, 1) for v in cache.mean_std)
    np.testing.assert_array_equal(((x.float() / 255.0 - mean) / std).numpy(), files[3][0].numpy())

    torch.manual_seed(0)
    enc = create_encoder("vit_test", img_size=SIZE)
    from_files = extract_features(enc, files, batch_size=4, progress=False)
    from_cache = extract_features(enc, cache, batch_size=4, progress=False)
    assert from_cache.timing["decode_included"] is False and from_cache.timing["input_dtype"] == "uint8"
    np.testing.assert_allclose(from_cache.features, from_files.features, atol=1e-6)
    np.testing.assert_array_equal(from_cache.labels, tiles.labels)


def test_batched_fetch_matches_single_items(tmp_path, tiles):
    cache = build_tile_cache(tiles, tmp_path / "c.npy", SIZE)
    batch = cache.__getitems__([7, 2, 5])
    for (xb, yb, ib), i in zip(batch, [7, 2, 5]):
        x, y, idx = cache[i]
        assert torch.equal(xb, x) and (yb, ib) == (y, idx)


def test_reused_when_sources_unchanged_and_rebuilt_when_changed(tmp_path, tiles):
    path = tmp_path / "c.npy"
    build_tile_cache(tiles, path, SIZE)
    stamp = path.stat().st_mtime_ns
    build_tile_cache(tiles, path, SIZE)
    assert path.stat().st_mtime_ns == stamp  # decoded once
    build_tile_cache(tiles, path, SIZE + 8)  # another size is another fingerprint: rebuilt
    assert TileCache(path).images.shape[1] == SIZE + 8
    assert not list(tmp_path.glob(".*tmp"))


def test_corruption_and_missing_files_are_named(tmp_path, tiles):
    path = tmp_path / "c.npy"
    build_tile_cache(tiles, path, SIZE)
    arr = np.load(path, mmap_mode="r+")
    arr[0, 0, 0, 0] ^= 0xFF
    arr.flush()
    del arr
    with pytest.raises(TileCacheError, match="sha256"):
        TileCache(path)
    side = tmp_path / "c.npy.json"
    meta = json.loads(side.read_text())
    del meta["labels"]
    side.write_text(json.dumps(meta))
    with pytest.raises(TileCacheError, match="labels"):
        TileCache(path, verify=False)
    with pytest.raises(TileCacheError, match="not found"):
        TileCache(tmp_path / "none.npy")
    with pytest.raises(ValueError, match="decoder"):
        build_tile_cache(tiles, path, SIZE, decoder="opencv")


def test_torchvision_decoder_close_to_pil(tmp_path, tiles):
    # JPEG copies, decoded by torchvision on the CPU (the same call decodes on the GPU when device is cuda).
    jpegs = []
    for s in tiles.samples[:4]:
        out = tmp_path / (s.path.rsplit("/", 1)[-1] + ".jpg")
        Image.open(s.path).convert("RGB").save(out, quality=90)
        jpegs.append(Sample(str(out), s.label))
    ds = PatchDataset(jpegs, tiles.classes)
    pil = build_tile_cache(ds, tmp_path / "pil.npy", SIZE)
    tv = build_tile_cache(ds, tmp_path / "tv.npy", SIZE, decoder="torchvision", batch_size=3)
    diff = np.abs(pil.images.astype(int) - tv.images.astype(int))
    assert diff.mean() < 3.0 and diff.max() <= 64
    direct = decode_resize_torchvision([s.path for s in jpegs], SIZE)
    assert direct.shape == (4, 3, SIZE, SIZE) and direct.dtype == torch.uint8
    np.testing.assert_array_equal(direct.permute(0, 2, 3, 1).numpy(), tv.images)


def test_stage_04_decodes_a_dataset_once_for_its_models_and_their_features_are_unchanged(tmp_path, monkeypatch):
    """Two models (different input normalisations) on one dataset: stage 04 decodes its images once into a tile
    cache, each model reads it with its own mean / std, the features are bit-identical to decoding per model, and
    the cache is gone when the stage ends."""
    from histokit.evaluation.protocols import Retrieval
    from histokit.papers.recipe import DatasetSpec, ModelSpec, Recipe
    from histokit.retrieval.features import load_features
    from histokit.stages import index as stage
    from histokit.stages.context import StageContext
    from histokit.stages.data import write_indexes

    models = (ModelSpec("a", "vit_test", "random"),
              ModelSpec("b", "resnet_test", "random", mean=(0.7, 0.6, 0.7), std=(0.15, 0.2, 0.1)))
    recipe = Recipe(paper="tiny", title="tiny", citation="", profile="smoke", image_size=32,
                    datasets=(DatasetSpec("TILES", "kather2016_tiny"),), models=models,
                    evaluations=(Retrieval("table1", ("a", "b"), ("TILES",)),))

    def context(run_dir):
        ctx = StageContext(paper="tiny", profile="smoke", recipe=recipe, run_dir=run_dir, data_root=tmp_path,
                           device="cpu", seed=0, progress=False)
        write_indexes(ctx)  # stage 01: the data index stage 04 reads
        return ctx

    built, real = [], stage.build_tile_cache
    monkeypatch.setattr(stage, "build_tile_cache", lambda *a, **kw: built.append(a[1]) or real(*a, **kw))
    import histokit.data.tile_cache as tile_cache

    tiles_decoded, real_tile = [], tile_cache._pil_tile
    monkeypatch.setattr(tile_cache, "_pil_tile", lambda d, i, size: tiles_decoded.append(i) or real_tile(d, i, size))
    decodes, real_getitem = [], PatchDataset.__getitem__
    monkeypatch.setattr(PatchDataset, "__getitem__", lambda self, i: decodes.append(i) or real_getitem(self, i))
    cached = context(tmp_path / "cached")
    stage.run(cached)
    n = len(load_features(stage.feature_path(cached, "a", "TILES")).labels)
    # one decode per image (the cache's), however many models; both models' sidecars name the cache they read
    assert len(built) == 2 and built[0] == built[1] and len(tiles_decoded) == n and len(decodes) == 0
    for model in ("a", "b"):
        timing = stage.check_feature_sidecar(cached, model, "TILES")["timing"]
        assert timing["tile_cache"] == built[0].name and timing["decode_included"] is False
    assert not stage.tile_cache_dir(cached).exists()

    plain = context(tmp_path / "plain")
    for model in ("a", "b"):
        stage.extract_pair(plain, model, "TILES", timed=False)  # tile_cache=False: each image decoded per model
        ours, theirs = (load_features(stage.feature_path(c, model, "TILES")) for c in (cached, plain))
        assert np.array_equal(ours.features, theirs.features) and np.array_equal(ours.labels, theirs.labels)
        assert np.array_equal(ours.indices, theirs.indices)
    assert len(decodes) == 2 * n
