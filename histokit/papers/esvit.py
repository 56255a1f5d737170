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

from dataclasses import replace

from ..evaluation.protocols import Retrieval, RetrievalSplitVariants
from ..viz.figures import RetrievalGallery
from .recipe import DatasetSpec, ModelSpec, ProtocolPoint, Recipe, TableSpec, TrainSpec, derive

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


# The full profile's scale: the paper's stated values; epochs are not stated, 100 chosen.
FULL = dict(size=224, local=96, epochs=100, warmup=5, batch=32, n_local=8, extraction_batch=256)


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


# The "ImageNet self-supervised" EsViT's data when the kit pretrains it (no official checkpoint): every ImageNet-1k
# training image (split "none": no val / test part), as the official EsViT run; read only by that pretraining.
IMAGENET = DatasetSpec("ImageNet", "imagenet1k", split="none")
COMMON = ("Retrieval: queries = test split, gallery = training split, exact FAISS inner product on L2-normalised "
          "features (cosine); a query's own image is never a hit.",
          "mAP@10 normalises AP@10 by min(10, R) (R = relevant gallery items); Precision@10; nDCG@10 with binary "
          "relevance. Values in %.")
TIMING_NOTE = ("feature_extraction_ms: batch-1 forward + L2 per image, fp32, model only (no decoding), the figure "
               "compared with the paper's; feature_extraction_amortized_ms (kit-only): per image at the extraction "
               "batch; retrieval_latency_ms: batch-1 query extraction + exact search, no decoding. The paper names "
               f"one device, an {PAPER_DEVICE} (for training), and no batch or precision for its timings: a timing Δ "
               f"is printed only for a run on an {PAPER_DEVICE}; the run's device, batch and precision are in "
               "timing.csv.")
MADE_FULL = f"kit's own EsViT, {FULL['epochs']} ep on ImageNet-1k"


def _fallback_note(swin: str, epochs: int, data: str) -> str:
    return (f"EsViT rows: official ImageNet EsViT weights were not given (--checkpoint esvit_swin_tiny=PATH), "
            f"so the fine-tuning started from the kit's own EsViT pretraining (esvit_pretrain: "
            f"{swin} from random initialisation, EsViT objective, {epochs} epochs on {data}, the paper's Adam "
            "schedule); the row label says so.")


def _heads(prototypes: str, last_layer: str) -> str:
    return ("EsViT heads: the official checkpoint's view and region heads are dropped (backbone only); each "
            f"fine-tuning starts new random 65,536-prototype heads{prototypes}; gradients clipped to norm "
            f"{ESVIT_CLIP} per parameter tensor{last_layer} (microsoft/esvit main_esvit.py --clip_grad, "
            "--freeze_last_layer).")


def _evaluations(keys: tuple, made: str, fallback_note: str) -> tuple:
    """(evaluations, ablations) over the retrieval datasets ``keys``; ``made`` / ``fallback_note`` label the EsViT
    rows when the kit's own pretraining stood in for the official weights. Retrieval's defaults are the paper's
    protocol: k = 10, training split as gallery, test split as queries, AP@10 normalised by min(10, R)."""
    def as_run(label):
        return {"train:esvit_pretrain": {"row_label": label, "note": fallback_note}}

    esvit_as_run = as_run(f"EsViT + k-NN (init: {made})")
    evaluations = (
        Retrieval("table1", ("ResNet50 + k-NN", "DenseNet121 + k-NN", "SimCLR + k-NN"), keys, timing=True),
        Retrieval("table1", ("EsViT + k-NN",), keys, as_run=esvit_as_run, timing=True),
        Retrieval("table2", ("EsViT (No Pretraining)",), keys[:1],
                  labels={"model": "EsViT (No Pretraining)", "pretraining": "None"}),
        Retrieval("table2", ("EsViT + k-NN",), keys[:1], as_run=as_run(f"EsViT (Pretrained on ImageNet — {made})"),
                  labels={"model": "EsViT (Pretrained on ImageNet)", "pretraining": "Self-Supervised"}),
    )
    # The paper's random 80/10/10 split beside a patient-aware one, where the data has patient ids.
    ablations = (RetrievalSplitVariants("table1_splits", ("EsViT + k-NN",), keys, as_run=esvit_as_run),)
    return evaluations, ablations


