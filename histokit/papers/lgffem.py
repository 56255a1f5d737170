"""Nuñez-Fernández, Farias, Solar 2025, "Content-Based Histopathological Image Retrieval" (Sensors) — LGFFEM.

What the paper does: a frozen ConvNeXt V2-Base (FCMAE) backbone feeds a Local-Global Feature Fusion Neck (3 BiFPN-
style layers at 512 channels, Global and Local Aggregators) and four GeM mini-heads concatenated into a 2048-d
descriptor; neck and heads are trained with Sub-center ArcFace (m = 17.2°, s = 64), AdamW with cosine annealing
5e-3 -> 8e-5, batch 64, 224 px. Strategies (Table 1): A = trained on ImageNet-1k, B = then PanNuke, C = then
Kimia Path24C. Retrieval: FAISS L2 index, eta_p / eta_w / eta_tot on Kimia Path24C. Table 2 compares DenseNet-121
features and "MA + MS-loss". Figures: a query and its retrievals (Fig. 3), Grad-CAM++ over the neck's outer nodes
(Figs. 4-6), the 2-D projection of the test embeddings by scan (Fig. 7).

Open points, stated in the footnotes and each table's protocol card: the public code (camilo-nunez/ffnir) passes
the margin as the scale (m = s = 17.5) and computes eta differently from the Kimia standard (docs/protocols.md); the kit
trains with the paper's m and s, reports eta in both protocols (one table each), and keeps "MA + MS-loss" as the
paper's number only: it has no public code, so it is marked not reproduced. Epochs (Sec. 4.1.3): strategy A 60,
strategies B and C 300. Where the paper is silent the full profile follows the public code: each dataset's whole
training set with no validation hold-out (ImageNet train, PanNuke fold 1, Kimia's 22,591 training patches, which are
also the standard-eta gallery), the scripts' augmentations, 6 sub-centres with the class centres on their own AdamW
at 1e-4, and the notebook's natural file order for the public-code eta.
"""
from __future__ import annotations

from dataclasses import replace

from ..evaluation.protocols import KimiaEta
from ..viz.figures import GradCam, Projection, RetrievalGallery
from .recipe import DatasetSpec, ModelSpec, ProtocolPoint, Recipe, TableSpec, TrainSpec, derive

PROFILES = ("smoke", "full")
TITLE = "Nuñez-Fernández et al. 2025 — LGFFEM on Kimia Path24C"
CITATION = ("C. Nuñez-Fernández, H. Farias, M. Solar, \"Content-Based Histopathological Image Retrieval\", "
            "Sensors 25 (2025).")
STRATEGIES = (("A", "IN-1K", "ImageNet"), ("B", "IN-1K + PanNuke", "PanNuke"),
              ("C", "IN-1K + PanNuke + Kimia", "Kimia"))
STRATEGY_EPOCHS = {"A": 60, "B": 300, "C": 300}  # Sec. 4.1.3 (full profile; smoke trains 2)
FINAL = "LGFFEM strategy C"   # the model of Table 2 and the figures
# Each dataset's training augmentation as its ffnir script (models/lgffem_train.py): train_in1k.py, train_pannuke.py,
# train_kimia.py. The smoke stand-in for Kimia takes Kimia's.
AUGMENTATION = {"ImageNet": "ffnir_imagenet", "PanNuke": "ffnir_pannuke", "Kimia": "ffnir_kimia"}


