"""Official-checkpoint loaders: synthetic files laid out exactly like the published ones round-trip to identical
outputs; every way a downloaded file goes wrong gives an error that says what happened."""
from __future__ import annotations

import argparse
import re
from collections import OrderedDict

import pytest
import torch

from histokit.io import atomic_torch_save, atomic_write_text, sha256_file
from histokit.models.backbones import create_encoder
from histokit.models.checkpoints import (
    CheckpointArgumentError, CheckpointError, CheckpointIntegrityError, CheckpointMismatch, LFSPointerError,
    UntrustedPickleError, Unwrapping, dino_teacher_to_timm_vit, esvit_teacher_to_timm_swin, load_into, load_official,
    official_weights, read_checkpoint, recipe_checkpoint_names, simclr_resnet_to_timm, validate_checkpoint_args,
)
from histokit.models.official_layouts import dino_head_layout, esvit_swin_layout, filler, materialize
from histokit.papers import get_recipe

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


def _esvit_small_checkpoint(seed: int = 1) -> dict:
    """An EsViT training checkpoint at ``swin_test`` size, its Swin keys generated from the official Swin code's
    structure (official_layouts.esvit_swin_layout: patch merging at the end of stage i, persistent
    relative_position_index buffers) — not from timm's key mapping — with EsViT's two DINO heads on the Swin."""
    make = filler(torch.Generator().manual_seed(seed))
    swin = esvit_swin_layout(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4))
    head = dino_head_layout(192, 65, hidden_dim=32, bottleneck_dim=16)
    model = OrderedDict(swin) | {f"{p}.{k}": v for p in ("head", "head_dense") for k, v in head.items()}
    return {"teacher": materialize(model, make), "student": materialize(model, make, "module."), "epoch": 300,
            "args": argparse.Namespace(arch="swin_tiny", use_dense_prediction=True)}


def test_esvit_official_layout_loads_by_the_documented_mapping(tmp_path):
    path = tmp_path / "checkpoint_best.pth"
    atomic_torch_save(_esvit_small_checkpoint(), path)
    ckpt = read_checkpoint(path)
    teacher = ckpt["teacher"]
    assert "layers.0.downsample.reduction.weight" in teacher and "layers.3.downsample.reduction.weight" not in teacher
    dst = create_encoder("swin_test")
    # loading the original layout as-is is refused: the downsample keys sit one stage too early
    with pytest.raises(CheckpointMismatch, match="layers.0.downsample"):
        load_into(dst, {k: v for k, v in teacher.items() if not k.startswith("head")})
    trace = Unwrapping()
    sd = esvit_teacher_to_timm_swin(ckpt, dst, trace=trace)
    assert not any(k.startswith(("head.", "head_dense.")) for k in sd)
    assert trace.unwrapped == ["key 'teacher'"] and trace.dropped == ["'head.' (8 keys)", "'head_dense.' (8 keys)"]
    report = load_into(dst, sd)
    assert report.missing == [] and report.unexpected == []
    for key, value in dst.model.state_dict().items():  # original stage i merging = timm's stage i+1
        official = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        assert torch.equal(value, teacher[official]), key


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


# --------------------------------------------------------------------------------------------- a user's own training


def _user_files(vit_sd, swin_sd, resnet_sd):
    """The wrappers a user's own training scripts write around the weights, and what unwrapping each takes."""
    nv, ns, nr = len(vit_sd), len(swin_sd), len(resnet_sd)
    return [
        ("model", "chen2022_dino_vits16_tcga_brca", "vit_test", {"model": dict(vit_sd), "epoch": 3},
         ["key 'model'"]),
        ("state_dict_ddp", "chen2022_dino_vits16_tcga_brca", "vit_test",
         {"state_dict": {f"module.{k}": v for k, v in vit_sd.items()}, "optimizer": {}},
         ["key 'state_dict'", f"prefix 'module.' ({nv} keys)"]),
        ("teacher_backbone", "esvit_swin_tiny", "swin_test",
         {"teacher": {f"backbone.{k}": v for k, v in swin_sd.items()}, "epoch": 1},
         ["key 'teacher'", f"prefix 'backbone.' ({ns} keys)"]),
        ("lightning", "simclr_v1_resnet50_1x_imagenet", "resnet_test",
         {"state_dict": {f"model.encoder.{k}": v for k, v in resnet_sd.items()}, "global_step": 10},
         ["key 'state_dict'", f"prefix 'model.' ({nr} keys)", f"prefix 'encoder.' ({nr} keys)"]),
        ("bare_module_backbone", "hipt_vit256_small_dino", "vit_test",
         {f"module.backbone.{k}": v for k, v in vit_sd.items()},
         [f"prefix 'module.' ({nv} keys)", f"prefix 'backbone.' ({nv} keys)"]),
    ]


