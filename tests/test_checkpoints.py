"""Official-checkpoint loaders: synthetic files laid out exactly like the published ones round-trip to identical
outputs; every way a downloaded file goes wrong gives an error that says what happened."""
from __future__ import annotations

import argparse
import re

import pytest
import torch

from histokit.io import atomic_torch_save, atomic_write_text, sha256_file
from histokit.models.backbones import create_encoder
from histokit.models.checkpoints import (
    CheckpointError, CheckpointIntegrityError, CheckpointMismatch, LFSPointerError, UntrustedPickleError,
    dino_teacher_to_timm_vit, esvit_teacher_to_timm_swin, load_into, load_official, official_weights,
    read_checkpoint, simclr_resnet_to_timm,
)

# The pointer actually stored in Richarizardd/Self-Supervised-ViT-Path for ckpts/vits_tcga_brca_dino.pt.
LFS_POINTER = ("version https://git-lfs.github.com/spec/v1\n"
               "oid sha256:d04e3718649a13a5a49ae5c274ae3aefb9deb229ef5194106bb8ecbfd4f00c61\n"
               "size 704238867\n")


class NotAllowed:
    """A custom class: a pickle containing it must not load under weights_only=True."""

    def __init__(self):
        self.value = 3


def _dino_head(prefix: str, in_dim: int, out_dim: int = 65) -> dict[str, torch.Tensor]:
    """DINOHead's parameters (3-layer MLP, bottleneck, weight-normed last layer), small sizes."""
    return {f"{prefix}mlp.0.weight": torch.randn(32, in_dim), f"{prefix}mlp.0.bias": torch.randn(32),
            f"{prefix}mlp.2.weight": torch.randn(32, 32), f"{prefix}mlp.2.bias": torch.randn(32),
            f"{prefix}mlp.4.weight": torch.randn(16, 32), f"{prefix}mlp.4.bias": torch.randn(16),
            f"{prefix}last_layer.weight_g": torch.ones(out_dim, 1),
            f"{prefix}last_layer.weight_v": torch.randn(out_dim, 16)}


def _full_dino_checkpoint(backbone: dict[str, torch.Tensor], embed_dim: int) -> dict:
    """Everything DINO's main_dino.py saves: student, teacher, optimizer, epoch, args (a Namespace), dino_loss."""
    teacher = {f"backbone.{k}": v.clone() for k, v in backbone.items()} | _dino_head("head.", embed_dim)
    # The student differs from the teacher (DDP-wrapped, other weights): the loader must pick the teacher.
    student = {f"module.backbone.{k}": v + 1.0 for k, v in backbone.items()} | _dino_head("module.head.", embed_dim)
    params = [torch.nn.Parameter(torch.randn(4, 4))]
    opt = torch.optim.AdamW(params)
    params[0].sum().backward()
    opt.step()
    return {"student": student, "teacher": teacher, "optimizer": opt.state_dict(), "epoch": 100,
            "args": argparse.Namespace(arch="vit_small", patch_size=16, out_dim=65536, lr=0.0005),
            "dino_loss": {"center": torch.zeros(1, 65)}}


@pytest.fixture(scope="module")
def vit_source():
    torch.manual_seed(0)
    return create_encoder("vit_test").eval()


