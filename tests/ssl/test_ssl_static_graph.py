"""Every SSL method's step reaches every trainable parameter, so the engine wraps it in DDP without
``find_unused_parameters`` (a per-step graph search, and an error at the second step if a parameter were left out).
The ViT / CypherViT [MASK] embedding, which only iBOT uses, is frozen by the other methods and trained by iBOT.
The gloo runs in test_distributed.py train DINO on a ViT under DDP with this setting."""
import pytest
import torch

from histokit.models.backbones import create_encoder
from histokit.ssl import create_method

HEAD = dict(out_dim=64, hidden_dim=32, bottleneck_dim=16)
CFG = {"dino": HEAD, "esvit": HEAD, "ibot": HEAD, "moco": dict(dim=16, mlp_dim=32), "simclr": {},
       "mae": dict(decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)}
ENCODERS = {"vit_test": 32, "cyphervit_test": 32, "swin_test": 64, "resnet_test": 32}
CASES = [(m, e) for m in CFG for e in ENCODERS
         if not (m == "ibot" and e in ("swin_test", "resnet_test")) and not (m == "mae" and e != "vit_test")]


@pytest.mark.parametrize("name,encoder", CASES)
def test_one_step_reaches_every_trainable_parameter(name, encoder):
    size = ENCODERS[encoder]
    torch.manual_seed(0)
    method = create_method(name, create_encoder(encoder, img_size=size), **CFG[name])
    assert method.find_unused_parameters is False
    views = [torch.randn(4, 3, size, size) for _ in range(2)]
    if name in ("dino", "esvit", "ibot"):
        views.append(torch.randn(4, 3, size // 2, size // 2) if encoder != "swin_test" else torch.randn(4, 3, 64, 64))
    loss, _ = method(views)
    loss.backward()
    unused = [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []
    token = getattr(method.student_encoder, "mask_token", None)
    if token is not None:  # trained by iBOT only
        assert token.requires_grad == (name == "ibot")


def test_mask_token_follows_the_method_not_the_encoders_history():
    encoder = create_encoder("vit_test", img_size=32)
    create_method("dino", encoder, **HEAD)
    assert not encoder.mask_token.requires_grad
    create_method("ibot", encoder, **HEAD)  # the same encoder object handed to iBOT afterwards
    assert encoder.mask_token.requires_grad
    assert "mask_token" in encoder.state_dict()  # checkpoints keep their layout


@pytest.mark.parametrize("encoder", ["vit_test", "cyphervit_test", "resnet_test"])
def test_fine_tuning_reaches_every_trainable_parameter_without_the_unused_search(encoder):
    from histokit.train.supervised import Classifier, _ClassificationObjective

    torch.manual_seed(0)
    size = ENCODERS.get(encoder, 32)
    objective = _ClassificationObjective(Classifier(create_encoder(encoder, img_size=size), 3), freeze_backbone=False)
    assert objective.find_unused_parameters is False
    loss, _ = objective(torch.randn(4, 3, size, size), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert [n for n, p in objective.named_parameters() if p.requires_grad and p.grad is None] == []
