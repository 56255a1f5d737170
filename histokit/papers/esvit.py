"""Habijan et al. 2025, "Efficient Self-Supervised Vision Transformers for Histopathology Image Retrieval" (EUSIPCO).

What the paper does (Sec. II-III): EsViT (Swin-T) initialised from ImageNet self-supervised weights is fine-tuned on
each dataset's training split with the self-supervised EsViT objective (the augmentations it lists are EsViT's:
random resized crops, colour jitter, blur, flips), Adam lr 1e-4, batch 32, 5 warm-up epochs then cosine decay;
features = average pooling of the final patch tokens, L2-normalised; FAISS k-NN search; 80/10/10 random split with
the test split as queries and the training split as the gallery; mAP@10, Precision@10, nDCG@10; extraction time and
retrieval latency. Table II: the same EsViT without any pretraining.

Choices the paper leaves open (stated in the tables' footnotes and protocol cards): the AP@k normalisation (the
kit's default min(k, R)); the number of fine-tuning epochs (not stated; full profile: 100); EsViT's official
ImageNet weights (dead links: pass ``--checkpoint esvit_swin_tiny=PATH``; without it the kit pretrains its own
EsViT on ImageNet-1k, the smoke profile on the bundled tiles, and the row label says so); the SimCLR baseline
starts from SimCLR v1's ImageNet ResNet-50 (``--checkpoint simclr_v1_resnet50_1x_imagenet=PATH``, the paper's
reference [12]), else timm's ImageNet weights; "CRC" ([18], "Warwick") is read as NCT-CRC-HE-100K. From the
official code (microsoft/esvit ``main_esvit.py``): gradient clipping 3.0 per parameter tensor (``--clip_grad``,
``utils.clip_gradients``) and the last head layer frozen for the first epoch (``--freeze_last_layer 1``).
"""
from __future__ import annotations

from ..evaluation.protocols import Retrieval, RetrievalSplitVariants
from ..viz.figures import RetrievalGallery
from .recipe import DatasetSpec, ModelSpec, ProtocolPoint, Recipe, TableSpec, TrainSpec

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
TIMING = ("feature_extraction_ms", "retrieval_latency_ms")
AMORTIZED = "feature_extraction_amortized_ms"  # kit-only column: per image at the extraction batch
# The only device the paper names (Sec. II-F: "training is conducted on an NVIDIA A100 GPU"); its timings state no
# device, batch or precision. A timing Δ is printed only for a run on that device class.
PAPER_DEVICE = "NVIDIA A100"
# official main_esvit.py: --clip_grad 3.0, applied per parameter tensor (utils.clip_gradients)
ESVIT_CLIP = 3.0
LEAKAGE_REPORT = "results/leakage/{profile}/leakage.md"


# The profiles' scale (the full profile = the paper's stated values; epochs are not stated, 100 chosen).
FULL = dict(size=224, local=96, epochs=100, warmup=5, batch=32, n_local=8, extraction_batch=256)
SMOKE = dict(size=64, local=32, epochs=2, warmup=1, batch=16, n_local=2, extraction_batch=32)


def _card_common(fallback: str) -> tuple:
    """Protocol points Table I and Table II share: what the paper / the official code states vs the full profile."""
    f = FULL
    return (
        ProtocolPoint("preprocessing", "resize to 224 x 224, pixel values in [0, 1]",
                      f"resize to {f['size']} x {f['size']} (bicubic, whole tile), then ImageNet mean / std "
                      "normalisation, as the EsViT weights expect", same=False),
        ProtocolPoint("augmentation", "random resized crop, colour jitter, Gaussian blur, horizontal flip",
                      f"EsViT's multi-crop (main_esvit.py): 2 x {f['size']} + {f['n_local']} x {f['local']} px crops, "
                      "flip, colour jitter, grayscale, blur, solarisation", same=False),
        ProtocolPoint("initialisation", "EsViT pretrained self-supervised on ImageNet (the authors' weights)",
                      f"official esvit_swin_tiny weights when given, else the {fallback} from random (row label "
                      "and footnote say which)", same=False, variant="--checkpoint esvit_swin_tiny=PATH"),
        ProtocolPoint("schedule / optimizer", f"Adam, lr 1e-4, batch 32, 5 warm-up epochs then cosine; epochs not "
                      "stated; official code: clip 3.0",
                      f"Adam, lr 1e-4 -> 1e-6, batch {f['batch']}, {f['warmup']} warm-up epochs + cosine, "
                      f"{f['epochs']} epochs, no weight decay, clip {ESVIT_CLIP} per tensor (official code)",
                      same=False),
        ProtocolPoint("heads", "not stated (official code: 65,536-prototype view + region heads)",
                      "official heads dropped; new random 65,536-prototype view and region heads, last layer frozen "
                      "for epoch 1", same=False),
        ProtocolPoint("features", "average of the final patch tokens, L2-normalised",
                      "mean of the final Swin-T tokens, L2-normalised"),
        ProtocolPoint("metric variant", "mAP@10, Precision@10, nDCG@10; AP normalisation not stated",
                      "AP@10 / min(10, R), binary-relevance nDCG@10, 95 % bootstrap CI", same=False,
                      variant="ap_normalization = hits | R | k"),
    )


