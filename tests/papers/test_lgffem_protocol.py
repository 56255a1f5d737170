"""LGFFEM (Nuñez-Fernández et al. 2025) protocol as the paper / the ffnir public code states it (issue 16)."""
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

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
    """The split stage 01 writes into ``key``'s data index for ``dataset`` under the recipe's scheme."""
    from histokit.stages.data_index import split_of_dataset

    ctx = SimpleNamespace(recipe=get_recipe("lgffem", "full"), seed=0)
    return split_of_dataset(ctx, key, dataset)


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
    from histokit.stages.data_index import official_train_val_test

    ctx = SimpleNamespace(seed=0)
    data = _Official([("train", i % 2) for i in range(20)] + [("test", 0)])
    default = official_train_val_test(ctx, "x", data)
    assert len(default["train"]) == 18 and len(default["val"]) == 2  # other recipes' behaviour is unchanged
    with pytest.raises(ValueError, match="val_fraction"):
        official_train_val_test(ctx, "x", data, val_fraction=1.0)
    with pytest.raises(ValueError, match="fold9"):
        official_train_val_test(ctx, "x", data, train_splits=("fold9",))


# --- training augmentation (ffnir train_kimia.py / train_pannuke.py / train_in1k.py) -----------------------------

def test_each_strategy_trains_with_its_ffnir_scripts_augmentation():
    full = {t.name: t.method_cfg["augmentation"] for t in get_recipe("lgffem", "full").pretrain}
    assert full == {"lgffem_A": "ffnir_imagenet", "lgffem_B": "ffnir_pannuke", "lgffem_C": "ffnir_kimia"}
    smoke = {t.name: t.method_cfg["augmentation"] for t in get_recipe("lgffem", "smoke").pretrain}
    assert smoke == {"lgffem_C": "ffnir_kimia"}


def _ops(transform):
    return {type(t).__name__: t for t in transform.transforms}


@pytest.mark.parametrize("name, flip, rot, gauss, median", [("ffnir_kimia", 0.6, 0.6, 0.5, 0.6),
                                                            ("ffnir_pannuke", 0.5, 0.5, 0.5, 0.5)])
def test_ffnir_histology_pipelines_have_the_scripts_probabilities(name, flip, rot, gauss, median):
    from histokit.models.lgffem_train import lgffem_train_transform

    t = lgffem_train_transform(name, 224, (0.5,) * 3, (0.5,) * 3)
    kinds = [type(op).__name__ for op in t.transforms]
    assert kinds == ["PILToTensor", "Resize", "RandomVerticalFlip", "RandomHorizontalFlip", "RandomRot90",
                     "RandomCv2Blur", "RandomCv2Blur", "ConvertImageDtype", "Normalize"]
    ops = t.transforms
    assert ops[1].size == (224, 224) and ops[1].antialias is False  # A.Resize: cv2 INTER_LINEAR
    assert ops[2].p == flip and ops[3].p == flip and ops[4].p == rot
    assert (ops[5].kind, ops[5].p, ops[5].ksizes) == ("gaussian", gauss, (3, 5, 5, 7, 7))
    assert (ops[6].kind, ops[6].p, ops[6].ksizes) == ("median", median, (3, 5))