def _tables(first: str, crc: str, heads: str) -> tuple:
    """Tables I and II and the split variant; ``first`` = Table II's dataset, ``crc`` / ``heads`` footnotes."""
    return (
        TableSpec("table1", "Table I — retrieval performance and efficiency", "habijan2025_esvit_table1.csv",
                  keys=("model", "dataset"), metrics=METRICS + TIMING + (AMORTIZED,), extra_metrics=(AMORTIZED,),
                  paper_device=PAPER_DEVICE, footnotes=COMMON + (TIMING_NOTE, crc, heads),
                  protocol=_card_table1(fallback=MADE_FULL),
                  section="Sec. III-A (quantitative results), Table I"),
        TableSpec("table2", "Table II — effect of self-supervised pretraining", "habijan2025_esvit_table2.csv",
                  keys=("model", "pretraining"), metrics=METRICS,
                  footnotes=COMMON + (f"Both arms use the same EsViT schedule on the {first} training split; the "
                                      "pretrained arm starts from the official ImageNet EsViT weights when given, "
                                      "else from the kit's own EsViT pretraining, named in its row label.", heads),
                  protocol=_card_table2(fallback=MADE_FULL),
                  section="Sec. III-A (quantitative results), Table II"),
        TableSpec("table1_splits", "Random 80/10/10 split (the paper's) vs patient-aware split", "",
                  keys=("model", "dataset", "split"), metrics=METRICS, footnotes=COMMON + (crc,),
                  protocol=_card_splits(),
                  section="not in the paper: a variant of Table I's random 80/10/10 split (Sec. II-C) beside a "
                          "patient-aware one"),
    )


def full() -> Recipe:
    f = FULL
    retrieval_sets = (DatasetSpec("BracS", "bracs"), DatasetSpec("CRC", "nct_crc_he_100k"),
                      DatasetSpec("BATCH", "bach"))   # the tables' rows, in the paper's order
    keys = tuple(d.key for d in retrieval_sets)

    def ssl(name, method, encoder, dataset, init):
        # the official code's clipping (the paper states none); SimCLR runs are not clipped
        clip = dict(grad_clip=ESVIT_CLIP, grad_clip_mode="per_param") if method == "esvit" else {}
        return TrainSpec(name=name, method=method, encoder=encoder, dataset=dataset, init=init, epochs=f["epochs"],
                         batch_size=f["batch"], optimizer="adam", lr=1e-4, warmup_epochs=f["warmup"],
                         image_size=f["size"], local_size=f["local"], n_local=f["n_local"], method_cfg={}, **clip)

    # Stage 02: the "ImageNet self-supervised" EsViT. An official checkpoint (--checkpoint esvit_swin_tiny=PATH)
    # replaces it (and ImageNet is then not read); without one the kit's own EsViT stage provides it, from random
    # weights with the paper's schedule on ImageNet-1k.
    pretrain = (ssl("esvit_pretrain", "esvit", SWIN, IMAGENET.key, "random"),)
    finetune = ()
    for k in keys:
        finetune += (
            ssl(f"esvit_finetune_{k}", "esvit", SWIN, k, "checkpoint:esvit_swin_tiny|train:esvit_pretrain"),
            ssl(f"esvit_scratch_{k}", "esvit", SWIN, k, "random"),
            ssl(f"simclr_{k}", "simclr", "resnet50", k, "checkpoint:simclr_v1_resnet50_1x_imagenet|timm"),
        )
    models = (
        ModelSpec("ResNet50 + k-NN", "resnet50", "timm"),
        ModelSpec("DenseNet121 + k-NN", "densenet121", "timm"),
        ModelSpec("SimCLR + k-NN", "resnet50", "train:simclr_{dataset}"),
        ModelSpec("EsViT + k-NN", SWIN, "train:esvit_finetune_{dataset}"),
        ModelSpec("EsViT (No Pretraining)", SWIN, "train:esvit_scratch_{dataset}"),
    )
    evaluations, ablations = _evaluations(keys, MADE_FULL,
                                          _fallback_note(SWIN, f["epochs"], "the ImageNet-1k training images"))
    leakage = LEAKAGE_REPORT.format(profile="full")
    crc = ("CRC: the paper cites [18] (\"Warwick, Colorectal cancer histopathology images\") and names no "
           "release; the kit reads NCT-CRC-HE-100K (Kather et al. 2018, 100,000 tiles from 86 slides, 9 classes) "
           "with the paper's random 80/10/10 tile split. The release has no patient or slide ids, so tiles of one "
           "slide (near-duplicates among them) can be in both gallery and queries, which flatters retrieval; "
           f"the leakage audit (histokit audit) measures it: {leakage}.")
    return Recipe(paper="esvit", title=TITLE, citation=CITATION, profile="full", image_size=f["size"],
                  datasets=retrieval_sets + (IMAGENET,), models=models, pretrain=pretrain, finetune=finetune,
                  evaluations=evaluations, ablations=ablations,
                  tables=_tables(keys[0], crc, _heads("", ", last head layer frozen for epoch 1")),
                  figures=(RetrievalGallery("fig2", model="EsViT + k-NN", dataset=keys[0], k=5, n_queries=4),),
                  extraction_batch_size=f["extraction_batch"])