def protocol_card(table: str, eta: str) -> tuple:
    """The protocol card of ``table`` ("table1" | "table2") with the ``eta`` protocol ("standard" | "public_code"):
    what the paper (Sec. 4.1) or its public code (camilo-nunez/ffnir, said so) states vs the kit's full profile."""
    standard = eta == "standard"
    card = [
        ProtocolPoint(
            "data + split",
            "ImageNet-1k, PanNuke and the 22,591 Kimia Path24C training patches train, the 1,325 test patches are "
            "evaluated; public code: ImageNet train, PanNuke fold 1 (PathML split=1), all of Kimia train, no "
            "validation set",
            "the same sets, whole: ImageNet split='none', PanNuke train_splits=('fold1',), Kimia val_fraction=0",
            variant="val_fraction=0.1, train_splits=() (10 % held out; PanNuke folds 1 + 2)"),
        ProtocolPoint(
            "training set vs gallery",
            "the standard eta searches the Kimia training patches, strategy C's training set" if standard else
            "the notebook behind the numbers searches the 1,325 test patches against themselves",
            "the same 22,591 patches train strategy C and form the gallery" if standard else "the same"),
        ProtocolPoint(
            "augmentation",
            "Albumentations (PanNuke, Kimia), 224 px; public code: Kimia resize 224, V/H flips and RandomRotate90 "
            "p=0.6, GaussianBlur p=0.5, MedianBlur(5) p=0.6; PanNuke the same at p=0.5 (256 px); ImageNet "
            "RandomResizedCrop + H-flip",
            "the public code's pipelines (OpenCV blurs), PanNuke resized to 224 px as the paper states",
            variant="augmentation='kit_rrc' (RandomResizedCrop 0.08-1 + H/V flips)"),
        ProtocolPoint(
            "strategies A / B / C schedule",
            "A 60, B 300, C 300 epochs, batch 64, AdamW, cosine 5e-3 -> 8e-5 (public code: per-batch warm restarts; "
            "the notebook's A / B / C checkpoints are named epoch10 / 198 / 499)",
            "A {A}, B {B}, C {C} epochs, each from the previous one; batch 64, AdamW (wd 1e-5), per-epoch cosine "
            "5e-3 -> 8e-5, clip 1.0".format(**STRATEGY_EPOCHS)),
        ProtocolPoint(
            "loss hyper-parameters",
            "Sub-center ArcFace m = 17.2, s = 64; public code: m = s = 17.5, 6 sub-centres, the centres on their "
            "own AdamW at 1e-4",
            "m = 17.2°, s = 64; 6 sub-centres and the centres' own constant AdamW at 1e-4",
            variant="variant='public_code' (m = s = 17.5); centres_optimizer='shared', sub_centers=3"),
        ProtocolPoint(
            "eta protocol",
            "Kimia standard (Sec. 4.1.1): eta_p, eta_w over the 1,325 test patches, eta_tot = eta_p x eta_w",
            "each test patch's top-1 among the training patches, exact FAISS L2",
            variant="the *_public_code tables (the notebook's computation)") if standard else ProtocolPoint(
            "eta protocol",
            "Sec. 4.1.1 states the standard, but the numbers come from the notebook: natsorted patches, each "
            "scan's first patch queries the test set to a growing depth, hits by file name",
            "the notebook's computation step by step (eta_public_code)", same=False,
            variant="the tables without suffix (the standard)"),
        ProtocolPoint(
            "evaluation preprocessing",
            "resize to 224 px, ImageNet mean / std (notebook: bilinear)",
            "resize to 224 px bicubic, ImageNet mean / std", same=False),
    ]
    if table == "table2":
        card.append(ProtocolPoint(
            "baselines",
            "DenseNet 121 quoted from Shafiei et al. 2021 [12], MA + MS-loss from Yang et al. 2020 [14]",
            "DenseNet 121 run here (timm ImageNet weights, GAP, same index and eta); MA + MS-loss not run (no code)",
            same=False))
    return tuple(card)


