"""The method registry and the view specs the data side builds transforms from."""
import pytest
import torch

from histokit.models.backbones import create_encoder
from histokit.ssl import create_method, list_methods, views_for
from histokit.ssl.base import views_from_batch


def test_every_method_is_registered_and_builds():
    assert list_methods() == ["dino", "esvit", "ibot", "mae", "moco", "simclr"]
    small = {"dino": dict(out_dim=16, hidden_dim=16, bottleneck_dim=8),
             "esvit": dict(out_dim=16, hidden_dim=16, bottleneck_dim=8),
             "ibot": dict(out_dim=16, hidden_dim=16, bottleneck_dim=8),
             "moco": dict(dim=8, mlp_dim=16), "simclr": {},
             "mae": dict(decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)}
    for name, cfg in small.items():
        method = create_method(name.upper(), create_encoder("vit_test", img_size=32), **cfg)
        assert method.eval_encoder() is not None and method.student_encoder is not None


def test_unknown_names_and_keys_are_named_in_the_error():
    enc = create_encoder("vit_test", img_size=32)
    with pytest.raises(ValueError, match="byol"):
        create_method("byol", enc)
    with pytest.raises(ValueError, match="teacher_tmp"):
        create_method("dino", enc, teacher_tmp=0.07)
    with pytest.raises(ValueError, match="n_locals"):
        views_for("dino", n_locals=2)


def test_views_for_matches_each_paper_recipe():
    assert (views_for("dino").n_global, views_for("dino").n_local, views_for("dino").kind) == (2, 8, "multicrop")
    assert views_for("dino").local_size == 96 and views_for("dino").global_scale == (0.4, 1.0)
    assert views_for("ibot").n_local == 10
    assert views_for("moco").kind == "two_views" and views_for("simclr").kind == "two_views"
    assert views_for("mae").kind == "one_view" and views_for("mae").n_views == 1
    assert views_for("esvit", n_local=6).n_local == 6


def test_views_from_batch_accepts_loader_layouts():
    v = torch.zeros(2, 3, 8, 8)
    labels, idx = torch.tensor([0, 1]), torch.tensor([3, 4])
    assert len(views_from_batch(v)) == 1
    assert len(views_from_batch([[v, v, v], labels, idx])) == 3  # PatchDataset with a multi-crop transform
    assert len(views_from_batch((v, labels, idx))) == 1          # one view per image
    assert len(views_from_batch({"views": [v, v]})) == 2
    with pytest.raises(ValueError, match="views"):
        views_from_batch((labels, idx))