@pytest.fixture(scope="module")
def dino_file(vit_source, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "vits_tcga_brca_dino.pt"
    atomic_torch_save(_full_dino_checkpoint(vit_source.model.state_dict(), vit_source.embed_dim), path)
    return path


def _same_outputs(src, dst, size=224):
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        return torch.allclose(src(x), dst.eval()(x), rtol=0, atol=1e-6)


def test_dino_official_layout_loads_teacher_with_identical_outputs(vit_source, dino_file):
    ckpt = read_checkpoint(dino_file)  # argparse.Namespace inside: still weights_only=True, no trust flag
    assert isinstance(ckpt["args"], argparse.Namespace)
    dst = create_encoder("vit_test")
    assert not _same_outputs(vit_source, dst)
    report = load_into(dst, dino_teacher_to_timm_vit(ckpt, dst))
    assert report.missing == [] and report.unexpected == []
    assert len(report.loaded) == len(dst.model.state_dict())
    assert _same_outputs(vit_source, dst)


def test_dino_bare_and_module_prefixed_state_dicts(vit_source):
    bare = {f"module.backbone.{k}": v for k, v in vit_source.model.state_dict().items()}
    dst = create_encoder("vit_test")
    load_into(dst, dino_teacher_to_timm_vit(bare))
    assert _same_outputs(vit_source, dst)


def test_dino_pos_embed_resampled_to_a_smaller_model(vit_source, dino_file):
    dst = create_encoder("vit_test", img_size=112)
    report = load_into(dst, dino_teacher_to_timm_vit(read_checkpoint(dino_file), dst))
    assert report.missing == [] and dst.model.pos_embed.shape == (1, 1 + 7 * 7, 64)
    # without the model the 224-px pos_embed does not fit, and that is an error, not a silent skip
    with pytest.raises(CheckpointMismatch, match="pos_embed"):
        load_into(create_encoder("vit_test", img_size=112), dino_teacher_to_timm_vit(read_checkpoint(dino_file)))


def _esvit_original_layout(model) -> dict[str, torch.Tensor]:
    """timm Swin weights rewritten into the original Swin / EsViT layout: patch merging at the end of stage i
    (``layers.i.downsample``), persistent ``relative_position_index`` buffers, plus EsViT's two DINO heads."""
    sd = {}
    for k, v in model.state_dict().items():
        sd[re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)] = v
    for name, buf in model.named_buffers():
        if name.endswith("relative_position_index"):
            sd[name] = buf.clone()
    dim = model.num_features
    return sd | _dino_head("head.", dim) | _dino_head("head_dense.", dim)


def test_esvit_official_layout_loads_with_identical_outputs(tmp_path):
    torch.manual_seed(1)
    src = create_encoder("swin_test").eval()
    teacher = _esvit_original_layout(src.model)
    assert "layers.0.downsample.reduction.weight" in teacher and "layers.3.downsample.reduction.weight" not in teacher
    path = tmp_path / "checkpoint_best.pth"
    atomic_torch_save({"teacher": teacher, "student": teacher, "epoch": 300,
                       "args": argparse.Namespace(arch="swin_tiny", use_dense_prediction=True)}, path)
    ckpt = read_checkpoint(path)
    dst = create_encoder("swin_test")
    # loading the original layout as-is is refused: the downsample keys sit one stage too early
    with pytest.raises(CheckpointMismatch, match="layers.0.downsample"):
        load_into(dst, {k: v for k, v in ckpt["teacher"].items() if not k.startswith(("head", "relative"))})
    sd = esvit_teacher_to_timm_swin(ckpt, dst)
    assert not any(k.startswith(("head.", "head_dense.")) for k in sd)
    report = load_into(dst, sd)
    assert report.missing == [] and report.unexpected == []
    assert _same_outputs(src, dst)


@pytest.mark.parametrize("wrap", ["bare_with_fc", "module_encoder_with_projection"])
def test_simclr_resnet_layouts_load_with_identical_outputs(wrap, tmp_path):
    torch.manual_seed(2)
    src = create_encoder("resnet_test").eval()
    sd = src.model.state_dict()
    if wrap == "bare_with_fc":
        ckpt = dict(sd) | {"fc.weight": torch.randn(10, 512), "fc.bias": torch.randn(10)}
    else:
        ckpt = {"state_dict": {f"module.encoder.{k}": v for k, v in sd.items()}
                | {"module.projection.0.weight": torch.randn(128, 512)}}
    path = tmp_path / "resnet50_tcga_brca_simclr.pt"
    atomic_torch_save(ckpt, path)
    dst = create_encoder("resnet_test")
    report = load_into(dst, simclr_resnet_to_timm(read_checkpoint(path)))
    assert report.missing == [] and report.unexpected == []
    assert _same_outputs(src, dst, size=64)


@pytest.mark.bad_input
def test_lfs_pointer_is_recognised(tmp_path):
    path = tmp_path / "vits_tcga_brca_dino.pt"
    atomic_write_text(path, LFS_POINTER)
    with pytest.raises(LFSPointerError) as err:
        read_checkpoint(path)
    msg = str(err.value)
    assert "LFS pointer" in msg and "git lfs pull" in msg and "704,238,867" in msg and str(path) in msg
    # load_official reports the pointer, not a size / sha mismatch
    with pytest.raises(LFSPointerError):
        load_official("chen2022_dino_vits16_tcga_brca", path, create_encoder("vit_test"))


