"""LGFFEM (Nuñez-Fernández et al. 2025) protocol as the paper / the ffnir public code states it (issue 16)."""
from types import SimpleNamespace

import numpy as np
import pytest

from histokit.papers import get_recipe


def test_full_recipe_epochs_per_strategy_are_sec_4_1_3():
    # "Strategy A used a batch size of 64 for 60 epochs, while strategies B and C ... 300 epochs" (B was 60 before).
    full = {t.name: t for t in get_recipe("lgffem", "full").pretrain}
    assert full["lgffem_A"].epochs == 60
    assert full["lgffem_B"].epochs == 300
    assert full["lgffem_C"].epochs == 300
    assert all(t.batch_size == 64 for t in full.values())


class _Official:
    """A dataset with an official split: ``splits`` and ``labels`` are all the split code reads."""

    def __init__(self, parts):  # [(split name, label), ...]
        self.splits = [s for s, _ in parts]
        self.labels = np.asarray([y for _, y in parts])

    def __len__(self):
        return len(self.splits)


def _split_of(monkeypatch, key, dataset):
    from histokit.stages import common

    monkeypatch.setattr(common, "load_recipe_dataset", lambda ctx, k, test=False: dataset)
    ctx = SimpleNamespace(recipe=get_recipe("lgffem", "full"), seed=0)
    return common.split_indices(ctx, key)


def test_kimia_trains_on_and_searches_the_whole_official_training_set(monkeypatch):
    # 2 scans x 10 training patches + 3 test patches. Before: 10 % of train was cut out as val (18 of 20 kept).
    data = _Official([("train", i % 2) for i in range(20)] + [("test", i % 2) for i in range(3)])
    split = _split_of(monkeypatch, "Kimia", data)
    assert split["train"].tolist() == list(range(20))
    assert split["val"].size == 0
    assert split["test"].tolist() == [20, 21, 22]


def test_pannuke_trains_on_fold_1_as_pathml_split_1(monkeypatch):
    # PathML PanNukeDataModule(split=1).train_dataloader = fold 1 only. Before: folds 1 + 2 minus a 10 % val.
    data = _Official([("fold1", 0), ("fold1", 1), ("fold2", 0), ("fold2", 1), ("fold3", 0), ("fold3", 1)])
    split = _split_of(monkeypatch, "PanNuke", data)
    assert split["train"].tolist() == [0, 1]
    assert split["val"].size == 0
    assert split["test"].tolist() == [4, 5]


def test_imagenet_trains_on_every_image(monkeypatch):
    # torchvision ImageNet(split="train"): all of it. Before: a random 80 % (80/10/10).
    data = _Official([(None, i % 4) for i in range(40)])
    split = _split_of(monkeypatch, "ImageNet", data)
    assert split["train"].tolist() == list(range(40))
    assert split["val"].size == 0 and split["test"].size == 0


def test_official_split_keeps_the_default_10_percent_val_and_checks_its_arguments():
    from histokit.stages.common import official_train_val_test

    ctx = SimpleNamespace(seed=0)
    data = _Official([("train", i % 2) for i in range(20)] + [("test", 0)])
    default = official_train_val_test(ctx, "x", data)
    assert len(default["train"]) == 18 and len(default["val"]) == 2  # other recipes' behaviour is unchanged
    with pytest.raises(ValueError, match="val_fraction"):
        official_train_val_test(ctx, "x", data, val_fraction=1.0)
    with pytest.raises(ValueError, match="fold9"):
        official_train_val_test(ctx, "x", data, train_splits=("fold9",))
