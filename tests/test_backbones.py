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