@pytest.mark.parametrize("page", [
    "<!DOCTYPE html>\n<html lang='en'><head><title>Sign in</title></head><body>...</body></html>",
    '<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthenticationFailed</Code></Error>',
])
@pytest.mark.bad_input
def test_web_page_saved_as_checkpoint_is_recognised(page, tmp_path):
    path = tmp_path / "checkpoint.pth"
    atomic_write_text(path, page)
    with pytest.raises(CheckpointError, match="HTML/XML page"):
        read_checkpoint(path)


@pytest.mark.bad_input
def test_sha256_and_size_mismatch_name_file_expected_and_actual(dino_file):
    wrong = "0" * 64
    with pytest.raises(CheckpointIntegrityError) as err:
        read_checkpoint(dino_file, sha256=wrong)
    msg = str(err.value)
    assert str(dino_file) in msg and wrong in msg and sha256_file(dino_file) in msg
    read_checkpoint(dino_file, sha256=sha256_file(dino_file).upper())  # case-insensitive match passes
    # the table's published size does not match this synthetic file
    with pytest.raises(CheckpointIntegrityError, match="expected 704,238,867 bytes"):
        load_official("chen2022_dino_vits16_tcga_brca", dino_file, create_encoder("vit_test"))


def test_load_official_with_explicit_sha(vit_source, dino_file):
    dst = create_encoder("vit_test")
    report = load_official("chen2022_dino_vits16_tcga_brca", dino_file, dst, sha256=sha256_file(dino_file))
    assert report.missing == [] and _same_outputs(vit_source, dst)
    entry = official_weights("chen2022_dino_vits16_tcga_brca")
    assert entry.mean == entry.std == (0.5, 0.5, 0.5) and entry.encoder == "vit_small_patch16_224"
    assert official_weights("chen2022_simclr_resnet50_tcga_brca").sha256.startswith("88cf6fad")
    with pytest.raises(ValueError, match="unknown official weights 'dino'"):
        official_weights("dino")


@pytest.mark.bad_input
def test_wrong_architecture_is_a_clear_error(dino_file):
    ckpt = read_checkpoint(dino_file)
    with pytest.raises(CheckpointMismatch, match="shape mismatches"):
        load_into(create_encoder("vit_test", embed_dim=32), dino_teacher_to_timm_vit(ckpt))
    with pytest.raises(CheckpointMismatch) as err:
        load_into(create_encoder("resnet_test"), dino_teacher_to_timm_vit(ckpt))
    msg = str(err.value)
    assert "missing from the checkpoint" in msg and "unexpected in the checkpoint" in msg and "more" in msg
    assert "conv1.weight" in msg and "0 of" in msg


def test_allowed_prefixes_are_tolerated_and_reported(vit_source):
    sd = dict(vit_source.model.state_dict())
    sd.pop("norm.weight")
    sd["head.weight"] = torch.zeros(3, 64)
    with pytest.raises(CheckpointMismatch, match="norm.weight"):
        load_into(create_encoder("vit_test"), sd)
    report = load_into(create_encoder("vit_test"), sd, allow_missing=("norm.",))
    assert report.missing == ["norm.weight"] and report.unexpected == ["head.weight"]


@pytest.mark.security
def test_custom_class_pickle_needs_trust_flag(tmp_path):
    path = tmp_path / "custom.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "extra": NotAllowed()}, path)
    with pytest.raises(UntrustedPickleError, match="trust_pickle=True") as err:
        read_checkpoint(path)
    assert "NotAllowed" in str(err.value) and str(path) in str(err.value)
    assert read_checkpoint(path, trust_pickle=True)["extra"].value == 3


@pytest.mark.bad_input
def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        read_checkpoint(tmp_path / "nope.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01garbage" * 50)
    with pytest.raises(CheckpointError, match="garbage.pt"):
        read_checkpoint(garbage)
    bare_list = tmp_path / "list.pt"
    torch.save([torch.ones(1)], bare_list)
    with pytest.raises(CheckpointError, match="expected a dict"):
        read_checkpoint(bare_list)