def _half_red_image(n=32):
    arr = np.zeros((n, n, 3), dtype=np.uint8)
    arr[:, : n // 2, 0] = 255
    arr[:, n // 2:, 2] = 255
    return Image.fromarray(arr)


def test_ffnir_kimia_keeps_the_whole_tile_where_the_old_random_resized_crop_did_not():
    # Resize + flips + rotations + blurs keep the field of view: half of every view is red. The kit's former
    # RandomResizedCrop(0.08-1) often shows a corner of the tile only.
    from histokit.models.lgffem_train import lgffem_train_transform

    torch.manual_seed(0)
    img = _half_red_image()
    new = lgffem_train_transform("ffnir_kimia", 16, (0.0,) * 3, (1.0,) * 3)
    old = lgffem_train_transform("kit_rrc", 16, (0.0,) * 3, (1.0,) * 3)
    red_new = [float((new(img)[0] > 0.5).float().mean()) for _ in range(20)]
    red_old = [float((old(img)[0] > 0.5).float().mean()) for _ in range(20)]
    assert all(abs(r - 0.5) <= 0.0625 for r in red_new)
    assert max(abs(r - 0.5) for r in red_old) > 0.25


def test_cv2_blurs_are_opencvs_fixed_kernels_by_hand():
    from histokit.models.lgffem_train import RandomCv2Blur

    impulse = torch.zeros(3, 7, 7, dtype=torch.uint8)
    impulse[:, 3, 3] = 255
    out = RandomCv2Blur("gaussian").blur(impulse, 3)[0, 2:5, 2:5]  # sigma 0 -> [1 2 1] / 4 in each direction
    assert out.tolist() == [[16, 32, 16], [32, 64, 32], [16, 32, 16]]
    ramp = torch.arange(25, dtype=torch.uint8).reshape(1, 5, 5).repeat(3, 1, 1)
    med = RandomCv2Blur("median").blur(ramp, 3)[0]
    assert med[1:4, 1:4].tolist() == [[6, 7, 8], [11, 12, 13], [16, 17, 18]]  # interior: the centre value
    assert med[0, 0].item() == 1  # border replicated: median of 0, 0, 0, 0, 1, 1, 5, 5, 6
    with pytest.raises(ValueError, match="odd"):
        RandomCv2Blur("median", ksizes=(4,))


def test_rot90_draws_all_four_turns_and_respects_p():
    from histokit.models.lgffem_train import RandomRot90

    img = torch.arange(4).reshape(1, 2, 2)
    torch.manual_seed(0)
    seen = {tuple(RandomRot90(p=1.0)(img).flatten().tolist()) for _ in range(60)}
    assert seen == {tuple(torch.rot90(img, k, dims=(-2, -1)).flatten().tolist()) for k in range(4)}
    assert all(torch.equal(RandomRot90(p=0.0)(img), img) for _ in range(10))


def test_unknown_augmentation_and_a_run_without_one_are_errors():
    from histokit.models.lgffem_train import SubCenterArcFace, lgffem_train_transform

    with pytest.raises(ValueError, match="ffnir_kimia"):
        lgffem_train_transform("randaugment", 224, (0.5,) * 3, (0.5,) * 3)
    spec = get_recipe("lgffem", "smoke").pretrain[0]
    spec = replace(spec, method_cfg={k: v for k, v in spec.method_cfg.items() if k != "augmentation"})
    with pytest.raises(ValueError, match="augmentation"):
        SubCenterArcFace.from_spec(spec, None, 24)


# --- Sub-center ArcFace centres: the ffnir scripts' own AdamW at 1e-4 and 6 sub-centres -------------------------

@pytest.mark.parametrize("profile", ["smoke", "full"])
def test_recipe_trains_the_centres_as_the_public_code(profile):
    for spec in get_recipe("lgffem", profile).pretrain:
        cfg = spec.method_cfg
        assert cfg["sub_centers"] == 6 and cfg["centres_optimizer"] == "separate" and cfg["centres_lr"] == 1e-4
        assert cfg["variant"] == "paper"  # m = 17.2°, s = 64 as the paper states; public_code is the variant


class _Tiny(torch.nn.Module):
    """Stands in for the neck + heads: the optimizer and loop code only need parameters and ``embed_dim``."""
    embed_dim = 8

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(12, self.embed_dim)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _encoder():
    return _Tiny()


def _loss_and_optimizers(spec, encoder, num_classes):
    """``(loss, model optimizer, its scheduler, centres optimizer or None)`` of the method a spec builds."""
    from histokit.models.lgffem_train import SubCenterArcFace

    method = SubCenterArcFace.from_spec(spec, encoder, num_classes)
    plan = method.configure_optimizers(epochs=spec.epochs)
    assert plan.clip_params == list(encoder.parameters()) and plan.grad_clip == 1.0  # ffnir clips the model only
    (sched,) = plan.epoch_schedulers
    return method.loss, plan.optimizers[0], sched, (plan.optimizers[1] if len(plan.optimizers) > 1 else None)


def test_separate_centres_optimizer_is_its_own_constant_adamw():
    spec = get_recipe("lgffem", "full").train_spec("lgffem_C")
    encoder = _encoder()
    loss, opt, sched, centres = _loss_and_optimizers(spec, encoder, 24)
    assert loss.sub_centers == 6 and loss.W.shape == (encoder.embed_dim, 24 * 6)
    model_ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(loss.W) not in model_ids  # the centres are not in the model's optimizer
    assert isinstance(centres, torch.optim.AdamW) and centres.param_groups[0]["params"] == [loss.W]
    assert centres.param_groups[0]["lr"] == 1e-4 and centres.param_groups[0]["weight_decay"] == 0.01
    for _ in range(3):
        opt.step()
        sched.step()
    assert centres.param_groups[0]["lr"] == 1e-4  # not annealed with the model's cosine schedule
    assert opt.param_groups[0]["lr"] < 5e-3


def test_shared_centres_variant_is_the_kits_earlier_single_optimizer():
    spec = get_recipe("lgffem", "full").train_spec("lgffem_C")
    spec = replace(spec, method_cfg=dict(spec.method_cfg, centres_optimizer="shared", sub_centers=3))
    loss, opt, _, centres = _loss_and_optimizers(spec, _encoder(), 24)
    assert centres is None and loss.sub_centers == 3
    assert opt.param_groups[1]["params"] == [loss.W] and opt.param_groups[1]["lr"] == 5e-3
    with pytest.raises(ValueError, match="centres_optimizer"):
        _loss_and_optimizers(replace(spec, method_cfg=dict(spec.method_cfg, centres_optimizer="sgd")), _encoder(), 24)


def test_train_loop_steps_and_checkpoints_the_centres_optimizer(tmp_path):
    from histokit.models.lgffem_train import SubCenterArcFace, make_subcenter_arcface
    from histokit.train.checkpoint import checkpoint_path
    from histokit.train.engine import train

    torch.manual_seed(0)
    model = _encoder()
    loss = make_subcenter_arcface(2, model.embed_dim, sub_centers=6)
    method = SubCenterArcFace(model, loss, centres_optimizer="separate")
    before = loss.W.detach().clone()
    x, y = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 0, 1])
    train(method, [(x, y)], epochs=1, lr=method.lr, device="cpu", checkpoint_dir=tmp_path, progress=False)
    assert not torch.equal(loss.W.detach(), before)  # the centres moved through their own optimizer
    saved = torch.load(checkpoint_path(tmp_path), weights_only=True)
    assert saved["extra_optimizers"][0]["param_groups"][0]["lr"] == 1e-4