def test_user_training_wrappers_are_unwrapped_and_reported(tmp_path):
    torch.manual_seed(4)
    sources = {n: create_encoder(n).eval() for n in ("vit_test", "swin_test", "resnet_test")}
    files = _user_files(*(sources[n].model.state_dict() for n in ("vit_test", "swin_test", "resnet_test")))
    for label, name, encoder, obj, unwrapped in files:
        path = tmp_path / f"{label}.pth"
        atomic_torch_save(obj, path)
        dst = create_encoder(encoder)
        report = load_official(name, path, dst, verify=False)  # a user's own file: no published checksum
        assert report.unwrapped == unwrapped, label
        assert report.missing == [] and report.unexpected == [] and not report.mock, label
        assert "unwrapped=" in str(report)
        assert _same_outputs(sources[encoder], dst, size=64), label


# --------------------------------------------------------------------------------------------- --checkpoint arguments


def test_recipe_checkpoint_names():
    assert recipe_checkpoint_names(get_recipe("esvit", "full")) == {
        "esvit_swin_tiny", "simclr_v1_resnet50_1x_imagenet"}
    assert recipe_checkpoint_names(get_recipe("esvit", "smoke")) == set()  # smaller variants: weights do not fit
    assert recipe_checkpoint_names(get_recipe("chen2022", "full")) == {
        "chen2022_dino_vits16_tcga_brca", "chen2022_simclr_resnet50_tcga_brca"}
    assert recipe_checkpoint_names(get_recipe("lgffem", "full")) == set()


@pytest.fixture()
def weights_file(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}}, path)
    return path


def test_valid_checkpoint_arguments_pass(weights_file):
    recipes = [get_recipe("esvit", "full"), get_recipe("chen2022", "full")]
    validate_checkpoint_args({"esvit_swin_tiny": str(weights_file), "chen2022_dino_vits16_tcga_brca": weights_file},
                             recipes)
    validate_checkpoint_args({}, recipes)


@pytest.mark.bad_input
def test_unknown_checkpoint_name_lists_what_the_recipes_accept(weights_file):
    recipes = [get_recipe("esvit", "full")]
    with pytest.raises(CheckpointArgumentError) as err:
        validate_checkpoint_args({"esvit": str(weights_file)}, recipes)  # the README's old spelling
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert "unknown checkpoint name 'esvit'" in msg and "did you mean 'esvit_swin_tiny'" in msg
    assert "esvit_swin_tiny (swin_tiny_patch4_window7_224" in msg and "simclr_v1_resnet50_1x_imagenet" in msg
    assert "esvit/full" in msg
    # a registry name that no selected recipe loads would be silently ignored: it is an error too
    with pytest.raises(CheckpointArgumentError, match="no selected recipe loads them"):
        validate_checkpoint_args({"chen2022_dino_vits16_tcga_brca": str(weights_file)}, recipes)
    with pytest.raises(CheckpointArgumentError, match="take no --checkpoint"):
        validate_checkpoint_args({"esvit_swin_tiny": str(weights_file)}, [get_recipe("lgffem", "full")])


@pytest.mark.bad_input
def test_missing_and_unusable_checkpoint_files_are_named(tmp_path):
    recipes = [get_recipe("chen2022", "full")]
    lfs = tmp_path / "vits_tcga_brca_dino.pt"
    atomic_write_text(lfs, LFS_POINTER)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    missing = tmp_path / "nope" / "resnet50_tcga_brca_simclr.pt"
    with pytest.raises(CheckpointArgumentError) as err:
        validate_checkpoint_args({"chen2022_dino_vits16_tcga_brca": lfs,
                                  "chen2022_simclr_resnet50_tcga_brca": missing}, recipes)
    msg = str(err.value)  # both problems in one error, each naming its path
    assert f"the file {missing} does not exist" in msg and "Git-LFS pointer" in msg and str(lfs) in msg
    with pytest.raises(CheckpointArgumentError, match="empty"):
        validate_checkpoint_args({"chen2022_dino_vits16_tcga_brca": empty}, recipes)
    with pytest.raises(CheckpointArgumentError, match="not a file"):
        validate_checkpoint_args({"chen2022_dino_vits16_tcga_brca": tmp_path}, recipes)


