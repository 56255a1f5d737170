"""Chen & Krishnan 2022, "Self-Supervised Vision Transformers Learn Visual Concepts in Histopathology"
(LMRL workshop, NeurIPS 2021; arXiv:2203.00585).

What the reference code does (``Richarizardd/Self-Supervised-ViT-Path``: ``patch_extraction_utils.py`` embeds,
``patch_evaluation.ipynb`` evaluates; see docs/protocols.md): frozen features — the last-layer [CLS] token of DINO
ViT-S/16 (384-d), the pooled SimCLR ResNet-50 (2,048-d), and for ImageNet ``resnet50_trunc_baseline`` (torchvision's
ResNet-50 cut after layer3, 1,024-d) — of native-size tiles (ToTensor + Normalize only: mean = std = 0.5 for the
TCGA weights, ImageNet statistics for the ImageNet model; 224 px CRC, 512 px BreastPathQ); scikit-learn
``KNeighborsClassifier()`` (k = 5, uniform, Minkowski p = 2) fitted on the raw embeddings of all of NCT-CRC-HE-100K
(or its NONORM release) and tested on CRC-VAL-HE-7K, MUS merged into STR (8 classes), macro one-vs-rest ROC-AUC;
BreastPathQ: ``LinearRegression`` on the official training set, the official validation set as test, MSE of the raw
predictions and the repository's own ``kendalltau_bpq`` (not scipy's tau-b; see
:func:`histokit.evaluation.regression.kendalltau_bpq`). Per-head [CLS] attention maps show what each head learned.

The paper's numbers live in the repository (README and the notebook's outputs), not in a table of the paper:
``paper_tables/chen2022_table1.csv`` transcribes them with a ``source`` column (AUC as a fraction, as reported). The
TCGA weights are the official checkpoints (``--checkpoint chen2022_dino_vits16_tcga_brca=PATH``,
``--checkpoint chen2022_simclr_resnet50_tcga_brca=PATH``), whose registry entries give the input normalization;
without them the smoke profile pretrains the same architectures with the same objectives on the bundled tiles and
the table says so; the full profile refuses to run without them (2 M TCGA patches are beyond a replication kit).
"""
from __future__ import annotations

from dataclasses import replace

from ..evaluation.protocols import ClassificationProbes
from ..viz.figures import AttentionHeads
from .recipe import DatasetSpec, ModelSpec, ProtocolPoint, Recipe, TableSpec, TrainSpec, derive

PROFILES = ("smoke", "full")
TITLE = "Chen & Krishnan 2022 — DINO ViT-S/16 on histology: k-NN AUC, BreastPathQ, attention heads"
CITATION = ("R. J. Chen, R. G. Krishnan, \"Self-Supervised Vision Transformers Learn Visual Concepts in "
            "Histopathology\", LMRL Workshop, NeurIPS 2021 (arXiv:2203.00585).")
VIT = "vit_small_patch16_224"
HALF = (0.5, 0.5, 0.5)
DINO_WEIGHTS = "chen2022_dino_vits16_tcga_brca"
SIMCLR_WEIGHTS = "chen2022_simclr_resnet50_tcga_brca"
REFERENCE = "Richarizardd/Self-Supervised-ViT-Path"
BPQ_SIZE = 512   # BreastPathQ's native tile size: the reference feeds the tiles as they are (no resize)


# measure -> column: the columns compared with the paper are the reference's own metrics (raw-prediction MSE,
# kendalltau_bpq); clipped MSE and scipy's tau-b are kit-only columns beside them
COLUMNS = {"CRC-NONORM": {"knn_auc": "crc_nonorm_knn_auc"}, "CRC-NORM": {"knn_auc": "crc_norm_knn_auc"},
           "BreastPathQ": {"mse_unclipped": "breastpathq_mse", "tau_bpq": "breastpathq_tau",
                           "mse": "breastpathq_mse_clipped", "tau_unclipped": "breastpathq_tau_b"}}


def _probes(models: tuple, keys: tuple) -> tuple:
    return (ClassificationProbes("table1", tuple(m.name for m in models), keys,
                                 columns={k: COLUMNS[k] for k in keys}, fit_on="train+val"),)