# --- protocol cards -------------------------------------------------------------------------------------------

ASPECTS = ["data + split", "training set vs gallery", "augmentation", "strategies A / B / C schedule",
           "loss hyper-parameters", "eta protocol", "evaluation preprocessing"]


@pytest.mark.parametrize("table, eta_same, extra", [("table1", True, []), ("table2", True, ["baselines"]),
                                                    ("table1_public_code", False, []),
                                                    ("table2_public_code", False, ["baselines"])])
def test_every_lgffem_table_has_its_protocol_card(table, eta_same, extra):
    spec = get_recipe("lgffem", "full").table(table)
    card = {p.aspect: p for p in spec.protocol}
    assert list(card) == ASPECTS + extra
    # The standard tables compute eta as Sec. 4.1.1 writes it; the public-code tables as the notebook does.
    assert card["eta protocol"].same is eta_same
    assert ("eta_public_code" in card["eta protocol"].kit) is not eta_same
    assert card["loss hyper-parameters"].variant.startswith("variant='public_code'")
    assert "A 60, B 300, C 300" in card["strategies A / B / C schedule"].kit
    assert all(p.footnote() in spec.all_footnotes for p in spec.protocol)


def test_smoke_tables_say_the_card_describes_the_full_profile():
    for spec in get_recipe("lgffem", "smoke").tables:
        assert spec.protocol and any("describes the full profile" in f for f in spec.footnotes)
