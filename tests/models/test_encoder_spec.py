"""Bring your own encoder (issue 21, item 1): the four spec schemes, offline, on timm's tiny test models."""
from __future__ import annotations

import json

import pytest
import timm
import torch
from torch import nn

from histokit.models import hub
from histokit.models import encoder_spec as es
from histokit.stages import common

MEAN, STD = (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)


@pytest.fixture(autouse=True)
def offline_hub(tmp_path, monkeypatch):
    """Every test runs with an empty hub cache of its own and the hub offline: nothing leaves the machine."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: False)
    return tmp_path / "hub"


def tiny_entry(image_size: int = 32):
    """An entry point as a user writes one: a module giving (B, D) and its torchvision transform."""
    from torchvision import transforms

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return net, transforms.Compose([transforms.Resize(image_size), transforms.ToTensor(),
                                    transforms.Normalize(MEAN, STD)])


def bad_entry():
    return nn.Conv2d(3, 4, 3)  # (B, C, H, W), not one embedding per image


def lay_out_hub_cache(cache, repo: str, model: nn.Module, model_args: dict | None = None) -> None:
    """A directory laid out as huggingface_hub's cache: models--org--repo/{refs/main, snapshots/<commit>/...}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = cache / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    timm.models.save_for_hf(model, str(snapshot), model_args=model_args, safe_serialization=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)


def test_parse_specs():
    assert es.parse_encoder_spec("timm:vit_small_patch16_224.dino").target == "vit_small_patch16_224.dino"
    spec = es.parse_encoder_spec("local:/w/x@y.pth@vit_small_patch16_224")
    assert (spec.scheme, spec.target, spec.arch) == ("local", "/w/x@y.pth", "vit_small_patch16_224")
    assert spec.label == "local:x@y.pth@vit_small_patch16_224"
    assert es.parse_encoder_spec("hf-hub:MahmoodLab/UNI").scheme == "hf-hub"
    assert es.parse_encoder_spec("my_pkg.models:build").scheme == "module"
    for bad in ("local:/w/x.pth", "hf-hub:UNI", "resnet18", "timm:"):
        with pytest.raises(es.EncoderSpecError):
            es.parse_encoder_spec(bad)


def test_local_checkpoint_loads_through_the_safe_path(tmp_path):
    torch.manual_seed(1)
    model = timm.create_model("test_resnet", num_classes=7).eval()
    path = tmp_path / "mine.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    got = es.resolve_encoder(f"local:{path}@test_resnet")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = model.forward_head(model.forward_features(x), pre_logits=True)
        assert torch.allclose(got.encoder(x), want, atol=1e-6)
    assert got.source.startswith("local checkpoint mine.pth (sha256 ")
    assert "keys beside the trunk left out: fc" in got.source  # the classifier fc.* of the saved model
    assert got.identity["sha256"] and got.spec.label == "local:mine.pth@test_resnet"
    assert got.input_size == 160 and "avg" in got.pooling


def test_local_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "vit.pth"
    torch.save(timm.create_model("test_vit", num_classes=0).state_dict(), path)
    with pytest.raises(es.EncoderSpecError, match="does not fit the architecture 'test_resnet'") as err:
        es.resolve_encoder(f"local:{path}@test_resnet")
    assert "missing from the checkpoint" in str(err.value)
    with pytest.raises(es.EncoderSpecError, match="not a timm architecture"):
        es.resolve_encoder(f"local:{path}@no_such_arch")


def test_local_lfs_pointer_is_refused(tmp_path):
    path = tmp_path / "w.pth"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    with pytest.raises(Exception, match="Git-LFS pointer"):
        es.resolve_encoder(f"local:{path}@test_resnet")


def test_hf_hub_spec_reads_a_local_hub_cache(offline_hub):
    torch.manual_seed(2)
    model = timm.create_model("test_vit", num_classes=0, embed_dim=32, depth=1, num_heads=2).eval()
    model.pretrained_cfg = {**model.pretrained_cfg, "mean": MEAN, "std": STD}
    lay_out_hub_cache(offline_hub, "my-lab/path-vit", model, model_args={"embed_dim": 32, "depth": 1, "num_heads": 2})
    got = es.resolve_encoder("hf-hub:my-lab/path-vit")
    assert got.source == "pretrained weights from the local Hugging Face cache (hf-hub:my-lab/path-vit)"
    assert (got.mean, got.std) == (MEAN, STD) and got.normalisation_from == "timm pretrained_cfg"
    assert got.pooling.startswith("cls token") and got.encoder.embed_dim == 32
    x = torch.randn(2, 3, 48, 48)  # another size than the native 160 px: dynamic_img_size
    with torch.no_grad():
        assert got.encoder(x).shape == (2, 32)
        native = torch.randn(1, 3, 160, 160)
        assert torch.allclose(got.encoder(native), model(native), atol=1e-5)
    assert es.encoder_identity("hf-hub:my-lab/path-vit")["cached"] is True


def test_timm_name_from_the_local_cache(offline_hub):
    model = timm.create_model("test_resnet", num_classes=1000)
    lay_out_hub_cache(offline_hub, "timm/test_resnet.r160_in1k", model)
    got = es.resolve_encoder("timm:test_resnet.r160_in1k")
    assert got.source.startswith("pretrained weights from the local Hugging Face cache")


def test_offline_hub_refusal_names_how_to_provide_weights():
    with pytest.raises(es.EncoderSpecError) as err:
        es.resolve_encoder("hf-hub:my-lab/not-cached", lenient=True)  # hub models never fall back to random
    text = str(err.value)
    assert "offline" in text and "huggingface-cli download my-lab/not-cached" in text
    assert "models--my-lab--not-cached" in text and "local:/path/to/weights.pth@" in text
    with pytest.raises(es.EncoderSpecError, match="offline"):
        es.resolve_encoder("timm:test_resnet.r160_in1k")