def _card_table1(fallback: str) -> tuple:
    f = FULL
    return (
        ProtocolPoint("data + split", "BracS [17], CRC [18] (\"Warwick\"), BATCH [19]; random 80/10/10",
                      "BRACS RoIs, NCT-CRC-HE-100K, BACH photos; stratified random 80/10/10 (seed 0)", same=False,
                      variant="table1_splits: patient-aware split where ids exist"),
        ProtocolPoint("gallery / queries", "all images indexed, test images as queries",
                      "training split as gallery, test split as queries (a query never finds itself)", same=False),
    ) + _card_common(fallback) + (
        ProtocolPoint("baselines", "ResNet50 / DenseNet121 pretrained CNNs + k-NN; SimCLR [12]",
                      "timm ImageNet CNNs, global average pool; SimCLR from SimCLR v1 ImageNet R50 (else timm) "
                      "fine-tuned per dataset with the same schedule", same=False,
                      variant="--checkpoint simclr_v1_resnet50_1x_imagenet=PATH"),
        ProtocolPoint("timing", "7.1-14.2 ms extraction, 8.7-16.7 ms latency per image; device (A100 named for "
                      "training), batch and precision not stated",
                      f"batch-1 fp32 extraction and batch-1 latency (model + search, no decoding); amortized at batch "
                      f"{f['extraction_batch']} apart; no Δ off an A100", same=False),
    )


def _card_table2(fallback: str) -> tuple:
    return (
        ProtocolPoint("data + split", "BracS, random 80/10/10 (the dataset is not named for Table II)",
                      "BRACS RoIs, stratified random 80/10/10 (seed 0)", same=False),
        ProtocolPoint("arms", "EsViT without pretraining vs pretrained on ImageNet, otherwise alike",
                      "random init vs ImageNet EsViT init, the same fine-tuning schedule on BracS"),
    ) + _card_common(fallback)


def _card_splits() -> tuple:
    return (
        ProtocolPoint("split", "random 80/10/10 only",
                      "the random 80/10/10 beside a group-aware 80/10/10 (BRACS slide ids; NCT-CRC-HE-100K and BACH "
                      "have none: row empty)", same=False),
        ProtocolPoint("model", "EsViT + k-NN", "EsViT + k-NN as in Table I (same weights and features)"),
        ProtocolPoint("metric variant", "mAP@10, Precision@10, nDCG@10; AP normalisation not stated",
                      "AP@10 / min(10, R), binary-relevance nDCG@10", same=False,
                      variant="ap_normalization = hits | R | k"),
    )


def _datasets(profile: str) -> tuple:
    """The retrieval datasets (the tables' rows), in the paper's order."""
    if profile == "smoke":
        # Kather 2016 tiles are colorectal H&E: a genuine, if tiny, stand-in for the CRC rows only.
        return (DatasetSpec("CRC", "kather2016_tiny", stand_in_for="CRC"),)
    return (DatasetSpec("BracS", "bracs"), DatasetSpec("CRC", "nct_crc_he_100k"), DatasetSpec("BATCH", "bach"))


# The "ImageNet self-supervised" EsViT's data when the kit pretrains it (no official checkpoint): every ImageNet-1k
# training image (split "none": no val / test part), as the official EsViT run; read only by that pretraining.
IMAGENET = DatasetSpec("ImageNet", "imagenet1k", split="none")