def _without_checkpoints(init: str) -> str:
    """The weight spec less its official checkpoints, which fit the full-size models only."""
    return "|".join(part for part in init.split("|") if not part.startswith("checkpoint:"))


def smoke() -> Recipe:
    """The full recipe on the bundled tiles (Kather 2016 tiles are colorectal H&E: a genuine, if tiny, stand-in for
    the CRC rows only), the registered smoke variants of the trained encoders, 64 px, 2 epochs."""
    f, epochs = full(), 2
    # Smoke keeps EsViT's loss, heads and schedules but shrinks the prototype count (65,536 -> 4,096) and the
    # teacher-temperature warm-up to the run's length: a two-epoch run could not move a 65k-way head.
    esvit_cfg = dict(out_dim=4096, warmup_teacher_temp_epochs=1, freeze_last_layer_epochs=0)
    made = f"kit's own EsViT, {epochs} ep on the bundled Kather 2016 tiles, not ImageNet"
    evaluations, ablations = _evaluations(("CRC",), made, _fallback_note(
        SMOKE_SWIN, epochs, "the bundled Kather 2016 tiles — no ImageNet in the smoke profile"))
    leakage = LEAKAGE_REPORT.format(profile="smoke")
    crc = ("CRC (smoke): the bundled Kather 2016 tiles stand in; the full profile reads NCT-CRC-HE-100K for the "
           "paper's CRC [18]. The tiles have no patient ids, so near-duplicates can cross gallery and queries; "
           f"the leakage audit reports them: {leakage}.")
    return derive(
        f, "smoke", encoders={SWIN: SMOKE_SWIN, "resnet50": SMOKE_SIMCLR},
        train=lambda t: replace(t, epochs=epochs, warmup_epochs=1, batch_size=16, image_size=64, local_size=32,
                                n_local=2, init=_without_checkpoints(t.init),
                                method_cfg=esvit_cfg if t.method == "esvit" else t.method_cfg),
        datasets=(DatasetSpec("CRC", "kather2016_tiny", stand_in_for="CRC"),),
        # no ImageNet in the smoke profile: the fallback pretraining reads the tiles
        pretrain=(replace(f.train_spec("esvit_pretrain"), dataset="CRC"),),
        finetune=tuple(t for t in f.finetune if t.dataset == "CRC"),
        evaluations=evaluations, ablations=ablations,
        tables=_tables("CRC", crc, _heads(" (smoke: 4,096)", " (last head layer not frozen: 2 epochs)")),
        figures=(replace(f.figures[0], dataset="CRC"),),
        image_size=64, extraction_batch_size=32,
        notes=("SMOKE PROFILE — not a reproduction: 100 bundled Kather 2016 tiles (CC BY 4.0) stand in for CRC; "
               "BracS (registration needed) and BACH (an open 10 GB download) are not run; 64 px images, 2 epochs, "
               "CPU; EsViT heads with 4,096 prototypes instead of 65,536; the trained encoders are the registered "
               "smoke variants swin_smoke (Swin, 48-d, 2 blocks per stage) for EsViT and timm's resnet26 "
               "(ResNet-50's bottleneck blocks, 2 per stage) for SimCLR (ResNet50 and DenseNet121 rows: the "
               "full-size timm models); official checkpoints are a full-profile option.",))


def build(profile: str) -> Recipe:
    return {"full": full, "smoke": smoke}[profile]()
