"""The official checkpoint layouts (histokit.models.official_layouts), generated from the reference repositories' own
model definitions, load through the ordinary ``load_official`` path into the full-size encoders the recipes build:
every backbone tensor lands where the documented key mapping says, wrong architectures are refused key by key, and
every ``checkpoint:NAME`` a recipe asks for is one registry entry, named the same in the README."""
from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from histokit.models.backbones import create_encoder
from histokit.models.checkpoints import (
    MOCK_SUFFIX, OFFICIAL_WEIGHTS, CheckpointError, CheckpointIntegrityError, CheckpointMismatch, load_official,
    mock_sidecar_path, read_checkpoint, recipe_checkpoint_names,
)
from histokit.models.official_layouts import (
    MOCK_BUILDERS, checkpoint_nbytes, official_layout, swin_relative_position_index, write_all_official_mocks,
    write_official_mock,
)
from histokit.papers import get_recipe, list_papers

README = Path(__file__).resolve().parents[2] / "README.md"
NAMES = sorted(OFFICIAL_WEIGHTS)


# --------------------------------------------------------------------------------------------- one name everywhere


def _all_recipe_names() -> set[str]:
    return {n for paper in list_papers() for profile in ("smoke", "full")
            for n in recipe_checkpoint_names(get_recipe(paper, profile))}


def test_every_recipe_checkpoint_is_one_registry_entry_named_as_in_the_readme():
    used = _all_recipe_names()
    assert used and used <= set(OFFICIAL_WEIGHTS), f"unregistered: {used - set(OFFICIAL_WEIGHTS)}"
    assert recipe_checkpoint_names(get_recipe("esvit", "full")) == {
        "esvit_swin_tiny", "simclr_v1_resnet50_1x_imagenet"}
    assert recipe_checkpoint_names(get_recipe("esvit", "smoke")) == set()  # it trains smaller variants
    for profile in ("smoke", "full"):
        assert recipe_checkpoint_names(get_recipe("chen2022", profile)) == {
            "chen2022_dino_vits16_tcga_brca", "chen2022_simclr_resnet50_tcga_brca"}
    readme = set(re.findall(r"--checkpoint ([A-Za-z0-9_]+)=", README.read_text()))
    assert readme == used, f"README names {readme - used} that no recipe loads, lacks {used - readme}"


def test_every_registry_entry_has_an_official_layout_and_documents_it():
    assert set(MOCK_BUILDERS) == set(OFFICIAL_WEIGHTS)
    for entry in OFFICIAL_WEIGHTS.values():
        assert entry.layout and entry.source and entry.encoder
    v1 = OFFICIAL_WEIGHTS["simclr_v1_resnet50_1x_imagenet"]
    assert "tonylins/simclr-converter" in v1.source and "google-research/simclr" in v1.source
    assert v1.mean == (0.0, 0.0, 0.0) and v1.std == (1.0, 1.0, 1.0)  # the TF models take [0, 1] inputs


# --------------------------------------------------------------------------------------------- the layouts themselves


@pytest.mark.parametrize("name", [n for n in NAMES if OFFICIAL_WEIGHTS[n].size])
def test_layout_tensor_bytes_match_the_published_file_size(name):
    """The published sizes are an independent check of the transcription: a missing head, an extra optimizer moment
    (the frozen weight_g) or the wrong out_dim would each move the total by far more than the pickle overhead."""
    data = checkpoint_nbytes(official_layout(name))
    published = OFFICIAL_WEIGHTS[name].size
    assert 0 < published - data < 0.002 * published, (name, data, published)