def _evaluations(strategies) -> tuple:
    """Tables 1 and 2 in both eta protocols; Table 1's rows are the ``strategies`` (letters) the profile trains."""
    strategy_rows = {f"LGFFEM strategy {letter}": {"strategy": letter, "pretraining_data": data}
                     for letter, data, _ in STRATEGIES if letter in strategies}
    evaluations = ()
    for protocol, suffix in (("standard", ""), ("public_code", "_public_code")):
        evaluations += (
            KimiaEta("table1" + suffix, tuple(strategy_rows), ("Kimia",), protocol=protocol, rows=strategy_rows),
            KimiaEta("table2" + suffix, ("DenseNet 121", FINAL), ("Kimia",), protocol=protocol,
                     rows={"DenseNet 121": {"method": "DenseNet 121"}, FINAL: {"method": "LGFFEM"}}),
        )
    return evaluations


def _projection(**kw) -> Projection:
    return Projection("fig7_projection", model=FINAL, dataset="Kimia", **kw)


def full() -> Recipe:
    # Training reads the whole training set, no validation hold-out, as the ffnir scripts: ImageNet-1k's train
    # split (torchvision ImageNet(split="train")), PanNuke fold 1 (PathML PanNukeDataModule(split=1) ->
    # train_dataloader = fold 1; its validation loader is never used), Kimia Path24C's 22,591 official training
    # patches (train_kimia.py reads <kimia>/train) - which are also the search gallery of the standard eta.
    datasets = (DatasetSpec("ImageNet", "imagenet1k", split="none"),
                DatasetSpec("PanNuke", "pannuke", split="official", train_splits=("fold1",), val_fraction=0.0),
                DatasetSpec("Kimia", "kimia_path24c", split="official", val_fraction=0.0))

    # Sub-center ArcFace with the paper's m = 17.2°, s = 64 (variant="public_code": the scripts' m = s = 17.5); the
    # scripts' 6 sub-centres and their own AdamW for the class centres at a constant 1e-4 (the paper states neither;
    # centres_optimizer="shared", sub_centers=3: the kit's earlier choice, the centres in the model's optimizer).
    # Each strategy continues from the previous one; the frozen backbone is timm's FCMAE ConvNeXt V2 throughout.
    # Sec. 4.1.3: "Strategy A used a batch size of 64 for 60 epochs, while strategies B and C ... for 300 epochs".
    pretrain, previous = (), "timm"
    for letter, _, dataset in STRATEGIES:
        pretrain += (TrainSpec(name=f"lgffem_{letter}", method="subcenter_arcface", encoder="lgffem_base",
                               dataset=dataset, init=previous, epochs=STRATEGY_EPOCHS[letter], batch_size=64,
                               lr=5e-3, min_lr=8e-5, weight_decay=1e-5, warmup_epochs=0, image_size=224,
                               method_cfg=dict(variant="paper", sub_centers=6, centres_optimizer="separate",
                                               centres_lr=1e-4, augmentation=AUGMENTATION[dataset])),)
        previous = f"train:lgffem_{letter}"
    models = tuple(ModelSpec(f"LGFFEM strategy {letter}", "lgffem_base", f"train:lgffem_{letter}")
                   for letter, _, _ in STRATEGIES) + (ModelSpec("DenseNet 121", "densenet121", "timm"),)
    etas = ("eta_p", "eta_w", "eta_tot")
    standard = ("eta (%) in the Kimia standard protocol (Babaie et al. 2017; Shafiei et al. 2021): every test patch "
                "queries the training patches through an exact FAISS L2 index; eta_p = correct top-1 scans / test "
                "patches, eta_w = mean per-scan accuracy, eta_tot = eta_p x eta_w.")
    public = ("eta (%) as the public ffnir code computes it (not the Kimia standard): the test patches are indexed "
              "and searched against themselves, one query per scan (its first patch in natural file order), search "
              "depth growing with the scan index, hits counted by file name. Shown because the paper's numbers come "
              "from that code.")
    training = ("Neck + GeM heads trained with pytorch-metric-learning's SubCenterArcFaceLoss, m = 17.2°, s = 64 "
                "(the paper's values; the public code runs m = s = 17.5), 6 sub-centres and the class centres on "
                "their own AdamW at 1e-4 (the public code's), neck and heads AdamW, cosine 5e-3 -> 8e-5; backbone "
                "frozen.")
    no_code = "no public code exists, so the row shows the paper's numbers only; nothing of it was run here."
    tables = ()
    for suffix, eta, protocol_note in (("", "standard", standard), ("_public_code", "public_code", public)):
        label = "" if not suffix else " (public-code eta)"
        section_note = "" if not suffix else ", eta as the public ffnir code computes it"
        tables += (
            TableSpec("table1" + suffix, f"Table 1 — training strategies A / B / C{label}",
                      "nunez2025_lgffem_table1.csv", keys=("strategy", "pretraining_data"), metrics=etas,
                      footnotes=(protocol_note, training), protocol=protocol_card("table1", eta),
                      section="Sec. 4.2.1 (metric evaluation), Table 1" + section_note),
            TableSpec("table2" + suffix, f"Table 2 — comparison with other methods{label}",
                      "nunez2025_lgffem_table2.csv", keys=("method",), metrics=etas,
                      footnotes=(protocol_note, "DenseNet 121: ImageNet features (timm), global average pooling, "
                                                "same index and protocol."),
                      not_reproducible=(("MA + MS-loss", no_code),), protocol=protocol_card("table2", eta),
                      section="Sec. 4.2.1 (metric evaluation), Table 2" + section_note),
        )
    figures = (
        RetrievalGallery("fig3_query", model=FINAL, dataset="Kimia", k=5, n_queries=3),
        GradCam("fig4_6_gradcam", model=FINAL, dataset="Kimia", k=2),
        _projection(split="test", legend_title="scan",
                    title="UMAP of LGFFEM descriptors — Kimia Path24C test patches"),
    )
    return Recipe(paper="lgffem", title=TITLE, citation=CITATION, profile="full", image_size=224,
                  datasets=datasets, models=models, pretrain=pretrain, evaluations=_evaluations("ABC"),
                  tables=tables, figures=figures, extraction_batch_size=256)