def build(profile: str) -> Recipe:
    smoke = profile == "smoke"
    p = SMOKE if smoke else FULL
    size, local, epochs, warmup, batch, n_local = (p[k] for k in ("size", "local", "epochs", "warmup", "batch",
                                                                   "n_local"))
    retrieval_sets = _datasets(profile)
    first = retrieval_sets[0].key
    # the fallback pretraining's data: ImageNet-1k in full; the smoke profile has no ImageNet, only the tiles
    pretrain_data = first if smoke else IMAGENET.key
    datasets = retrieval_sets if smoke else retrieval_sets + (IMAGENET,)
    swin, simclr_net = (SMOKE_SWIN, SMOKE_SIMCLR) if smoke else (SWIN, "resnet50")
    esvit_init = "train:esvit_pretrain" if smoke else "checkpoint:esvit_swin_tiny|train:esvit_pretrain"
    simclr_init = "timm" if smoke else "checkpoint:simclr_v1_resnet50_1x_imagenet|timm"

    # Smoke keeps EsViT's loss, heads and schedules but shrinks the prototype count (65,536 -> 4,096) and the
    # teacher-temperature warm-up to the run's length: a two-epoch run could not move a 65k-way head.
    esvit_cfg = dict(out_dim=4096, warmup_teacher_temp_epochs=1, freeze_last_layer_epochs=0) if smoke else {}

    def ssl(name, method, encoder, dataset, init, **kw):
        cfg = esvit_cfg if method == "esvit" else {}
        if method == "esvit":  # the official code's clipping (the paper states none); SimCLR runs are not clipped
            kw = dict(grad_clip=ESVIT_CLIP, grad_clip_mode="per_param", **kw)
        return TrainSpec(name=name, method=method, encoder=encoder, dataset=dataset, init=init, epochs=epochs,
                         batch_size=batch, optimizer="adam", lr=1e-4, warmup_epochs=warmup, image_size=size,
                         local_size=local, n_local=n_local, method_cfg=cfg, **kw)

    # Stage 02: the "ImageNet self-supervised" EsViT. An official checkpoint (--checkpoint esvit_swin_tiny=PATH)
    # replaces it (and ImageNet is then not read); without one the kit's own EsViT stage provides it, from random
    # weights with the paper's schedule (full: on ImageNet-1k; smoke: the stand-in tiles).
    pretrain = (ssl("esvit_pretrain", "esvit", swin, pretrain_data, "random"),)
    made_full = f"kit's own EsViT, {FULL['epochs']} ep on ImageNet-1k"
    made = f"kit's own EsViT, {epochs} ep on the bundled Kather 2016 tiles, not ImageNet" if smoke else made_full
    fallback_note = (f"EsViT rows: official ImageNet EsViT weights were not given (--checkpoint esvit_swin_tiny=PATH), "
                     f"so the fine-tuning started from the kit's own EsViT pretraining (esvit_pretrain: "
                     f"{swin} from random initialisation, EsViT objective, {epochs} epochs on "
                     + ("the bundled Kather 2016 tiles — no ImageNet in the smoke profile" if smoke
                        else "the ImageNet-1k training images") + ", the paper's Adam schedule); the row label says so.")

    def as_run(label):  # the row label when the kit's own pretraining stood in for the official weights
        return {"train:esvit_pretrain": {"row_label": label, "note": fallback_note}}

    finetune = []
    for d in retrieval_sets:
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
    keys = tuple(d.key for d in retrieval_sets)
    table1_models = ("ResNet50 + k-NN", "DenseNet121 + k-NN", "SimCLR + k-NN")
    # Retrieval's defaults are the paper's protocol: k = 10, training split as gallery, test split as queries,
    # AP@10 normalised by min(10, R)
    esvit_as_run = as_run(f"EsViT + k-NN (init: {made})")
    evaluations = (
        Retrieval("table1", table1_models, keys, timing=True),
        Retrieval("table1", ("EsViT + k-NN",), keys, as_run=esvit_as_run, timing=True),
        Retrieval("table2", ("EsViT (No Pretraining)",), (first,),
                  labels={"model": "EsViT (No Pretraining)", "pretraining": "None"}),
        Retrieval("table2", ("EsViT + k-NN",), (first,), as_run=as_run(f"EsViT (Pretrained on ImageNet — {made})"),
                  labels={"model": "EsViT (Pretrained on ImageNet)", "pretraining": "Self-Supervised"}),
    )
    # The paper's random 80/10/10 split beside a patient-aware one, where the data has patient ids.
    ablations = (RetrievalSplitVariants("table1_splits", ("EsViT + k-NN",), keys, as_run=esvit_as_run),)
    common = ("Retrieval: queries = test split, gallery = training split, exact FAISS inner product on L2-normalised "
              "features (cosine); a query's own image is never a hit.",
              "mAP@10 normalises AP@10 by min(10, R) (R = relevant gallery items); Precision@10; nDCG@10 with binary "
              "relevance. Values in %.")
    leakage = LEAKAGE_REPORT.format(profile=profile)
    if smoke:
        crc = ("CRC (smoke): the bundled Kather 2016 tiles stand in; the full profile reads NCT-CRC-HE-100K for the "
               "paper's CRC [18]. The tiles have no patient ids, so near-duplicates can cross gallery and queries; "
               f"the leakage audit reports them: {leakage}.")
    else:
        crc = ("CRC: the paper cites [18] (\"Warwick, Colorectal cancer histopathology images\") and names no "
               "release; the kit reads NCT-CRC-HE-100K (Kather et al. 2018, 100,000 tiles from 86 slides, 9 classes) "
               "with the paper's random 80/10/10 tile split. The release has no patient or slide ids, so tiles of one "
               "slide (near-duplicates among them) can be in both gallery and queries, which flatters retrieval; "
               f"the leakage audit (histokit audit) measures it: {leakage}.")
    timing = ("feature_extraction_ms: batch-1 forward + L2 per image, fp32, model only (no decoding), the figure "
              "compared with the paper's; feature_extraction_amortized_ms (kit-only): per image at the extraction "
              "batch; retrieval_latency_ms: batch-1 query extraction + exact search, no decoding. The paper names "
              f"one device, an {PAPER_DEVICE} (for training), and no batch or precision for its timings: a timing Δ "
              f"is printed only for a run on an {PAPER_DEVICE}; the run's device, batch and precision are in "
              "timing.csv.")
    heads = ("EsViT heads: the official checkpoint's view and region heads are dropped (backbone only); each "
             "fine-tuning starts new random 65,536-prototype heads" + (" (smoke: 4,096)" if smoke else "")
             + f"; gradients clipped to norm {ESVIT_CLIP} per parameter tensor"
             + (" (last head layer not frozen: 2 epochs)" if smoke else ", last head layer frozen for epoch 1")
             + " (microsoft/esvit main_esvit.py --clip_grad, --freeze_last_layer).")
    tables = (
        TableSpec("table1", "Table I — retrieval performance and efficiency", "habijan2025_esvit_table1.csv",
                  keys=("model", "dataset"), metrics=METRICS + TIMING + (AMORTIZED,), extra_metrics=(AMORTIZED,),
                  paper_device=PAPER_DEVICE, footnotes=common + (timing, crc, heads),
                  protocol=_card_table1(fallback=made_full),
                  section="Sec. III-A (quantitative results), Table I"),
        TableSpec("table2", "Table II — effect of self-supervised pretraining", "habijan2025_esvit_table2.csv",
                  keys=("model", "pretraining"), metrics=METRICS,
                  footnotes=common + (f"Both arms use the same EsViT schedule on the {first} training split; the "
                                      "pretrained arm starts from the official ImageNet EsViT weights when given, "
                                      "else from the kit's own EsViT pretraining, named in its row label.", heads),
                  protocol=_card_table2(fallback=made_full),
                  section="Sec. III-A (quantitative results), Table II"),
        TableSpec("table1_splits", "Random 80/10/10 split (the paper's) vs patient-aware split", "",
                  keys=("model", "dataset", "split"), metrics=METRICS, footnotes=common + (crc,),
                  protocol=_card_splits(),
                  section="not in the paper: a variant of Table I's random 80/10/10 split (Sec. II-C) beside a "
                          "patient-aware one"),
    )
    figures = (RetrievalGallery("fig2", model="EsViT + k-NN", dataset=first, k=5, n_queries=4),)
    notes = ()
    if smoke:
        notes = ("SMOKE PROFILE — not a reproduction: 100 bundled Kather 2016 tiles (CC BY 4.0) stand in for CRC; "
                 "BracS (registration needed) and BACH (an open 10 GB download) are not run; 64 px images, 2 epochs, CPU; EsViT heads with 4,096 "
                 "prototypes instead of 65,536; the trained encoders are the registered smoke variants swin_smoke "
                 "(Swin, 48-d, 2 blocks per stage) for EsViT and timm's resnet26 (ResNet-50's bottleneck blocks, 2 per stage) for SimCLR (ResNet50 and "
                 "DenseNet121 rows: the full-size timm models); official checkpoints are a full-profile option.",)
    return Recipe(paper="esvit", title=TITLE, citation=CITATION, profile=profile, image_size=size,
                  datasets=datasets, models=models, pretrain=pretrain, finetune=tuple(finetune),
                  evaluations=evaluations, ablations=ablations, tables=tables, figures=figures, notes=notes,
                  extraction_batch_size=p["extraction_batch"])
