"""Habijan et al. 2025, "Efficient Self-Supervised Vision Transformers for Histopathology Image Retrieval" (EUSIPCO).

What the paper does (Sec. II-III): EsViT (Swin-T) initialised from ImageNet self-supervised weights is fine-tuned on
each dataset's training split with the self-supervised EsViT objective (the augmentations it lists are EsViT's:
random resized crops, colour jitter, blur, flips), Adam lr 1e-4, batch 32, 5 warm-up epochs then cosine decay;
features = average pooling of the final patch tokens, L2-normalised; FAISS k-NN search; 80/10/10 random split with
the test split as queries and the training split as the gallery; mAP@10, Precision@10, nDCG@10; extraction time and
retrieval latency. Table II: the same EsViT without any pretraining.

Choices the paper leaves open (stated in the tables' footnotes): the AP@k normalisation (the kit's default
min(k, R)); the number of fine-tuning epochs (not stated; full profile: 100); EsViT's official ImageNet weights
(dead links: pass ``--checkpoint esvit_swin_tiny=PATH``; without it the kit pretrains its own EsViT, and the table
says so); the SimCLR baseline starts from SimCLR v1's ImageNet ResNet-50 (``--checkpoint
simclr_v1_resnet50_1x_imagenet=PATH``, the paper's reference [12]), else timm's ImageNet weights.
"""
from __future__ import annotations

from .recipe import DatasetSpec, EvalSpec, ModelSpec, Recipe, TableSpec, TrainSpec

PROFILES = ("smoke", "full")
TITLE = "Habijan et al. 2025 — EsViT features + FAISS k-NN retrieval"
CITATION = ("M. Habijan et al., \"Efficient Self-Supervised Vision Transformers for Histopathology Image Retrieval\", "
            "EUSIPCO 2025.")
SWIN = "swin_tiny_patch4_window7_224"
# The smoke profile trains registered smaller variants of the same families (same code path): Swin at 48-d with
# 2 blocks per stage, and timm's ResNet-26 (ResNet-50's bottleneck blocks, 2 per stage) for SimCLR. The official
# checkpoints fit the full-size models only, so they are a full-profile option.
SMOKE_SWIN, SMOKE_SIMCLR = "swin_smoke", "resnet26"
METRICS = ("mAP@10", "Precision@10", "nDCG@10")


def _datasets(profile: str) -> tuple:
    if profile == "smoke":
        # Kather 2016 tiles are colorectal H&E: a genuine, if tiny, stand-in for the CRC rows only.
        return (DatasetSpec("CRC", "kather2016_tiny", stand_in_for="CRC"),)
    return (DatasetSpec("BracS", "bracs"), DatasetSpec("CRC", "nct_crc_he_100k"), DatasetSpec("BATCH", "bach"))


