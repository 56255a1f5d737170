"""Chen & Krishnan 2022, "Self-Supervised Vision Transformers Learn Visual Concepts in Histopathology"
(LMRL workshop, NeurIPS 2021; arXiv:2203.00585).

What the reference code does (``Richarizardd/Self-Supervised-ViT-Path``, ``patch_evaluation.ipynb``; see
REFERENCE.md): frozen features — the last-layer [CLS] token of DINO ViT-S/16 (384-d) or the pooled ResNet-50 —
from encoders pretrained on 2 M TCGA-BRCA patches; scikit-learn ``KNeighborsClassifier()`` (k = 5, Euclidean)
trained on NCT-CRC-HE-100K (or its NONORM release) and tested on CRC-VAL-HE-7K, MUS merged into STR (8 classes),
macro one-vs-rest ROC-AUC; BreastPathQ: linear regression, official validation set as test, MSE and Kendall tau.
The DINO model normalizes inputs with mean = std = 0.5. Per-head [CLS] attention maps show what each head learned.

The paper's numbers live in the repository's README, not in a table of the paper: ``paper_tables/chen2022_table1.csv``
transcribes them (AUC as a fraction, as reported). The TCGA weights are the official checkpoints
(``--checkpoint chen2022_dino_vits16_tcga_brca=PATH``, ``--checkpoint chen2022_simclr_resnet50_tcga_brca=PATH``);
without them the smoke profile pretrains the same architectures with the same objectives on the bundled tiles and
the table says so; the full profile refuses to run without them (2 M TCGA patches are beyond a replication kit).
"""
from __future__ import annotations

from .recipe import DatasetSpec, EvalSpec, ModelSpec, Recipe, TableSpec, TrainSpec

PROFILES = ("smoke", "full")
TITLE = "Chen & Krishnan 2022 — DINO ViT-S/16 on histology: k-NN AUC, BreastPathQ, attention heads"
CITATION = ("R. J. Chen, R. G. Krishnan, \"Self-Supervised Vision Transformers Learn Visual Concepts in "
            "Histopathology\", LMRL Workshop, NeurIPS 2021 (arXiv:2203.00585).")
VIT = "vit_small_patch16_224"
HALF = (0.5, 0.5, 0.5)
DINO_WEIGHTS = "chen2022_dino_vits16_tcga_brca"
SIMCLR_WEIGHTS = "chen2022_simclr_resnet50_tcga_brca"


def _datasets(smoke: bool) -> tuple:
    if smoke:
        return (DatasetSpec("CRC-NONORM", "kather2016_tiny", stand_in_for="NCT-CRC-HE-100K-NONORM"),
                DatasetSpec("CRC-NORM", "kather2016_tiny", stand_in_for="NCT-CRC-HE-100K", stain="macenko"))
    merge = (("MUS", "STR"),)
    return (DatasetSpec("CRC-NONORM", "nct_crc_he_100k_nonorm", test_dataset="crc_val_he_7k", merges=merge),
            DatasetSpec("CRC-NORM", "nct_crc_he_100k", test_dataset="crc_val_he_7k", merges=merge),
            DatasetSpec("BreastPathQ", "breastpathq", split="official", task="regression"))


def build(profile: str) -> Recipe:
    smoke = profile == "smoke"
    size = 64 if smoke else 224
    datasets = _datasets(smoke)
    pretrain = ()
    fallback = ""
    if smoke:  # stand-ins for the TCGA-BRCA pretraining, used only when the official checkpoints are not given
        common = dict(dataset="CRC-NONORM", init="random", epochs=2, batch_size=16, warmup_epochs=1, image_size=size)
        pretrain = (
            TrainSpec(name="dino_vits16", method="dino", encoder=VIT, optimizer="adamw", lr=5e-4 * 16 / 256,
                      weight_decay=0.04, local_size=32, n_local=2, mean=HALF, std=HALF,
                      method_cfg=dict(out_dim=4096, warmup_teacher_temp_epochs=1, freeze_last_layer_epochs=0),
                      **common),
            TrainSpec(name="simclr_resnet50", method="simclr", encoder="resnet50", optimizer="adamw",
                      lr=1.5e-4 * 16 / 256, weight_decay=1e-6, **common),
        )
        fallback = "|train:{}"
    models = (
        ModelSpec("ImageNet ResNet-50", "resnet50", "timm"),
        ModelSpec("SimCLR ResNet-50 (TCGA)", "resnet50", f"checkpoint:{SIMCLR_WEIGHTS}" + fallback.format("simclr_resnet50")),
        ModelSpec("DINO ViT-S/16 (TCGA)", VIT, f"checkpoint:{DINO_WEIGHTS}" + fallback.format("dino_vits16"),
                  pooling="cls", mean=HALF, std=HALF),
    )
    columns = {"CRC-NONORM": {"knn_auc": "crc_nonorm_knn_auc"}, "CRC-NORM": {"knn_auc": "crc_norm_knn_auc"},
               "BreastPathQ": {"mse": "breastpathq_mse", "tau": "breastpathq_tau"}}
    keys = tuple(d.key for d in datasets)
    evaluations = (
        EvalSpec("classification_probes", "table1", tuple(m.name for m in models), keys,
                 dict(columns={k: columns[k] for k in keys})),
    )
    tables = (
        TableSpec("table1", "k-NN AUC on CRC (train NONORM / NORM, test CRC-VAL-HE-7K) and BreastPathQ regression",
                  "chen2022_table1.csv", keys=("model",),
                  metrics=("crc_nonorm_knn_auc", "crc_norm_knn_auc", "breastpathq_mse", "breastpathq_tau"),
                  footnotes=("k-NN: scikit-learn KNeighborsClassifier() defaults (k = 5, Euclidean, uniform) on "
                             "frozen features; macro one-vs-rest ROC-AUC of predict_proba, as a fraction. Full "
                             "profile: MUS merged into STR (8 classes).",
                             "BreastPathQ: linear regression on frozen features; MSE and Kendall tau on the official "
                             "validation set.",
                             "Features: last-layer [CLS] token (DINO ViT-S/16, inputs normalized with mean = std = "
                             "0.5); global average pooling (ResNet-50).",
                             "Paper values: the reference repository's README (the paper prints no such table).")),
    )
    figure_set = "CRC-NORM"
    figures = (("fig_attention_heads", "attention_heads",
                dict(model="DINO ViT-S/16 (TCGA)", dataset=figure_set, features=False,
                     classes=("TUMOR", "STROMA", "LYMPHO", "TUM", "STR", "LYM"))),)
    notes = ()
    if smoke:
        notes = ("SMOKE PROFILE — not a reproduction: 100 bundled Kather 2016 tiles (CC BY 4.0) stand in for CRC "
                 "(raw = NONORM, Macenko-normalized by the kit = NORM; no MUS class to merge) and for the TCGA-BRCA "
                 "pretraining data; 64 px images, 2 epochs on CPU; random 80/10/10 split instead of "
                 "CRC-VAL-HE-7K; DINO head with 4,096 prototypes. BreastPathQ is not in the smoke profile.",)
    return Recipe(paper="chen2022", title=TITLE, citation=CITATION, profile=profile, image_size=size,
                  datasets=datasets, models=models, pretrain=pretrain, evaluations=evaluations, tables=tables,
                  figures=figures, notes=notes, extraction_batch_size=64 if smoke else 256)