def test_dino_layout_key_names_and_nesting():
    ckpt = official_layout("chen2022_dino_vits16_tcga_brca")
    assert set(ckpt) == {"student", "teacher", "optimizer", "epoch", "args", "dino_loss", "fp16_scaler"}
    teacher, student = ckpt["teacher"], ckpt["student"]
    assert list(teacher)[:4] == ["backbone.cls_token", "backbone.pos_embed", "backbone.patch_embed.proj.weight",
                                 "backbone.patch_embed.proj.bias"]
    assert teacher["backbone.pos_embed"].shape == (1, 197, 384)
    assert teacher["backbone.blocks.11.attn.qkv.weight"].shape == (1152, 384)
    assert teacher["backbone.blocks.11.mlp.fc1.weight"].shape == (1536, 384)
    assert "backbone.blocks.12.norm1.weight" not in teacher and "backbone.norm.bias" in teacher
    assert [k for k in teacher if k.startswith("head.")] == [
        "head.mlp.0.weight", "head.mlp.0.bias", "head.mlp.2.weight", "head.mlp.2.bias", "head.mlp.4.weight",
        "head.mlp.4.bias", "head.last_layer.weight_g", "head.last_layer.weight_v"]
    assert teacher["head.last_layer.weight_v"].shape == (65536, 256)
    assert set(student) == {f"module.{k}" for k in teacher}  # DDP wraps the student only
    assert isinstance(ckpt["args"], argparse.Namespace) and ckpt["args"].arch == "vit_small"
    groups = ckpt["optimizer"]["param_groups"]
    assert len(groups) == 2 and groups[1]["weight_decay"] == 0.0
    # the frozen last-layer norm (norm_last_layer=True) is not in the optimizer
    assert len(ckpt["optimizer"]["state"]) == sum(len(g["params"]) for g in groups) == len(student) - 1
    assert ckpt["dino_loss"]["center"].shape == (1, 65536)


def test_esvit_layout_follows_the_original_swin_code():
    ckpt = official_layout("esvit_swin_tiny")
    teacher = ckpt["teacher"]
    # patch merging at the END of stages 0-2 (original Swin), none after the last stage
    assert teacher["layers.0.downsample.reduction.weight"].shape == (192, 384)
    assert teacher["layers.2.downsample.norm.weight"].shape == (1536,)
    assert not any(k.startswith("layers.3.downsample") for k in teacher)
    assert [sum(1 for k in teacher if re.match(rf"layers\.{i}\.blocks\.\d+\.norm1\.weight$", k)) for i in range(4)] \
        == [2, 2, 6, 2]
    assert teacher["layers.2.blocks.5.attn.relative_position_bias_table"].shape == (169, 12)
    assert teacher["layers.3.blocks.1.attn.relative_position_index"].shape == (49, 49)
    assert teacher["layers.3.blocks.1.attn.relative_position_index"].dtype == torch.int64
    assert not any("attn_mask" in k for k in teacher)  # commented out in EsViT's Swin
    assert list(teacher)[:4] == ["patch_embed.proj.weight", "patch_embed.proj.bias", "patch_embed.norm.weight",
                                 "patch_embed.norm.bias"]
    assert teacher["norm.weight"].shape == (768,)
    assert teacher["head_dense.mlp.0.weight"].shape == (2048, 768) and "head.last_layer.weight_g" in teacher
    assert not any(k.startswith(("backbone.", "module.")) for k in teacher)
    assert set(ckpt["student"]) == {f"module.{k}" for k in teacher}
    assert set(ckpt["dino_loss"]) == {"center", "center_grid"}
    assert ckpt["args"].use_dense_prediction is True and ckpt["args"].arch == "swin_tiny"


