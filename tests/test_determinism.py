"""Determinism on CPU: the same seed gives bit-identical smoke results twice in a row.

The chain is the smoke profile's, shrunk: bundled tiles -> seeded split -> DINO pretraining through the one engine
(multi-crop views drawn at load time) -> feature extraction -> exact FAISS retrieval -> the metric table. Every
array is compared byte for byte; a third run with another seed must differ, so the comparison can see a change.
Run with one intra-op thread (the guarantee is for a fixed thread count; see docs/guarantees.md).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from histokit.data import load_dataset, make_split
from histokit.data.transforms import HALF_MEAN_STD, MultiCropTransform, eval_transform
from histokit.models.backbones import create_encoder
from histokit.retrieval import evaluate_retrieval, extract_features
from histokit.ssl import create_method
from histokit.train.engine import seed_everything, train

pytestmark = pytest.mark.determinism

IMG = 32


def smoke_chain(seed: int) -> dict:
    """Everything a smoke table is computed from, for one seed."""
    seed_everything(seed)
    tiles = load_dataset("kather2016_tiny")
    tiles = tiles.subset(np.arange(0, len(tiles), 2))  # 50 tiles, all 8 classes
    split = make_split(tiles.labels, fractions=(0.8, 0.2), seed=seed)
    mean = std = HALF_MEAN_STD
    views = MultiCropTransform(global_size=IMG, local_size=16, n_local=1, mean=mean, std=std)
    loader = DataLoader(tiles.subset(split["train"][:8]).with_transform(views), batch_size=4, shuffle=True,
                        drop_last=True, generator=torch.Generator().manual_seed(seed))
    method = create_method("dino", create_encoder("vit_test", img_size=IMG), out_dim=64, hidden_dim=32,
                           bottleneck_dim=16, warmup_teacher_temp_epochs=1)
    history = train(method, loader, epochs=2, lr=1e-3, warmup_epochs=1, progress=False, seed=seed)

    feats = extract_features(method.eval_encoder(), tiles.with_transform(eval_transform(IMG, mean, std)),
                             batch_size=25, progress=False)
    gallery, queries = split["train"], split["test"]
    result = evaluate_retrieval(feats.features[gallery], feats.labels[gallery], feats.features[queries],
                                feats.labels[queries], k=5)
    return {
        "split": split,
        "weights": {k: v.clone() for k, v in method.state_dict().items()},
        "history": [{k: v for k, v in e.items() if k != "seconds"} for e in history],
        "features": feats.features, "ids": result.ids, "scores": result.scores,
        "per_query": pd.DataFrame(result.per_query), "table": pd.DataFrame([result.means]),
    }


def _same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()



def test_same_seed_twice_gives_bit_identical_results_and_another_seed_does_not(one_thread):
    first, second = smoke_chain(seed=11), smoke_chain(seed=11)

    assert all(_same_bytes(first["split"][k], second["split"][k]) for k in ("train", "test"))
    assert first["weights"].keys() == second["weights"].keys()
    for key, value in first["weights"].items():
        assert torch.equal(value, second["weights"][key]), key
    assert first["history"] == second["history"]
    for key in ("features", "ids", "scores"):
        assert _same_bytes(first[key], second[key]), key
    pd.testing.assert_frame_equal(first["per_query"], second["per_query"], check_exact=True)
    pd.testing.assert_frame_equal(first["table"], second["table"], check_exact=True)
    assert first["table"].columns.tolist() == ["mAP@5", "P@5", "nDCG@5"]

    other = smoke_chain(seed=12)
    assert not _same_bytes(first["features"], other["features"])
    assert not all(torch.equal(v, other["weights"][k]) for k, v in first["weights"].items())