def test_timm_name_offline_in_a_lenient_run_says_random_init():
    got = es.resolve_encoder("timm:test_resnet.r160_in1k", lenient=True)
    assert got.source.startswith("random init: timm:test_resnet.r160_in1k weights unreachable")


def test_gated_hub_refusal(monkeypatch):
    from huggingface_hub.errors import GatedRepoError

    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: True)
    real = timm.create_model

    def gated(name, pretrained=False, **kw):
        if pretrained:
            raise GatedRepoError("401 Client Error: access to model MahmoodLab/UNI is restricted")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", gated)
    with pytest.raises(es.EncoderSpecError, match="gated") as err:
        es.resolve_encoder("hf-hub:MahmoodLab/UNI", lenient=True)
    assert "https://huggingface.co/MahmoodLab/UNI" in str(err.value) and "huggingface-cli login" in str(err.value)


def test_unknown_timm_name_is_refused():
    with pytest.raises(es.EncoderSpecError, match="knows no model"):
        es.resolve_encoder("timm:no_such_model_xyz", lenient=True)


def test_entry_point_with_transform():
    got = es.resolve_encoder("test_encoder_spec:tiny_entry", image_size=32)
    assert (got.mean, got.std, got.input_size) == (MEAN, STD, 32)
    assert got.normalisation_from.startswith("the entry point's transform")
    assert got.encoder(torch.randn(2, 3, 32, 32)).shape == (2, 8) and got.encoder.embed_dim == 8
    with pytest.raises(es.EncoderSpecError, match=r"\(B, D\)"):
        es.resolve_encoder("test_encoder_spec:bad_entry", image_size=32)
    with pytest.raises(es.EncoderSpecError, match="cannot import"):
        es.resolve_encoder("no_such_module_xyz:build")
    json.dumps(es.encoder_identity("test_encoder_spec:tiny_entry"))


# ------------------------------------------------------------------------------------------------ open_clip

TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
             "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def lay_out_open_clip_cache(cache, repo: str):
    """A tiny open_clip model as open_clip's hub layout has it (open_clip_config.json + open_clip_model.safetensors)
    in a directory laid out as huggingface_hub's cache; returns the model."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP)
    commit = "89abcdef0123456789abcdef0123456789abcdef"
    folder = cache / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": TINY_CLIP, "preprocess_cfg": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snapshot / "open_clip_model.safetensors"))
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    return model.eval()


def test_parse_open_clip_specs():
    spec = es.parse_encoder_spec("open_clip:hf-hub:MahmoodLab/conch")
    assert (spec.scheme, spec.target) == ("open_clip", "hf-hub:MahmoodLab/conch")
    assert es._hub_repo(spec) == "MahmoodLab/conch"
    spec = es.parse_encoder_spec("open_clip:ViT-B-16@laion2b_s34b_b88k")
    assert (spec.scheme, spec.target, spec.arch) == ("open_clip", "ViT-B-16", "laion2b_s34b_b88k")
    assert es._hub_repo(spec) == "laion/CLIP-ViT-B-16-laion2B-s34B-b88K"  # open_clip's registry
    for bad in ("open_clip:ViT-B-16", "open_clip:hf-hub:conch", "open_clip:"):
        with pytest.raises(es.EncoderSpecError):
            es.parse_encoder_spec(bad)


def test_open_clip_image_tower_from_a_local_hub_cache(offline_hub):
    reference = lay_out_open_clip_cache(offline_hub, "some-lab/tiny-clip")
    resolved = es.resolve_encoder("open_clip:hf-hub:some-lab/tiny-clip", image_size=24)
    assert resolved.source.startswith("pretrained weights from the local Hugging Face cache")
    assert resolved.mean == pytest.approx(CLIP_MEAN) and resolved.std == pytest.approx(CLIP_STD)
    assert resolved.input_size == 32 and "encode_image" in resolved.pooling
    assert resolved.identity["cached"] is True
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(resolved.encoder.forward_tokens(x).pooled, reference.encode_image(x))
        smaller = resolved.encoder.forward_tokens(torch.rand(2, 3, 24, 24)).pooled  # resized to the tower's 32 px
    assert smaller.shape == (2, 16) and resolved.encoder.embed_dim == 16


def test_open_clip_offline_and_not_cached_says_how_to_provide_the_weights():
    with pytest.raises(es.EncoderSpecError) as err:
        es.resolve_encoder("open_clip:hf-hub:MahmoodLab/conch")
    text = str(err.value)
    assert "the hub is offline here" in text and "huggingface-cli download MahmoodLab/conch" in text


def test_the_kits_own_encoder_file_loads_through_local(tmp_path):
    """A kit run's encoder.pt (a histokit Encoder's state dict: the timm ViT under 'model.', a mask token, position
    embedding for 64 px) as a user's local file: same weights, built at the size it was trained for."""
    from histokit.models.backbones import create_encoder

    torch.manual_seed(0)
    kit = create_encoder("vit_small_patch16_224", img_size=64).eval()
    path = tmp_path / "encoder.pt"
    torch.save(kit.state_dict(), path)
    resolved = es.resolve_encoder(f"local:{path}@vit_small_patch16_224", image_size=64)
    assert resolved.input_size == 64 and "unwrapped prefix 'model.'" in resolved.source
    assert "mask_token" in resolved.source and "built at that size" in resolved.source
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(resolved.encoder.forward_tokens(x).pooled, kit.forward_tokens(x).pooled)