@pytest.mark.bad_input
def test_unreadable_checkpoint_file_is_named(weights_file, monkeypatch):
    import histokit.models.checkpoints as checkpoints

    def denied(path):  # what open() raises without read permission (root would read it anyway)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(checkpoints, "_sniff", denied)
    with pytest.raises(CheckpointArgumentError, match="cannot be read") as err:
        validate_checkpoint_args({"esvit_swin_tiny": weights_file}, [get_recipe("esvit", "full")])
    assert str(weights_file) in str(err.value) and "Permission denied" in str(err.value)


# --------------------------------------------------------------------------------------------- load_into on saved files


def _saved(obj, tmp_path, name: str) -> dict:
    """torch.save to a file and back with weights_only=True, as a user's `load_into(enc, torch.load(...))` does."""
    path = tmp_path / f"{name}.pth"
    torch.save(obj, path)
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("label, wrap, unwrapped", [
    ("bare", lambda sd: dict(sd), []),
    ("model", lambda sd: {"model": dict(sd), "optimizer": {"state": {}}, "epoch": 7}, ["key 'model'"]),
    ("state_dict_ddp", lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 2},
     ["key 'state_dict'", "prefix 'module.' (N keys)"]),
    ("teacher_dino", lambda sd: {"teacher": {f"backbone.{k}": v for k, v in sd.items()} | _dino_head("head.", 64),
                                 "student": {f"module.backbone.{k}": v + 1 for k, v in sd.items()}, "epoch": 1},
     ["key 'teacher'", "prefix 'backbone.' (N keys)"]),
    ("module_only", lambda sd: {f"module.{k}": v for k, v in sd.items()}, ["prefix 'module.' (N keys)"]),
])
def test_load_into_unwraps_saved_training_checkpoints(vit_source, tmp_path, caplog, label, wrap, unwrapped):
    sd = vit_source.model.state_dict()
    obj = _saved(wrap(sd), tmp_path, label)
    dst = create_encoder("vit_test")
    with caplog.at_level("INFO", logger="histokit.models.checkpoints"):
        report = load_into(dst, obj)
    assert report.unwrapped == [u.replace("N keys", f"{len(sd)} keys") for u in unwrapped], label
    assert report.missing == [] and len(report.loaded) == len(sd)
    assert _same_outputs(vit_source, dst, size=224), label  # the teacher, not the student (+1)
    if unwrapped:
        assert "unwrapped=" in str(report)
        assert any("unwrapped" in r.getMessage() and unwrapped[0].split(" (")[0] in r.getMessage()
                   for r in caplog.records)
    else:
        assert not caplog.records


@pytest.mark.bad_input
def test_load_into_still_refuses_a_wrong_architecture_inside_a_wrapper(vit_source, tmp_path):
    obj = _saved({"state_dict": {f"module.{k}": v for k, v in vit_source.model.state_dict().items()}},
                 tmp_path, "vit_in_ddp")
    with pytest.raises(CheckpointMismatch) as err:
        load_into(create_encoder("resnet_test"), obj)
    msg = str(err.value)
    # nothing of the ViT fits a ResNet: module. is left on (no stripped key is the ResNet's), the report is key-level
    assert "missing from the checkpoint" in msg and "unexpected in the checkpoint" in msg and "conv1.weight" in msg
    assert "after unwrapping key 'state_dict'" in msg and "0 of" in msg
    assert err.value.report.unwrapped == ["key 'state_dict'"] and err.value.report.loaded == []
    wider = _saved({"model": create_encoder("vit_test", embed_dim=32).model.state_dict()}, tmp_path, "narrow")
    with pytest.raises(CheckpointMismatch, match="shape mismatches") as err:
        load_into(create_encoder("vit_test"), wider)
    assert err.value.report.shape_mismatches and err.value.report.unwrapped == ["key 'model'"]


@pytest.mark.bad_input
def test_load_into_names_the_keys_when_no_weights_are_found(tmp_path):
    obj = _saved({"optimizer": {"state": {}}, "epoch": 3, "weights": {"a": 1}}, tmp_path, "no_weights")
    with pytest.raises(CheckpointError, match=r"no model state dict found.*'teacher', 'state_dict', 'model'.*epoch"):
        load_into(create_encoder("vit_test"), obj)