def build(profile: str) -> Recipe:
    smoke = profile == "smoke"
    size = 64 if smoke else 224
    local = 32 if smoke else 96
    epochs = 2 if smoke else 100
    warmup = 1 if smoke else 5
    batch = 16 if smoke else 32
    n_local = 2 if smoke else 8
    datasets = _datasets(profile)
    first = datasets[0].key
    swin, simclr_net = (SMOKE_SWIN, SMOKE_SIMCLR) if smoke else (SWIN, "resnet50")
    esvit_init = "train:esvit_pretrain" if smoke else "checkpoint:esvit_swin_tiny|train:esvit_pretrain"
    simclr_init = "timm" if smoke else "checkpoint:simclr_v1_resnet50_1x_imagenet|timm"

    # Smoke keeps EsViT's loss, heads and schedules but shrinks the prototype count (65,536 -> 4,096) and the
    # teacher-temperature warm-up to the run's length: a two-epoch run could not move a 65k-way head.
    esvit_cfg = dict(out_dim=4096, warmup_teacher_temp_epochs=1, freeze_last_layer_epochs=0) if smoke else {}

    def ssl(name, method, encoder, dataset, init, **kw):
        cfg = esvit_cfg if method == "esvit" else {}
        return TrainSpec(name=name, method=method, encoder=encoder, dataset=dataset, init=init, epochs=epochs,
                         batch_size=batch, optimizer="adam", lr=1e-4, warmup_epochs=warmup, image_size=size,
                         local_size=local, n_local=n_local, method_cfg=cfg, **kw)

    # Stage 02: the "ImageNet self-supervised" EsViT. An official checkpoint (--checkpoint esvit_swin_tiny=PATH)
    # replaces it; without one the kit's own EsViT stage provides it (full: on an ImageNet folder; smoke: the stand-in
    # tiles).
    pretrain = (ssl("esvit_pretrain", "esvit", swin, first, "random"),)
    finetune = []
    for d in datasets:
        finetune += [
            ssl(f"esvit_finetune_{d.key}", "esvit", swin, d.key, esvit_init),
            ssl(f"esvit_scratch_{d.key}", "esvit", swin, d.key, "random"),
            ssl(f"simclr_{d.key}", "simclr", simclr_net, d.key, simclr_init),
        ]
    models = (
        ModelSpec("ResNet50 + k-NN", "resnet50", "timm"),
        ModelSpec("DenseNet121 + k-NN", "densenet121", "timm"),
        ModelSpec("SimCLR + k-NN", simclr_net, "train:simclr_{dataset}"),
        ModelSpec("EsViT + k-NN", swin, "train:esvit_finetune_{dataset}"),
        ModelSpec("EsViT (No Pretraining)", swin, "train:esvit_scratch_{dataset}"),
    )
    keys = tuple(d.key for d in datasets)
    table1_models = ("ResNet50 + k-NN", "DenseNet121 + k-NN", "SimCLR + k-NN", "EsViT + k-NN")
    retrieval = dict(k=10, gallery="train", queries="test", ap_normalization="min_k_R")
    evaluations = (
        EvalSpec("retrieval", "table1", table1_models, keys, dict(retrieval, timing=True)),
        EvalSpec("retrieval", "table2", ("EsViT (No Pretraining)",), (first,), retrieval,
                 labels={"model": "EsViT (No Pretraining)", "pretraining": "None"}),
        EvalSpec("retrieval", "table2", ("EsViT + k-NN",), (first,), retrieval,
                 labels={"model": "EsViT (Pretrained on ImageNet)", "pretraining": "Self-Supervised"}),
    )
    # The paper's random 80/10/10 split beside a patient-aware one, where the data has patient ids.
    ablations = (
        EvalSpec("retrieval_split_variants", "table1_splits", ("EsViT + k-NN",), keys, retrieval),
    )
    common = ("Retrieval: queries = test split, gallery = training split, exact FAISS inner product on L2-normalised "
              "features (cosine); a query's own image is never a hit.",
              "mAP@10 normalises AP@10 by min(10, R) (R = relevant gallery items); Precision@10; nDCG@10 with binary "
              "relevance. Values in %.")
    tables = (
        TableSpec("table1", "Table I — retrieval performance and efficiency", "habijan2025_esvit_table1.csv",
                  keys=("model", "dataset"),
                  metrics=METRICS + ("feature_extraction_ms", "retrieval_latency_ms"),
                  footnotes=common + (
                      "feature_extraction_ms: amortized per image at the extraction batch size, decoding excluded; "
                      "retrieval_latency_ms: batch-1 query feature extraction + exact search, no decoding. "
                      "Device, batch size and precision are in timing.csv.",)),
        TableSpec("table2", "Table II — effect of self-supervised pretraining", "habijan2025_esvit_table2.csv",
                  keys=("model", "pretraining"), metrics=METRICS,
                  footnotes=common + (f"Both arms use the same EsViT schedule on the {first} training split.",)),
        TableSpec("table1_splits", "Random 80/10/10 split (the paper's) vs patient-aware split", "",
                  keys=("model", "dataset", "split"), metrics=METRICS, footnotes=common),
    )
    figures = (("fig2", "retrieval_gallery", dict(model="EsViT + k-NN", dataset=first, k=5, n_queries=4)),)
    notes = ()
    if smoke:
        notes = ("SMOKE PROFILE — not a reproduction: 100 bundled Kather 2016 tiles (CC BY 4.0) stand in for CRC; "
                 "BracS and BATCH need registration and are not run; 64 px images, 2 epochs, CPU; EsViT heads with 4,096 "
                 "prototypes instead of 65,536; the trained encoders are the registered smoke variants swin_smoke "
                 "(Swin, 48-d, 2 blocks per stage) for EsViT and timm's resnet26 (ResNet-50's bottleneck blocks, 2 per stage) for SimCLR (ResNet50 and "
                 "DenseNet121 rows: the full-size timm models); official checkpoints are a full-profile option.",)
    return Recipe(paper="esvit", title=TITLE, citation=CITATION, profile=profile, image_size=size,
                  datasets=datasets, models=models, pretrain=pretrain, finetune=tuple(finetune),
                  evaluations=evaluations, ablations=ablations, tables=tables, figures=figures, notes=notes,
                  extraction_batch_size=32 if smoke else 256)
