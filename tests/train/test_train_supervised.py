"""Supervised fine-tuning on the bundled Kather 2016 tiles: full fine-tuning learns, the linear probe leaves the
backbone (weights and BN statistics) untouched, a frozen EMA teacher is unfrozen for fine-tuning, predict keeps
order."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from histokit.models.backbones import create_encoder
from histokit.paths import BUNDLED_TILES_DIR
from histokit.ssl import create_method
from histokit.train.supervised import Classifier, finetune_classifier, predict

CLASSES = sorted(p.name for p in BUNDLED_TILES_DIR.iterdir() if p.is_dir())


class Tiles(Dataset):
    """(image, label, index) like PatchDataset, 32 px; images decoded once."""

    def __init__(self, paths):
        tf = T.Compose([T.Resize(32), T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])
        self.images = [tf(Image.open(p).convert("RGB")) for p in paths]
        self.labels = [CLASSES.index(p.parent.name) for p in paths]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i], i


@pytest.fixture(scope="module")
def splits():
    paths = sorted(BUNDLED_TILES_DIR.glob("*/*.png"))
    return Tiles(paths[0::3] + paths[1::3]), Tiles(paths[2::3])


def test_full_finetuning_learns_and_reports_validation(splits):
    train_ds, val_ds = splits
    torch.manual_seed(0)
    model, history = finetune_classifier(create_encoder("vit_test", img_size=32), train_ds, val_ds, len(CLASSES),
                                         epochs=4, lr=3e-3, batch_size=16, weight_decay=0.0, progress=False,
                                         log_every=100)
    assert isinstance(model, Classifier) and not model.training
    ends = [h for h in history if "val_acc" in h]
    assert len(ends) == 4 and all(0.0 <= h["val_acc"] <= 1.0 for h in ends)
    assert history[-1]["loss"] < history[0]["loss"]
    preds = predict(model, train_ds, progress=False)
    assert preds.accuracy > 1.0 / len(CLASSES) * 2  # well above chance on the data it was fitted on


def test_linear_probe_freezes_backbone_weights_and_statistics(splits):
    train_ds, val_ds = splits
    encoder = create_encoder("resnet_test")
    before = {k: v.clone() for k, v in encoder.state_dict().items()}  # includes BN running mean / var
    model, _ = finetune_classifier(encoder, train_ds, None, len(CLASSES), epochs=1, lr=1e-2, batch_size=16,
                                   freeze_backbone=True, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())
    assert all(not p.requires_grad for p in model.encoder.parameters())
    assert model.head.weight.abs().sum() > 0


def test_a_frozen_ema_teacher_is_unfrozen_for_finetuning(splits):
    train_ds, _ = splits
    torch.manual_seed(0)
    teacher = create_method("dino", create_encoder("vit_test", img_size=32), out_dim=16, hidden_dim=16,
                            bottleneck_dim=8).eval_encoder()
    assert not any(p.requires_grad for p in teacher.parameters())
    before = teacher.model.blocks[0].attn.qkv.weight.clone()
    model, _ = finetune_classifier(teacher, train_ds, None, len(CLASSES), epochs=1, lr=1e-3, batch_size=32,
                                   progress=False)
    assert not torch.equal(before, model.encoder.model.blocks[0].attn.qkv.weight)


def test_predict_keeps_dataset_order(splits):
    _, val_ds = splits
    model = Classifier(create_encoder("vit_test", img_size=32), len(CLASSES))
    preds = predict(model, val_ds, batch_size=5, progress=False)
    assert preds.logits.shape == (len(val_ds), len(CLASSES))
    np.testing.assert_array_equal(preds.labels, val_ds.labels)
    np.testing.assert_allclose(preds.probabilities.sum(1), 1.0, rtol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(preds.logits[3], model(val_ds[3][0][None])[0].numpy(), rtol=1e-4, atol=1e-5)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="num_classes"):
        Classifier(create_encoder("vit_test", img_size=32), 1)
    with pytest.raises(ValueError, match="train_ds is empty"):
        finetune_classifier(create_encoder("vit_test", img_size=32), [], None, 3, epochs=1, lr=1e-3, batch_size=2)
