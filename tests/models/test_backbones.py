"""The encoder factory: every family meets the Encoder contract with its paper's pooling."""
import pytest
import torch

from histokit.models.backbones import create_encoder


@pytest.mark.parametrize("name,size,dim", [("vit_test", 64, 64), ("swin_test", 64, 192), ("resnet_test", 64, 512),
                                           ("densenet_test", 64, 17), ("cyphervit_test", 64, 32)])
def test_encoder_contract(name, size, dim):
    encoder = create_encoder(name, img_size=size).eval()
    x = torch.randn(2, 3, size, size)
    out = encoder.forward_tokens(x)
    assert out.pooled.shape == (2, dim) and encoder.embed_dim == dim
    assert torch.allclose(encoder(x), out.pooled)


def test_vit_pooling_and_mask():
    cls = create_encoder("vit_test", img_size=64, pooling="cls").eval()
    avg = create_encoder("vit_test", img_size=64, pooling="avg_patch").eval()
    avg.load_state_dict(cls.state_dict())
    x = torch.randn(1, 3, 64, 64)
    out = cls.forward_tokens(x)
    assert torch.allclose(out.pooled, out.cls_tokens[:, 0]) and torch.allclose(avg(x), out.patch_tokens.mean(1))
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, 3] = True
    assert not torch.allclose(cls.forward_tokens(x, mask=mask).pooled, out.pooled)
    assert cls.last_attention(x).shape == (1, 4, 4, 4)


def test_swin_accepts_multicrop_local_views():
    encoder = create_encoder("swin_test", img_size=64)
    assert encoder(torch.randn(1, 3, 32, 32)).shape == (1, 192)


def test_bad_names_and_pretrained_custom_encoders_are_refused():
    with pytest.raises(ValueError, match="unknown encoder 'nope'"):
        create_encoder("nope")
    with pytest.raises(ValueError, match="no hub weights"):
        create_encoder("cyphervit_test", pretrained=True, img_size=64)


def test_resnet50_trunc_is_the_reference_truncated_resnet50_with_1024_d_output():
    # Chen & Krishnan's resnet50_trunc_baseline: torchvision ResNet-50 without layer4 / fc, then global average pool.
    import torchvision

    encoder = create_encoder("resnet50_trunc").eval()            # random weights: no download in tests
    reference = torchvision.models.resnet50(weights=None).eval()
    kept = {k: v for k, v in reference.state_dict().items() if not k.startswith(("layer4.", "fc."))}
    assert {k: tuple(v.shape) for k, v in encoder.model.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in kept.items()}, "same modules as torchvision's ResNet-50 up to layer3"
    encoder.model.load_state_dict(kept)                        # what the reference's strict=False load keeps
    x = torch.randn(1, 3, 32, 32)
    r = reference
    with torch.no_grad():
        expected = r.layer3(r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(x))))))).mean((2, 3))
        out = encoder(x)
    assert out.shape == (1, 1024) and encoder.embed_dim == 1024
    assert torch.allclose(out, expected, atol=1e-5)


def test_resnet50_trunc_asks_timm_for_torchvision_imagenet_weights(monkeypatch):
    import timm

    from histokit.models import backbones

    asked = {}
    real = timm.create_model

    def fake_create_model(name, pretrained=False, **kw):
        asked.update(name=name, pretrained=pretrained)
        return real("resnet18", pretrained=False, **kw)        # never download in a test; a small stand-in

    monkeypatch.setattr(backbones.timm, "create_model", fake_create_model)
    assert create_encoder("resnet50_trunc", pretrained=True).embed_dim == 256   # resnet18's layer3
    assert asked == {"name": "resnet50.tv_in1k", "pretrained": True}


def test_vit_dino_position_interpolation_is_the_reference_one_off_the_native_grid():
    # Chen & Krishnan's ViT (DINO's interpolate_pos_encoding) at a larger input, e.g. 512 px BreastPathQ tiles on a
    # 224 px model: bicubic F.interpolate with scale_factor (grid + 0.1) / sqrt(N), not timm's antialiased resample.
    timm_vit = create_encoder("vit_test", img_size=64).eval()           # 4 x 4 patch grid
    dino_vit = create_encoder("vit_test", img_size=64, pos_interpolation="dino").eval()
    dino_vit.load_state_dict(timm_vit.state_dict())
    pos = timm_vit.model.pos_embed
    grid = pos[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, scale_factor=(6.1 / 4, 6.1 / 4), mode="bicubic")
    expected = torch.cat([pos[:, :1], expected.permute(0, 2, 3, 1).reshape(1, 36, -1)], dim=1)
    assert torch.allclose(dino_vit.dino_position_embedding((6, 6)), expected)
    small, large = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(dino_vit(small), timm_vit(small), atol=1e-6), "native grid: no interpolation"
        assert not torch.allclose(dino_vit(large), timm_vit(large), atol=1e-4), "timm resamples differently"
    with pytest.raises(ValueError, match="pos_interpolation"):
        create_encoder("vit_test", img_size=64, pos_interpolation="nearest")


def test_resnet50_trunc_hub_weights_are_looked_up_under_timms_name(monkeypatch):
    import huggingface_hub

    from histokit import preflight
    from histokit.models.backbones import hub_weights_name

    assert hub_weights_name("resnet50_trunc") == "resnet50.tv_in1k" and hub_weights_name("resnet50") == "resnet50"
    seen = []
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, filename: seen.append(repo))
    assert preflight._timm_cached("resnet50_trunc") is False          # nothing cached (the stub finds nothing)
    assert seen and set(seen) == {"timm/resnet50.tv_in1k"}            # looked up, not skipped as 'not a timm name'