def full() -> Recipe:
    merge = (("MUS", "STR"),)
    datasets = (DatasetSpec("CRC-NONORM", "nct_crc_he_100k_nonorm", test_dataset="crc_val_he_7k", merges=merge),
                DatasetSpec("CRC-NORM", "nct_crc_he_100k", test_dataset="crc_val_he_7k", merges=merge),
                DatasetSpec("BreastPathQ", "breastpathq", split="official", task="regression", image_size=BPQ_SIZE))
    models = (
        ModelSpec("ImageNet ResNet-50", "resnet50_trunc", "timm",
                  note="torchvision ResNet-50 truncated after layer3 (the reference's resnet50_trunc_baseline)"),
        ModelSpec("SimCLR ResNet-50 (TCGA)", "resnet50", f"checkpoint:{SIMCLR_WEIGHTS}"),
        ModelSpec("DINO ViT-S/16 (TCGA)", VIT, f"checkpoint:{DINO_WEIGHTS}",
                  pooling="cls", mean=HALF, std=HALF, encoder_kwargs=dict(pos_interpolation="dino")),
    )
    footnotes = (
        "k-NN AUC: scikit-learn KNeighborsClassifier() defaults (k = 5, uniform weights, Minkowski p = 2) fitted on "
        "the raw (not L2-normalized) embeddings of every training tile; macro one-vs-rest ROC-AUC of predict_proba "
        "on the test set, as a fraction. Full profile: MUS merged into STR (8 classes).",
        "BreastPathQ: LinearRegression on the raw embeddings of the official training set, official validation set "
        "as test. breastpathq_mse = MSE of the unclipped predictions; breastpathq_tau = the reference's "
        "kendalltau_bpq (patch_evaluation_utils.py, variant 'd') of those predictions, whose code computes "
        "(C + D + 0.5 T_pred) / (C + 2 D + T_pred) (C / D concordant / discordant pairs, T_pred pairs tied in the "
        "predictions), range 0-1 — not Kendall's tau-b. Kit-only columns, no paper value: breastpathq_mse_clipped "
        "= MSE of the predictions clipped to [0, 1]; breastpathq_tau_b = scipy's Kendall tau-b (-1..1) of the "
        "unclipped predictions.",
        "Features: last-layer [CLS] token (DINO ViT-S/16, 384-d); global average pooling after layer4 (SimCLR "
        "ResNet-50, 2,048-d) and after layer3 (ImageNet ResNet-50 truncated as the reference's "
        "resnet50_trunc_baseline, 1,024-d).",
        f"Paper values: the paper prints no such table; the numbers are the reference repository's ({REFERENCE}, "
        "commit c93ad14), per the CSV's source column: CRC AUCs ('All') from its README (the 'Pretrained Models' "
        "K-NN column for NONORM, the README's table image table2.jpg for SN = Y / N), equal to the outputs of "
        "patch_evaluation.ipynb; BreastPathQ MSE and Tau from the output of patch_evaluation.ipynb's BreastPathQ "
        "cell only (the README does not report them).",
    )
    protocol = (
        ProtocolPoint(
            "data + split",
            "k-NN fitted on all of NCT-CRC-HE-100K-NONORM (SN = N) or NCT-CRC-HE-100K (SN = Y), tested on "
            "CRC-VAL-HE-7K, MUS merged into STR; BreastPathQ fitted on the official training set, tested on the "
            "official validation set (patch_evaluation.ipynb)",
            "the same sets and merge; the probes are fitted on every training tile (the kit's train and validation "
            "splits joined, dataset order)", variant="ClassificationProbes fit_on='train' (hold the 10 % validation split "
                                                      "out)"),
        ProtocolPoint(
            "preprocessing / normalisation",
            "ToTensor + Normalize only, mean = std = 0.5 for the DINO and SimCLR TCGA weights, ImageNet mean / std "
            "for the ImageNet ResNet-50 (patch_extraction_utils.eval_transforms); CRC stain normalization is the "
            "release's own (NCT-CRC-HE-100K vs -NONORM)",
            "the same: mean / std come from the official weights' registry entry whenever a checkpoint is loaded, "
            "ImageNet statistics for the hub weights; no stain normalization by the kit"),
        ProtocolPoint(
            "input size",
            "native tiles, no resize: 224 px CRC, 512 px BreastPathQ; DINO's ViT interpolates its position "
            "embeddings at 512 px (interpolate_pos_encoding)",
            "224 px CRC, 512 px BreastPathQ (a bicubic resize to the native size is a no-op); the DINO row "
            "interpolates position embeddings as DINO's interpolate_pos_encoding",
            variant="encoder_kwargs pos_interpolation='timm' (timm's antialiased resample)"),
        ProtocolPoint(
            "baselines' weights",
            "ImageNet: torchvision's ResNet-50 (model_zoo resnet50-19c8e357.pth) truncated after layer3; SimCLR and "
            "DINO: the TCGA-BRCA checkpoints ckpts/resnet50_tcga_brca_simclr.pt and ckpts/vits_tcga_brca_dino.pt",
            "resnet50_trunc with timm's resnet50.tv_in1k (torchvision's V1 ImageNet weights, resnet50-0676ba61); "
            "the official TCGA checkpoints via --checkpoint (the full profile refuses to run without them)"),
        ProtocolPoint(
            "classifier / metric variant",
            "KNeighborsClassifier() defaults on raw embeddings, macro one-vs-rest AUC; BreastPathQ LinearRegression, "
            "MSE of the raw predictions and kendalltau_bpq (variant 'd')",
            "the same (sklearn_knn_auc on raw features; regression_probe's mse_unclipped and tau_bpq)",
            variant="columns breastpathq_mse_clipped (predictions clipped to [0, 1]) and breastpathq_tau_b (scipy "
                    "tau-b)"),
        ProtocolPoint(
            "evaluation protocol",
            "frozen features, one fit per model and dataset, one evaluation on the test set, no hyper-parameter "
            "search, no repetitions",
            "the same (deterministic fits, no seed involved; no confidence interval on these columns)"),
    )
    tables = (
        TableSpec("table1", "k-NN AUC on CRC (train NONORM / NORM, test CRC-VAL-HE-7K) and BreastPathQ regression",
                  "chen2022_table1.csv", keys=("model",),
                  metrics=("crc_nonorm_knn_auc", "crc_norm_knn_auc", "breastpathq_mse", "breastpathq_tau",
                           "breastpathq_mse_clipped", "breastpathq_tau_b"),
                  extra_metrics=("breastpathq_mse_clipped", "breastpathq_tau_b"),   # kit-only, no paper value
                  footnotes=footnotes, protocol=protocol,
                  section="patch-level evaluation (the abstract; the numbers are the public repository's, "
                          "patch_evaluation.ipynb: see docs/protocols.md)"),
    )
    figures = (AttentionHeads("fig_attention_heads", model="DINO ViT-S/16 (TCGA)", dataset="CRC-NORM",
                              classes=("TUMOR", "STROMA", "LYMPHO", "TUM", "STR", "LYM")),)
    return Recipe(paper="chen2022", title=TITLE, citation=CITATION, profile="full", image_size=224,
                  datasets=datasets, models=models, evaluations=_probes(models, tuple(d.key for d in datasets)),
                  tables=tables, figures=figures, extraction_batch_size=256,
                  feature_l2_normalize=False)   # the reference's probes read the raw embeddings