def smoke() -> Recipe:
    """The full recipe on the bundled tiles, ConvNeXt V2-Atto, 64 px, 2 epochs. Strategies A and B need ImageNet-1k
    and PanNuke, which the smoke profile does not have: they are not run, and C starts from the untrained neck."""
    f = full()
    return derive(
        f, "smoke", encoders={"lgffem_base": "lgffem_atto"},
        train=lambda t: replace(t, epochs=2, batch_size=16, image_size=64),
        # each tissue class of the bundled tiles plays the role of a scan
        datasets=(DatasetSpec("Kimia", "kather2016_tiny", stand_in_for="kimia_path24c"),),
        pretrain=(replace(f.train_spec("lgffem_C"), init="timm"),),
        models=(f.model(FINAL), f.model("DenseNet 121")),
        evaluations=_evaluations("C"),
        table=lambda t: replace(t, footnotes=t.footnotes + (
            "The protocol card below describes the full profile; the smoke profile's deviations (data, backbone, "
            "image size, epochs) are in the notes.",)),
        figures=f.figures[:2] + (_projection(split="all", legend_title="class (stand-in scan)",
                                             title="UMAP of LGFFEM descriptors — all 100 bundled tiles"),),
        image_size=64, extraction_batch_size=32,
        notes=("SMOKE PROFILE — not a reproduction: 100 bundled Kather 2016 tiles (CC BY 4.0) stand in for Kimia "
               "Path24C, each tissue class playing a scan, random 80/10/10 split (test patches query the training "
               "patches); ConvNeXt V2-Atto instead of -Base as the frozen backbone (the neck and heads are the "
               "paper's: 3 layers at 512 channels, 2048-d); 64 px, 2 epochs, CPU. Strategies A and B need "
               "ImageNet-1k and PanNuke, which the smoke profile does not have: they are not run, and strategy C "
               "starts from untrained neck weights.",))


def build(profile: str) -> Recipe:
    return {"full": full, "smoke": smoke}[profile]()
