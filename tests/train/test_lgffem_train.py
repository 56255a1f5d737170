"""LGFFEM training: Sub-center ArcFace factory (paper vs ffnir code), AdamW + cosine schedule, the method through the
one engine with resume."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from pytorch_metric_learning.losses import SubCenterArcFaceLoss

from histokit.models.backbones import create_encoder
from histokit.models.lgffem_train import SubCenterArcFace, make_optimizer, make_subcenter_arcface
from histokit.paths import BUNDLED_TILES_DIR
from histokit.train.checkpoint import checkpoint_path
from histokit.train.engine import TRAIN_CONFIG_NAME, train


def test_loss_factory_paper_and_public_code_variants():
    paper = make_subcenter_arcface(24)
    assert isinstance(paper, SubCenterArcFaceLoss)
    assert paper.margin == pytest.approx(math.radians(17.2))  # pml stores the degree margin in radians
    assert paper.scale == 64 and paper.sub_centers == 3 and paper.W.shape == (2048, 24 * 3)
    code = make_subcenter_arcface(24, 128, sub_centers=6, variant="public_code")
    assert code.margin == pytest.approx(math.radians(17.5)) and code.scale == pytest.approx(17.5)
    assert code.sub_centers == 6 and code.W.shape == (128, 24 * 6)
    with pytest.raises(ValueError, match="variant"):
        make_subcenter_arcface(24, variant="paper_v2")
    with pytest.raises(ValueError, match="margin"):
        make_subcenter_arcface(24, margin=95.0)


def test_loss_is_the_subcenter_arcface_formula():
    """Independent evaluation of Deng et al. 2020: cos θ = max over sub-centres, CE(s·cos(θ_y + m))."""
    torch.manual_seed(0)
    loss = make_subcenter_arcface(3, 4, margin=20.0, scale=10.0, sub_centers=2)
    emb, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 1, 0])
    w = torch.nn.functional.normalize(loss.W, dim=0)  # (D, classes·K), class-major
    cos = (torch.nn.functional.normalize(emb, dim=1) @ w).view(5, 3, 2).max(dim=2).values
    theta = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
    logits = cos.clone()
    logits[torch.arange(5), y] = torch.cos(theta[torch.arange(5), y] + math.radians(20.0))
    expected = torch.nn.functional.cross_entropy(10.0 * logits, y)
    assert loss(emb, y).item() == pytest.approx(expected.item(), rel=1e-4)


def test_optimizer_covers_model_and_loss_and_anneals_to_min_lr():
    model = create_encoder("lgffem_test")
    loss = make_subcenter_arcface(4, model.embed_dim)
    opt, sched = make_optimizer(model, loss, epochs=4)
    assert isinstance(opt, torch.optim.AdamW)
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(loss.W) in ids
    assert not any(id(p) in ids for p in model.backbone.parameters())
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-3)
    for _ in range(4):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(8e-5)
    with pytest.raises(ValueError, match="epochs"):
        make_optimizer(model, loss, epochs=0)


def _bundled_batch(n_per_class=1, size=64):
    table = pd.read_csv(BUNDLED_TILES_DIR / "labels.csv")
    rows = table.groupby("label").head(n_per_class)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    imgs = []
    for rel in rows["path"]:
        im = Image.open(BUNDLED_TILES_DIR / rel).convert("RGB").resize((size, size), Image.BILINEAR)
        imgs.append(torch.from_numpy(((np.asarray(im) / 255.0 - mean) / std).transpose(2, 0, 1)).float())
    return torch.stack(imgs), torch.tensor(rows["label"].to_numpy())


def _method(model, num_classes, **kw):
    return SubCenterArcFace(model, make_subcenter_arcface(num_classes, model.embed_dim), **kw)


def _train(method, loader, epochs, ckpt_dir, **kw):
    return train(method, loader, epochs=epochs, lr=method.lr, device="cpu", checkpoint_dir=ckpt_dir,
                 progress=False, **kw)


def test_loss_decreases_on_bundled_tiles_and_resume(tmp_path):
    torch.manual_seed(0)
    x, y = _bundled_batch()
    model = create_encoder("lgffem_test")
    method = _method(model, int(y.max()) + 1)
    loader = [(x, y)] * 2
    history = _train(method, loader, 3, tmp_path, max_steps=4)  # interrupted after 2 of 3 epochs
    assert [h["epoch"] for h in history] == [1, 1, 2, 2]
    assert history[2]["lr"] < history[0]["lr"] == pytest.approx(5e-3)  # CosineAnnealingLR, stepped per epoch
    assert checkpoint_path(tmp_path).exists() and (tmp_path / TRAIN_CONFIG_NAME).exists()
    # Resume: a fresh model continues from the checkpoint's epoch 2 and trains epoch 3 only.
    model2 = create_encoder("lgffem_test")
    model2.backbone.load_state_dict(model.backbone.state_dict())
    method2 = _method(model2, int(y.max()) + 1)
    history = _train(method2, loader, 3, tmp_path)
    assert [h["epoch"] for h in history] == [1, 1, 2, 2, 3, 3]
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(math.isfinite(h["loss"]) for h in history)
    saved = torch.load(checkpoint_path(tmp_path), weights_only=True)
    assert saved["epoch"] == 3 and not any(k.startswith("encoder.backbone.") for k in saved["model"])
    assert any(k.startswith("encoder.neck.") for k in saved["model"]) and "loss.W" in saved["model"]
    assert len(saved["extra_optimizers"]) == 1 and len(saved["schedulers"]) == 1  # the centres' AdamW, the cosine


def test_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    """Two epochs straight vs one epoch, stopped, then resumed in a fresh method: the same weights, centres and
    losses (optimizers, CosineAnnealingLR and RNG states come back from the checkpoint; the head's dropout draws)."""
    x, y = _bundled_batch()

    def run(ckpt_dir, **kw):
        torch.manual_seed(0)
        method = _method(create_encoder("lgffem_test"), int(y.max()) + 1)
        return method, _train(method, [(x, y)] * 2, 2, ckpt_dir, **kw)

    straight, history = run(tmp_path / "straight")
    run(tmp_path / "resumed", max_steps=2)
    torch.manual_seed(123)  # whatever ran in between draws from the global RNG
    resumed, resumed_history = run(tmp_path / "resumed")
    assert [h["loss"] for h in resumed_history] == [h["loss"] for h in history]
    for k, v in straight.trainable_state_dict().items():
        assert torch.equal(v, resumed.trainable_state_dict()[k]), k


def test_bad_batch_is_a_clear_error():
    model = create_encoder("lgffem_test")
    with pytest.raises(ValueError, match="'image'"):
        train(_method(model, 2), [{"img": torch.zeros(2, 3, 64, 64)}], epochs=1, lr=5e-3, device="cpu",
              progress=False)