def test_resnet_layouts():
    chen = official_layout("chen2022_simclr_resnet50_tcga_brca")
    assert len(chen) == 318 and not any(k.startswith("fc.") for k in chen)  # a bare backbone state dict
    assert chen["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert chen["layer4.2.bn3.num_batches_tracked"].shape == () and chen["conv1.weight"].shape == (64, 3, 7, 7)
    v1 = official_layout("simclr_v1_resnet50_1x_imagenet")
    assert set(v1) == {"state_dict"} and v1["state_dict"]["fc.weight"].shape == (1000, 2048)
    block = [k for k in v1["state_dict"] if k.startswith("layer2.0.")]
    assert block[0] == "layer2.0.downsample.0.weight"  # resnet_wider registers downsample first
    assert set(v1["state_dict"]) - {"fc.weight", "fc.bias"} == set(chen)


def test_relative_position_index_is_the_one_timm_recomputes():
    swin = create_encoder("swin_tiny_patch4_window7_224").model
    buffers = dict(swin.named_buffers())
    assert torch.equal(swin_relative_position_index(7), buffers["layers.0.blocks.0.attn.relative_position_index"])


# --------------------------------------------------------------------------------------------- loading the mocks


@pytest.fixture(scope="module")
def mocks(tmp_path_factory):
    return write_all_official_mocks(tmp_path_factory.mktemp("official"), compact=True)


def _official_key(name: str, timm_key: str) -> str:
    """The documented mapping, written out independently of the converters: DINO's ViT keys are timm's under
    ``backbone.``; the original Swin's patch merging of stage i is timm's ``layers.i+1.downsample``; ResNet keys are
    torchvision's, which timm shares."""
    if OFFICIAL_WEIGHTS[name].converter == "dino_vit":
        return "backbone." + timm_key
    if OFFICIAL_WEIGHTS[name].converter == "esvit_swin":
        return re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", timm_key)
    return timm_key


def _weights(name: str, ckpt: dict) -> dict:
    if OFFICIAL_WEIGHTS[name].converter in ("dino_vit", "esvit_swin"):
        return ckpt["teacher"]
    return ckpt.get("state_dict", ckpt)


EXPECTED_UNWRAPPING = {
    "chen2022_dino_vits16_tcga_brca": (["key 'teacher'", "prefix 'backbone.' (150 keys)"], ["'head.' (8 keys)"]),
    "hipt_vit256_small_dino": (["key 'teacher'", "prefix 'backbone.' (150 keys)"], ["'head.' (8 keys)"]),
    "esvit_swin_tiny": (["key 'teacher'"], ["'head.' (8 keys)", "'head_dense.' (8 keys)"]),
    "chen2022_simclr_resnet50_tcga_brca": ([], []),
    "simclr_v1_resnet50_1x_imagenet": (["key 'state_dict'"], ["'fc.' (2 keys)"]),
}


@pytest.mark.parametrize("name", NAMES)
def test_official_layout_loads_every_backbone_tensor_into_the_recipe_encoder(name, mocks):
    path = mocks[name]
    assert path.name == f"{name}{MOCK_SUFFIX}"
    entry = OFFICIAL_WEIGHTS[name]
    encoder = create_encoder(entry.encoder, pooling=entry.pooling)  # the full-size encoder at 224 px
    report = load_official(name, path, encoder)
    model_sd = encoder.model.state_dict()
    assert report.mock and report.missing == [] and report.unexpected == [] and report.shape_mismatches == []
    assert report.loaded == list(model_sd)
    assert (report.unwrapped, report.dropped) == EXPECTED_UNWRAPPING[name]
    ckpt = read_checkpoint(path)
    official = _weights(name, ckpt)
    for key, value in model_sd.items():
        assert torch.equal(value, official[_official_key(name, key)]), key
    if "student" in ckpt:  # the teacher was loaded, not the (DDP-wrapped) student
        key = next(iter(model_sd))
        assert not torch.equal(model_sd[key], ckpt["student"]["module." + _official_key(name, key)])
    with torch.no_grad():
        out = encoder.eval()(torch.rand(1, 3, 224, 224))
    assert out.shape == (1, encoder.embed_dim) and torch.isfinite(out).all()


@pytest.mark.parametrize("name,path_of,encoder,culprit", [
    ("chen2022_dino_vits16_tcga_brca", "esvit_swin_tiny", "vit_small_patch16_224", "cls_token"),
    ("esvit_swin_tiny", "chen2022_simclr_resnet50_tcga_brca", "swin_tiny_patch4_window7_224", "conv1.weight"),
    ("chen2022_simclr_resnet50_tcga_brca", "hipt_vit256_small_dino", "resnet50", None),
])
@pytest.mark.bad_input
def test_wrong_architecture_file_is_refused_with_the_key_level_report(name, path_of, encoder, culprit, mocks):
    with pytest.raises(CheckpointError) as err:
        load_official(name, mocks[path_of], create_encoder(encoder))
    msg = str(err.value)
    if culprit is None:  # a DINO training checkpoint holds no SimCLR state dict at all
        assert "no SimCLR ResNet state dict found" in msg and "teacher" in msg
        return
    assert isinstance(err.value, CheckpointMismatch) and "wrong architecture" in msg and culprit in msg
    report = err.value.report
    assert report is not None and (report.missing or report.unexpected or report.shape_mismatches)
    assert culprit in report.missing + report.unexpected + [s.split(":")[0] for s in report.shape_mismatches]


@pytest.mark.bad_input
def test_a_mock_is_verified_against_its_sidecar(mocks, tmp_path):
    src = mocks["chen2022_simclr_resnet50_tcga_brca"]
    meta = json.loads(mock_sidecar_path(src).read_text())
    assert meta["mock"] is True and meta["name"] == "chen2022_simclr_resnet50_tcga_brca" and "MOCK" in meta["note"]
    copy = tmp_path / src.name
    shutil.copyfile(src, copy)
    with pytest.raises(CheckpointIntegrityError, match="sidecar"):  # no sidecar: not accepted in place of the pin
        load_official("chen2022_simclr_resnet50_tcga_brca", copy, create_encoder("resnet50"))
    mock_sidecar_path(copy).write_text(json.dumps(meta | {"sha256": "0" * 64}))
    with pytest.raises(CheckpointIntegrityError, match="sha256 mismatch"):
        load_official("chen2022_simclr_resnet50_tcga_brca", copy, create_encoder("resnet50"))
    # a file that is not named as a mock is checked against the published size and sha256
    plain = tmp_path / "resnet50_tcga_brca_simclr.pt"
    copy.rename(plain)
    with pytest.raises(CheckpointIntegrityError, match="94,351,453"):
        load_official("chen2022_simclr_resnet50_tcga_brca", plain, create_encoder("resnet50"))
    with pytest.raises(ValueError, match=r"\.MOCK\.pth"):
        write_official_mock("chen2022_simclr_resnet50_tcga_brca", tmp_path / "resnet50_tcga_brca_simclr.pt")


def test_mocks_are_reused_and_deterministic(mocks, tmp_path):
    directory = next(iter(mocks.values())).parent
    stamps = {n: p.stat().st_mtime_ns for n, p in mocks.items()}
    again = write_all_official_mocks(directory, compact=True)
    assert again == mocks and {n: p.stat().st_mtime_ns for n, p in again.items()} == stamps
    other = write_official_mock("chen2022_simclr_resnet50_tcga_brca", tmp_path, seed=0)
    a, b = read_checkpoint(other), read_checkpoint(mocks["chen2022_simclr_resnet50_tcga_brca"])
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_full_size_mock_matches_the_published_file(tmp_path):
    """Not compact: Chen & Krishnan's SimCLR file is small enough to write in full; its size lands within 0.1 % of
    the published 94,351,453 bytes (the rest is the zip container's per-record names)."""
    path = write_official_mock("chen2022_simclr_resnet50_tcga_brca", tmp_path / "chen.MOCK.pth", seed=3)
    assert abs(path.stat().st_size - 94_351_453) < 0.001 * 94_351_453
    sd = torch.load(path, map_location="cpu", weights_only=True)  # what the official loader does: a bare dict
    assert len(sd) == 318 and all(torch.is_tensor(v) for v in sd.values())