def smoke() -> Recipe:
    """The full recipe on the bundled tiles (raw = NONORM, Macenko-normalized by the kit = NORM), 64 px, with stand-in
    pretrainings of the two TCGA-BRCA models, used only when the official checkpoints are not given."""
    f = full()
    common = dict(dataset="CRC-NONORM", init="random", epochs=2, batch_size=16, warmup_epochs=1, image_size=64)
    pretrain = (
        TrainSpec(name="dino_vits16", method="dino", encoder=VIT, optimizer="adamw", lr=5e-4 * 16 / 256,
                  weight_decay=0.04, local_size=32, n_local=2, mean=HALF, std=HALF,
                  method_cfg=dict(out_dim=4096, warmup_teacher_temp_epochs=1, freeze_last_layer_epochs=0), **common),
        TrainSpec(name="simclr_resnet50", method="simclr", encoder="resnet50", optimizer="adamw",
                  lr=1.5e-4 * 16 / 256, weight_decay=1e-6, **common),
    )
    stand_in = {"SimCLR ResNet-50 (TCGA)": "simclr_resnet50", "DINO ViT-S/16 (TCGA)": "dino_vits16"}
    models = tuple(replace(m, weights=f"{m.weights}|train:{stand_in[m.name]}") if m.name in stand_in else m
                   for m in f.models)
    return derive(
        f, "smoke",
        datasets=(DatasetSpec("CRC-NONORM", "kather2016_tiny", stand_in_for="NCT-CRC-HE-100K-NONORM"),
                  DatasetSpec("CRC-NORM", "kather2016_tiny", stand_in_for="NCT-CRC-HE-100K", stain="macenko")),
        pretrain=pretrain, models=models, evaluations=_probes(models, ("CRC-NONORM", "CRC-NORM")),
        table=lambda t: replace(t, footnotes=t.footnotes + (
            "The protocol card below describes the full profile; the smoke profile's deviations (data, image size, "
            "stand-in weights) are in the notes.",)),
        image_size=64, extraction_batch_size=64,
        notes=("SMOKE PROFILE — not a reproduction: 100 bundled Kather 2016 tiles (CC BY 4.0) stand in for CRC "
               "(raw = NONORM, Macenko-normalized by the kit = NORM; no MUS class to merge) and for the TCGA-BRCA "
               "pretraining data; 64 px images, 2 epochs on CPU; random 80/10/10 split instead of "
               "CRC-VAL-HE-7K; DINO head with 4,096 prototypes. BreastPathQ is not in the smoke profile.",))


def build(profile: str) -> Recipe:
    return {"full": full, "smoke": smoke}[profile]()
