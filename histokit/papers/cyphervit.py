"""Ye, Kalra, Miri 2024, "Cluster-based histopathology phenotype representation learning by self-supervised
multi-class-token hierarchical ViT" (CypherViT), Sci. Rep.

What the paper does: ViT-S/16 and CypherViT (multi-[cls]-token clustering ViT) pretrained with DINO, iBOT, MoCo v3,
SimCLR and MAE on ~300k VGH/NKI breast H&E patches (each framework's official defaults), then evaluated on frozen
features: weighted k-NN and linear probing on CRC with and without Macenko normalization and on PanNuke tissue
types, linear regression on BreastPathQ (MSE, Kendall tau) — Table 1; fine-tuning with 1-100 % of the CRC (w/ norm)
labels — Table 2; five re-splits of train + test with k-NN, mean ± std and t-tests, VanillaViT vs CypherViT inside
each framework — Table 3; the number of final [cls] tokens x the number of local views — Table 4; UMAP (Fig. 1) and
the attention of each [cls] token (Fig. 2).

Open choices, stated in the footnotes: the k of k-NN and the linear probe's regularization are chosen on a
validation split carved from the training data (the paper sweeps them without saying on what); the linear probe
is multinomial logistic regression (L-BFGS on fixed features) swept over C, not DINO's eval_linear (SGD on
augmented views, 100 epochs, the paper sweeping its learning rate; see histokit.evaluation.linear);
VGH/NKI is not obtainable (see data_manifests/vgh_nki.yaml), so the full profile needs it supplied by hand; the
stage-0 [cls] token count is not given (64 assumed, 32 run as an extra Table 4 row); each table's protocol card
compares the paper (or the reference code it defers to) with the full profile point by point.
"""
from __future__ import annotations

from dataclasses import replace

from ..evaluation.protocols import ClassificationProbes, LabelFraction, ResplitKnn
from ..viz.figures import ClsAttention, UmapPanels
from .recipe import DatasetSpec, ModelSpec, ProtocolPoint, Recipe, TableSpec, TrainSpec, derive

PROFILES = ("smoke", "full")
TITLE = "Ye et al. 2024 — CypherViT: multi-[cls]-token clustering ViT in DINO, SimCLR, MoCo v3 and MAE"
CITATION = ("J. Ye, S. Kalra, M. S. Miri, \"Cluster-based histopathology phenotype representation learning by "
            "self-supervised multi-class-token hierarchical ViT\", Scientific Reports 14, 3202 (2024).")
VIT = "vit_small_patch16_224"
CYPHER = "cyphervit_small"
# The smoke profile trains the same two families at a smaller width and depth (registered variants, same code path):
# a 192-d, 6-block ViT/16 and a 192-d CypherViT with 2 x 3 blocks and 16 stage-0 [cls] tokens.
SMOKE_VIT, SMOKE_CYPHER = "vit_smoke", "cyphervit_smoke"
FRACTIONS = {"0.01": "1%", "0.05": "5%", "0.1": "10%", "0.2": "20%", "0.5": "50%", "1.0": "100%"}
GRID = [(4, 0), (4, 2), (4, 4), (4, 8), (8, 0), (8, 2), (8, 4), (8, 8)]
BEST = (4, 2)   # "4 [cls] tokens at final stage plus 2 local views ... the most optimal" (Sec. Ablations)
# Stage-0 [cls] tokens: the paper gives no count. The kit assumes 64 (GroupViT's first grouping stage; the smoke
# variant 16, one per patch of a 64 px image) and runs half of it as an extra Table 4 row at BEST: 32 is fewer than
# the 36 patches of a 96 px local crop, which 64 tokens outnumber.
STAGE0, SMOKE_STAGE0 = (64, 32), (16, 8)   # (default, Table 4's extra row)

# Each framework's official optimisation, as its codebase's reference command for a ViT states it (Ye et al. train
# the baselines "following the default hyper-parameters setting in their official released codebases" and state no
# epochs of their own). lr = base x batch / 256 ("linear") or base x sqrt(batch) ("sqrt", SimCLR's README rule).
# The kit's batch is 256 (one GPU) for every framework; the reference batches are in REFERENCE_BATCH.
FRAMEWORKS = {
    # facebookresearch/dino main_dino.py defaults (its README's ViT-S/16 100-epoch run)
    "dino": dict(optimizer="adamw", base_lr=5e-4, lr_scaling="linear", min_lr=1e-6, weight_decay=0.04,
                 weight_decay_end=0.4, grad_clip=3.0, grad_clip_mode="per_param", epochs=100, warmup_epochs=10,
                 n_local=8),
    # bytedance/ibot main_ibot.py defaults (optimisation as DINO's, 100 epochs), README ViT-S/16 command for the
    # rest: 10 local crops, teacher temperature 0.07 over 30 warm-up epochs, no last-layer norm (the kit's iBOT defaults)
    "ibot": dict(optimizer="adamw", base_lr=5e-4, lr_scaling="linear", min_lr=1e-6, weight_decay=0.04,
                 weight_decay_end=0.4, grad_clip=3.0, grad_clip_mode="per_param", epochs=100, warmup_epochs=10,
                 n_local=10),
    # facebookresearch/moco-v3 CONFIG.md, ViT-Small: --optimizer=adamw --lr=1.5e-4 --weight-decay=.1 --epochs=300
    # --warmup-epochs=40 (cosine to 0), --moco-t=.2 --moco-m-cos (the kit's MoCo v3 defaults)
    "moco": dict(optimizer="adamw", base_lr=1.5e-4, lr_scaling="linear", min_lr=0.0, weight_decay=0.1,
                 epochs=300, warmup_epochs=40),
    # google-research/simclr README, ImageNet pretraining ("the default hyperparameters in our paper"): LARS
    # (momentum 0.9), --learning_rate=0.075 --learning_rate_scaling=sqrt --weight_decay=1e-4 --temperature=0.1
    # --train_epochs=100, 10 warm-up epochs, cosine to 0
    "simclr": dict(optimizer="lars", base_lr=0.075, lr_scaling="sqrt", min_lr=0.0, weight_decay=1e-4,
                   epochs=100, warmup_epochs=10, method_cfg=dict(temperature=0.1)),
    # facebookresearch/mae PRETRAIN.md: --epochs 800 --warmup_epochs 40 --blr 1.5e-4 --weight_decay 0.05,
    # AdamW betas (0.9, 0.95) (main_pretrain.py), min_lr 0, mask ratio 0.75 with norm_pix_loss (the kit's MAE defaults)
    "mae": dict(optimizer="adamw", base_lr=1.5e-4, lr_scaling="linear", min_lr=0.0, weight_decay=0.05,
                betas=(0.9, 0.95), epochs=800, warmup_epochs=40),
}
# The global batch of each reference command: DINO / iBOT ViT-S/16 on 16 GPUs x 64, MoCo v3 / SimCLR / MAE 4096.
REFERENCE_BATCH = {"dino": 1024, "ibot": 1024, "moco": 4096, "simclr": 4096, "mae": 4096}
FULL_BATCH = 256
# Table 3's kit-only columns: the paired t-test beside the paper's (unnamed, read as Welch's) t-test
PAIRED_PVALUES = ("pvalue_crc_paired", "pvalue_pannuke_paired", "pvalue_mse_paired", "pvalue_tau_paired")


def framework_lr(method: str, batch: int) -> float:
    """The framework's peak learning rate at ``batch`` by its own scaling rule."""
    fw = FRAMEWORKS[method]
    return fw["base_lr"] * (batch ** 0.5 if fw["lr_scaling"] == "sqrt" else batch / 256)


# Each table's protocol card (the full profile): paper (or the reference code it defers to) vs kit, point by point.
PROTOCOL = {
    "data": ProtocolPoint(
        "pretraining data", "~300,000 VGH/NKI breast H&E patches: 224 px crops, up to 50 % overlap, >= 70 % "
        "tissue, plus 90 / 180 degree rotated and flipped copies", "the TMA images supplied by hand "
        "(data_manifests/vgh_nki.yaml), tiled 224 px at stride 112 with >= 70 % tissue, no rotated or flipped copies "
        "(only the methods' own flips); the 80 % training split of a random 80/10/10 split trains", same=False),
    "eval_data": ProtocolPoint(
        "evaluation data + split", "CRC w/ and w/o Macenko norm (NCT-CRC-HE-100K, test CRC-VAL-HE-7K), PanNuke "
        "(split not stated), BreastPathQ train 2,579 / validation 187",
        "the same sets; PanNuke's last official fold is the test set; 10 % of the training data is held out as "
        "the validation split that picks k and C, the probes fit on the rest", same=False),
    "imagenet": ProtocolPoint(
        "ImageNet row", "ViT-S pretrained on ImageNet (weights not named)",
        "timm's vit_small_patch16_224.augreg_in21k_ft_in1k (ImageNet-21k, fine-tuned on ImageNet-1k)", same=False),
    "dino": ProtocolPoint(
        "DINO optimisation (DINO ViT and every DINO-CypherViT)", "official code's defaults (main_dino.py): AdamW, "
        "lr 5e-4 x batch / 256, 10 warm-up epochs, cosine to 1e-6, weight decay 0.04 -> 0.4 (cosine), clip 3.0 per "
        "tensor, last layer frozen 1 epoch, 100 epochs, 65,536 prototypes",
        "the same (engine: weight_decay_end, grad_clip_mode='per_param', freeze_last_layer_epochs=1)"),
    "ibot": ProtocolPoint(
        "iBOT optimisation and crops", "main_ibot.py defaults: DINO's optimisation, 100 epochs, no local crops; its "
        "README's ViT-S/16 run: 800 epochs, 10 local crops, global / local scales 0.25-1 / 0.05-0.25",
        "DINO's optimisation, 100 epochs, 10 local crops (the README run's), scales 0.14-1 / 0.05-0.4 (main_ibot.py "
        "defaults), teacher temperature 0.07 and 30 warm-up epochs (the README run's)", same=False),
    "moco": ProtocolPoint(
        "MoCo v3 optimisation", "CONFIG.md ViT-Small: AdamW, lr 1.5e-4 x batch / 256, weight decay 0.1 on every "
        "parameter, 300 epochs, 40 warm-up, cosine to 0, T 0.2, momentum 0.99 -> 1 (cosine), frozen random patch "
        "projection (--stop-grad-conv1), fixed sin-cos position embedding",
        "the same optimizer, lr, epochs and schedule, but no weight decay on biases and norms, a trained patch "
        "projection and the encoder's learned position embedding", same=False),
    "simclr": ProtocolPoint(
        "SimCLR optimisation", "google-research/simclr README (ResNet-50): LARS (momentum 0.9, trust 0.001), lr "
        "0.075 x sqrt(batch), weight decay 1e-4 without biases / BN, T 0.1, 100 epochs, 10 warm-up, cosine to 0",
        "the same on ViT-S with timm.optim.Lars (its trust ratio is 0.001 |w| / (|g| + wd |w|), not SimCLR's 0.001 "
        "|w| / |g + wd w|); no decay or adaptation of biases and norms", same=False,
        variant="optimizer 'adamw' (the engine's other choice, MoCo v3's ViT recipe) in FRAMEWORKS['simclr']"),
    "mae": ProtocolPoint(
        "MAE optimisation", "PRETRAIN.md (ViT-L): AdamW betas (0.9, 0.95), lr 1.5e-4 x batch / 256, weight decay "
        "0.05, 800 epochs, 40 warm-up, cosine to 0, mask ratio 0.75, normalized-pixel loss",
        "the same on ViT-S (betas=(0.9, 0.95) through the engine)"),
    "batch": ProtocolPoint(
        "batch size", "the reference commands' global batches: DINO / iBOT 1,024, MoCo v3 / SimCLR / MAE 4,096 "
        "(the paper states none)", "256 for every framework (one GPU), each lr rescaled by its framework's rule",
        same=False, variant="FULL_BATCH in histokit/papers/cyphervit.py, the global batch under torchrun"),
    "crops": ProtocolPoint(
        "crops", "baselines: their codebases' views (DINO 2 x 224 px + 8 x 96 px; MoCo v3 / SimCLR two 224 px "
        "views, MAE one); DINO-CypherViT: 2 x 224 px + 2 local views (Table 4's best)",
        "the same; Table 4 trains 0, 2, 4 and 8 local views"),
    "tokens": ProtocolPoint(
        "CypherViT token counts", "4 final [cls] tokens (8 in Table 4), fewer at each stage; the stage layout and "
        "the stage-0 count are not given", "ViT-S/16 width in 2 stages x 6 blocks with 64 -> 4 [cls] tokens "
        "(GroupViT's 64); the 64 stage-0 tokens outnumber the 36 patches of a 96 px local crop", same=False,
        variant="num_stage0_cls, Table 4's extra row '4 (32 at stage 0)'"),
    "probes": ProtocolPoint(
        "k-NN and linear probe", "k-NN and linear probing on frozen features, sweeping k and SGD learning rates "
        "(on what data is not stated)", "DINO's weighted k-NN (T 0.07, k from 10 / 20 / 100 / 200) and multinomial "
        "logistic regression (C swept), both chosen on a validation split of the training data", same=False),
    "breastpathq": ProtocolPoint(
        "BreastPathQ regression", "linear regression on frozen features, MSE and Kendall tau",
        "least-squares linear regression; MSE of the predictions clipped to [0, 1] and scipy's Kendall tau-b",
        same=False, variant="regression_probe's mse_unclipped, tau_bpq (Chen & Krishnan's) and raw-prediction tau-b"),
    "ci": ProtocolPoint(
        "statistical test", "single numbers, no interval or test", "the same numbers with a 95 % bootstrap interval "
        "over the test tiles (1,000 resamples) beside each accuracy", same=False),
    "finetune_data": ProtocolPoint(
        "fine-tuning data", "1, 5, 10, 20, 50, 100 % of the CRC (w/ norm) training labels, evenly per class; the "
        "official test set", "class-balanced fractions of the training split (90 % of NCT-CRC-HE-100K, at least "
        "one tile per class); CRC-VAL-HE-7K", same=False),
    "finetune": ProtocolPoint(
        "fine-tuning protocol", "end-to-end fine-tuning from the pretrained weights (optimizer and schedule not "
        "stated)", "encoder + linear head, AdamW lr 1e-4, weight decay 0.05, 5 warm-up epochs then cosine, 100 "
        "epochs, batch 64, the last epoch's model", same=False),
    "resplit": ProtocolPoint(
        "re-splits", "official train and test pooled, re-split 5 times at the original ratios",
        "the same with seeds 0-4, stratified by class (BreastPathQ: not), each dataset's own test share (CRC "
        "7,180 / 107,180, PanNuke's last fold, BreastPathQ 187 / 2,766)"),
    "resplit_knn": ProtocolPoint(
        "re-split classifier", "k-NN accuracy, mean ± std (k not stated)",
        "DINO's weighted k-NN with k = 20, T = 0.07, mean ± sample std (ddof 1)", same=False),
    "ttest": ProtocolPoint(
        "statistical test", "a t-test per VanillaViT vs CypherViT comparison (which one not stated)",
        "Welch's (scipy ttest_ind, equal_var=False) in pvalue_*, and the paired ttest_rel over the shared re-splits "
        "in pvalue_*_paired", same=False, variant="the pvalue_*_paired columns"),
    "table4_knn": ProtocolPoint(
        "Table 4 classifier", "k-NN Acc@1 / Acc@3 (k not stated)",
        "DINO's weighted k-NN with k = 20, T = 0.07, top-1 / top-3", same=False),
}
TABLE_PROTOCOL = {
    "table1": ("data", "eval_data", "imagenet", "dino", "ibot", "moco", "simclr", "batch", "crops", "tokens",
               "probes", "breastpathq", "ci"),
    "table2": ("data", "finetune_data", "dino", "ibot", "moco", "batch", "crops", "tokens", "finetune", "ci"),
    "table3": ("data", "resplit", "dino", "moco", "simclr", "mae", "batch", "crops", "tokens", "resplit_knn",
               "breastpathq", "ttest"),
    "table4": ("data", "eval_data", "dino", "batch", "crops", "tokens", "table4_knn", "breastpathq"),
}


def _cypher_run(n_cls: int, n_local: int) -> str:
    return f"dino_cyphervit_cls{n_cls}_local{n_local}"


# Each table's column per (dataset, measure) (histokit.evaluation.protocols.probes / .resplit)
COLUMNS = {
    "table1": {"CRC-NONORM": {"knn": "crc_nonorm_knn", "linear": "crc_nonorm_linear"},
               "CRC-NORM": {"knn": "crc_norm_knn", "linear": "crc_norm_linear"},
               "PanNuke": {"knn": "pannuke_knn"},
               "BreastPathQ": {"mse": "breastpathq_mse", "tau": "breastpathq_tau"}},
    "table3": {"CRC-NORM": {"acc_mean": "crc_norm_acc_mean", "acc_std": "crc_norm_acc_std",
                            "acc_pvalue": "pvalue_crc", "acc_pvalue_paired": "pvalue_crc_paired"},
               "PanNuke": {"acc_mean": "pannuke_acc_mean", "acc_std": "pannuke_acc_std",
                           "acc_pvalue": "pvalue_pannuke", "acc_pvalue_paired": "pvalue_pannuke_paired"},
               "BreastPathQ": {"mse_mean": "breastpathq_mse_mean", "mse_std": "breastpathq_mse_std",
                               "tau_mean": "breastpathq_tau_mean", "tau_std": "breastpathq_tau_std",
                               "mse_pvalue": "pvalue_mse", "tau_pvalue": "pvalue_tau",
                               "mse_pvalue_paired": "pvalue_mse_paired", "tau_pvalue_paired": "pvalue_tau_paired"}},
    "table4": {"CRC-NONORM": {"knn": "crc_nonorm_acc1", "knn_top3": "crc_nonorm_acc3"},
               "CRC-NORM": {"knn": "crc_norm_acc1", "knn_top3": "crc_norm_acc3"},
               "PanNuke": {"knn": "pannuke_acc1", "knn_top3": "pannuke_acc3"},
               "BreastPathQ": {"mse": "breastpathq_mse", "tau": "breastpathq_tau"}},
}
# Table 3's rows: model -> (framework, backbone); VanillaViT vs CypherViT are compared within each framework
TABLE3_ROWS = {"MAE": ("MAE", "VanillaViT"), "SimCLR": ("SimCLR", "VanillaViT"),
               "SimCLR-CypherViT": ("SimCLR", "CypherViT"), "MoCo": ("MoCo", "VanillaViT"),
               "MoCo-CypherViT": ("MoCo", "CypherViT"), "DINO": ("DINO", "VanillaViT"),
               "DINO-CypherViT": ("DINO", "CypherViT")}
TABLE1_MODELS = ("Pretrained on ImageNet", "SimCLR", "MoCo", "iBOT", "DINO", "DINO-CypherViT")
TABLE2_MODELS = ("Fully-supervised", "MoCo", "iBOT", "DINO", "DINO-CypherViT")


def ssl_run(name: str, method: str, encoder: str, *, dataset: str = "VGH", n_local=None, n_cls=None,
            stage0_cls=None) -> TrainSpec:
    """One pretraining run with its framework's optimisation; ``n_local`` None = the framework's own local crops."""
    fw = FRAMEWORKS[method]
    if method in ("dino", "ibot"):
        n_local = fw["n_local"] if n_local is None else n_local
    else:
        n_local = 0  # two views (MoCo v3, SimCLR) or one (MAE): no local crops
    kwargs = {"num_final_cls": n_cls} if n_cls else {}
    if stage0_cls:
        kwargs["num_stage0_cls"] = stage0_cls
    return TrainSpec(name=name, method=method, encoder=encoder, dataset=dataset, init="random", epochs=fw["epochs"],
                     batch_size=FULL_BATCH, optimizer=fw["optimizer"], lr=framework_lr(method, FULL_BATCH),
                     min_lr=fw["min_lr"], weight_decay=fw["weight_decay"], weight_decay_end=fw.get("weight_decay_end"),
                     grad_clip=fw.get("grad_clip"), grad_clip_mode=fw.get("grad_clip_mode", "global"),
                     betas=fw.get("betas"), warmup_epochs=fw["warmup_epochs"], image_size=224, local_size=96,
                     n_local=n_local, method_cfg=dict(fw.get("method_cfg", {})), encoder_kwargs=kwargs)


def _cypher_model(name: str, run: str, n_cls: int, **kwargs) -> ModelSpec:
    return ModelSpec(name, CYPHER, f"train:{run}", encoder_kwargs={"num_final_cls": n_cls, **kwargs})


def _grid_name(n_cls: int, n_local: int) -> str:
    return "DINO-CypherViT" if (n_cls, n_local) == BEST else f"DINO-CypherViT [cls]={n_cls} local={n_local}"


# Table 4: model -> its (num_cls, num_local_views) row
GRID_ROWS = {_grid_name(c, v): {"num_cls": str(c), "num_local_views": str(v)} for c, v in GRID}


def _sets(table: str, eval_sets: tuple) -> tuple:
    """The table's datasets among ``eval_sets``, in the table's order, and their columns."""
    keys = tuple(k for k in COLUMNS[table] if k in eval_sets)
    return keys, {k: COLUMNS[table][k] for k in keys}


def _evaluations(eval_sets: tuple) -> tuple:
    t1_sets, t1_cols = _sets("table1", eval_sets)
    t3_sets, t3_cols = _sets("table3", eval_sets)
    return (
        ClassificationProbes("table1", TABLE1_MODELS, t1_sets, columns=t1_cols),
        LabelFraction("table2", TABLE2_MODELS, ("CRC-NORM",), fractions=FRACTIONS, epochs=100, lr=1e-4,
                      batch_size=64, weight_decay=0.05, warmup_epochs=5),
        ResplitKnn("table3", tuple(TABLE3_ROWS), t3_sets, columns=t3_cols, n_splits=5, test_fraction="original",
                   rows={m: {"framework": f, "backbone": b} for m, (f, b) in TABLE3_ROWS.items()},
                   compare=tuple((m, m + "-CypherViT") for m in ("SimCLR", "MoCo", "DINO"))),
    )


def _grid_probe(eval_sets: tuple) -> ClassificationProbes:
    keys, columns = _sets("table4", eval_sets)
    return ClassificationProbes("table4", tuple(GRID_ROWS), keys, columns=columns, knn_ks=(20,), rows=GRID_ROWS)


def _stage0_parts(alt: int, eval_sets: tuple) -> tuple:
    """The kit's own Table 4 row: ``alt`` stage-0 [cls] tokens (an assumption) at the paper's best setting — its
    training run, model and probe."""
    run = ssl_run(f"{_cypher_run(*BEST)}_stage0_{alt}", "dino", CYPHER, n_local=BEST[1], n_cls=BEST[0],
                  stage0_cls=alt)
    name = f"DINO-CypherViT [cls]={BEST[0]} local={BEST[1]} stage-0 [cls]={alt}"
    rows = {name: {"num_cls": f"{BEST[0]} ({alt} at stage 0)", "num_local_views": str(BEST[1])}}
    keys, columns = _sets("table4", eval_sets)
    return (run, _cypher_model(name, run.name, BEST[0], num_stage0_cls=alt),
            ClassificationProbes("table4", tuple(rows), keys, columns=columns, knn_ks=(20,), rows=rows))


SMOKE_NOTE = ("SMOKE PROFILE — not a reproduction: 100 bundled Kather 2016 tiles (CC BY 4.0) stand in for CRC "
              "(raw = w/o norm, Macenko-normalized by the kit = w/ norm) and, in place of VGH/NKI, for the "
              "pretraining data (training split only); 64 px images (32 px local crops), 2 epochs (1 warm-up) "
              "for every framework, batch 16, CPU, each framework's own optimizer, lr rule, weight decay and "
              "clipping otherwise; DINO ViT and iBOT ViT with 2 local crops, not their codebases' 8 and 10 (a "
              "scale choice: the full profile trains 8 and 10); DINO / iBOT heads with 4,096 prototypes and no "
              "frozen last-layer epoch; random 80/10/10 split instead of CRC-VAL-HE-7K; the trained "
              "and fine-tuned encoders are the registered smoke variants vit_smoke (ViT/16, 192-d, 6 blocks, 3 "
              "heads) and cyphervit_smoke (192-d, 2 stages x 3 blocks, 16 -> 4 or 8 [cls] tokens), not ViT-S/16 "
              "and CypherViT-S; 'Pretrained on ImageNet' is timm's ViT-S/16. "
              "PanNuke and BreastPathQ are not in the smoke profile. The protocol card of each table describes "
              "the full profile; these notes are the smoke profile's deviations from it.")


def _tables(backbones: str, stage0: int, stage0_alt: int, tokens_note: str = "") -> tuple:
    """The four tables in the paper's layout, with their footnotes and protocol cards; ``backbones`` says Table 1's
    encoders, ``tokens_note`` is added to Table 4's stage-0 footnote."""
    probes = ("Frozen features: DINO weighted k-NN (cosine, T = 0.07) top-1 accuracy in %, k chosen on a validation "
              "split (10 % of the training data) from DINO's 10 / 20 / 100 / 200 (those <= the training size); "
              "linear probe = multinomial logistic regression, C swept on the same validation split.",
              "BreastPathQ: linear regression on frozen features, MSE and Kendall tau on the official validation "
              "set.",)
    card = {t: tuple(PROTOCOL[k] for k in keys) for t, keys in TABLE_PROTOCOL.items()}
    return (
        TableSpec("table1", "Table 1 — k-NN and linear probing, BreastPathQ regression",
                  "ye2024_cyphervit_table1.csv", keys=("method",),
                  metrics=("crc_nonorm_knn", "crc_nonorm_linear", "crc_norm_knn", "crc_norm_linear", "pannuke_knn",
                           "breastpathq_mse", "breastpathq_tau"),
                  footnotes=probes + (backbones + "DINO-CypherViT uses 4 final [cls] tokens and 2 local views (the "
                                                  "paper's best setting, Table 4).",),
                  protocol=card["table1"],
                  section="Results, downstream tasks (patch-level tissue phenotyping), Table 1"),
        TableSpec("table2", "Table 2 — fine-tuning with 1-100 % of the CRC (w/ norm) labels",
                  "ye2024_cyphervit_table2.csv", keys=("method",), metrics=tuple(FRACTIONS.values()),
                  footnotes=("End-to-end fine-tuning of encoder + linear head (AdamW, cosine schedule) on a "
                             "class-balanced fraction of the training split (at least one tile per class); top-1 "
                             "accuracy in % on the unchanged test split. Fully-supervised = ViT-S/16 from random "
                             "initialisation.",),
                  protocol=card["table2"],
                  section="Results, downstream tasks (semi-supervised label fractions), Table 2"),
        TableSpec("table3", "Table 3 — VanillaViT vs CypherViT in each framework, 5 re-splits",
                  "ye2024_cyphervit_table3.csv", keys=("framework", "backbone"),
                  metrics=("crc_norm_acc_mean", "crc_norm_acc_std", "pannuke_acc_mean", "pannuke_acc_std",
                           "breastpathq_mse_mean", "breastpathq_mse_std", "breastpathq_tau_mean",
                           "breastpathq_tau_std", "pvalue_crc", "pvalue_pannuke", "pvalue_mse", "pvalue_tau")
                  + PAIRED_PVALUES,
                  extra_metrics=PAIRED_PVALUES,
                  footnotes=("Official train and test pooled and re-split 5 times (stratified, seeds 0-4) with each "
                             "dataset's own official test share (CRC: CRC-VAL-HE-7K, 7,180 of 107,180; PanNuke: the "
                             "last fold, about a third; BreastPathQ: the validation set, 187 of 2,766; the value "
                             "used is in each record's note); weighted k-NN (k = 20, T = 0.07) top-1 accuracy, mean "
                             "± sample std; pvalue_*: Welch's t-test (scipy ttest_ind, equal_var=False) VanillaViT vs "
                             "CypherViT within a framework; pvalue_*_paired (kit-only columns): the paired t-test "
                             "(scipy ttest_rel), since both backbones are scored on the same five re-splits.",),
                  protocol=card["table3"],
                  section="Results, plug-and-play across SSL frameworks (5 re-splits, t-tests), Table 3"),
        TableSpec("table4", "Table 4 — number of final [cls] tokens x number of local views (DINO-CypherViT)",
                  "ye2024_cyphervit_table4.csv", keys=("num_cls", "num_local_views"),
                  metrics=("crc_nonorm_acc1", "crc_nonorm_acc3", "crc_norm_acc1", "crc_norm_acc3", "pannuke_acc1",
                           "pannuke_acc3", "breastpathq_mse", "breastpathq_tau"),
                  footnotes=("Weighted k-NN (k = 20, T = 0.07) top-1 / top-3 accuracy in %.",
                             f"Every row has {stage0} stage-0 [cls] tokens (the paper gives no count; the kit's "
                             f"assumption, 64 in CypherViT-S as GroupViT's first stage) except the kit's extra row "
                             f"'{BEST[0]} ({stage0_alt} at stage 0)': {stage0_alt} stage-0 tokens at the paper's best "
                             f"setting, since a 96 px local crop has 36 patches, fewer than 64 tokens." + tokens_note,),
                  protocol=card["table4"],
                  section="Results, ablation studies ([cls] tokens x local views), Table 4"),
    )


def full() -> Recipe:
    datasets = (DatasetSpec("VGH", "vgh_nki"),
                DatasetSpec("CRC-NONORM", "nct_crc_he_100k_nonorm", test_dataset="crc_val_he_7k"),
                DatasetSpec("CRC-NORM", "nct_crc_he_100k", test_dataset="crc_val_he_7k"),
                DatasetSpec("PanNuke", "pannuke", split="official"),
                DatasetSpec("BreastPathQ", "breastpathq", split="official", task="regression"))
    eval_sets = tuple(d.key for d in datasets if d.key != "VGH")
    stage0_run, stage0_model, stage0_probe = _stage0_parts(STAGE0[1], eval_sets)
    pretrain = tuple(ssl_run(f"{m}_vit", m, VIT) for m in ("dino", "ibot", "moco", "simclr", "mae"))
    pretrain += tuple(ssl_run(f"{m}_cyphervit", m, CYPHER, n_cls=BEST[0]) for m in ("moco", "simclr"))
    pretrain += tuple(ssl_run(_cypher_run(c, v), "dino", CYPHER, n_local=v, n_cls=c) for c, v in GRID)
    pretrain += (stage0_run,)
    models = (
        ModelSpec("Pretrained on ImageNet", VIT, "timm"),  # hub weights exist for ViT-S/16 only: full size there
        ModelSpec("Fully-supervised", VIT, "random", note=f"{VIT} from scratch, labels only"),
        ModelSpec("SimCLR", VIT, "train:simclr_vit"),
        ModelSpec("MoCo", VIT, "train:moco_vit"),
        ModelSpec("iBOT", VIT, "train:ibot_vit"),
        ModelSpec("DINO", VIT, "train:dino_vit"),
        ModelSpec("MAE", VIT, "train:mae_vit"),
        _cypher_model("DINO-CypherViT", _cypher_run(*BEST), BEST[0]),
        _cypher_model("SimCLR-CypherViT", "simclr_cyphervit", BEST[0]),
        _cypher_model("MoCo-CypherViT", "moco_cyphervit", BEST[0]),
    )
    models += tuple(_cypher_model(_grid_name(c, v), _cypher_run(c, v), c) for c, v in GRID if (c, v) != BEST)
    models += (stage0_model,)
    figures = (
        UmapPanels("fig1_umap", models=TABLE1_MODELS, dataset="CRC-NORM",
                   title="UMAP of frozen features (CRC w/ norm), 15 neighbours, min_dist 0.1"),
        ClsAttention("fig2_cls_attention", model="DINO-CypherViT", dataset="CRC-NORM",
                     omit=("EMPTY", "DEBRIS", "BACK", "DEB", "MUC")),
    )
    return Recipe(paper="cyphervit", title=TITLE, citation=CITATION, profile="full", image_size=224,
                  datasets=datasets, models=models, pretrain=pretrain, evaluations=_evaluations(eval_sets),
                  ablations=(_grid_probe(eval_sets), stage0_probe),
                  tables=_tables("All rows ViT-S/16 except DINO-CypherViT; ", *STAGE0), figures=figures,
                  extraction_batch_size=256)


def smoke() -> Recipe:
    """The full recipe on the bundled tiles: the Kather 2016 tiles are colorectal H&E without stain normalization,
    raw they stand in for CRC w/o norm, Macenko-normalized by the kit for CRC w/ norm, and for the VGH/NKI
    pretraining data (PanNuke and BreastPathQ are not in the smoke profile); the smoke variants of ViT and CypherViT,
    each framework's optimisation at 64 px, 2 epochs (1 warm-up), batch 16 with its own lr rule."""
    f, eval_sets = full(), ("CRC-NONORM", "CRC-NORM")
    full_run, full_model, _ = _stage0_parts(STAGE0[1], eval_sets)
    stage0_run, stage0_model, stage0_probe = _stage0_parts(SMOKE_STAGE0[1], eval_sets)
    dino_head = dict(out_dim=4096, warmup_teacher_temp_epochs=1, freeze_last_layer_epochs=0)

    def scaled(t):
        return replace(t, dataset="CRC-NONORM", epochs=2, warmup_epochs=1, batch_size=16,
                       lr=framework_lr(t.method, 16), image_size=64, local_size=32,
                       # DINO ViT and iBOT ViT: 2 local crops, not their codebases' 8 and 10 (a scale choice)
                       n_local=BEST[1] if t.name in ("dino_vit", "ibot_vit") else t.n_local,
                       method_cfg={**dino_head, **t.method_cfg} if t.method in ("dino", "ibot") else t.method_cfg)

    def fully_supervised_note(m):
        return replace(m, note=f"{SMOKE_VIT} from scratch, labels only") if m.name == "Fully-supervised" else m

    return derive(
        f, "smoke", encoders={VIT: SMOKE_VIT, CYPHER: SMOKE_CYPHER}, train=scaled,
        datasets=(DatasetSpec("CRC-NONORM", "kather2016_tiny", stand_in_for="NCT-CRC-HE-100K-NONORM"),
                  DatasetSpec("CRC-NORM", "kather2016_tiny", stand_in_for="NCT-CRC-HE-100K", stain="macenko")),
        pretrain=tuple(t for t in f.pretrain if t != full_run) + (stage0_run,),
        models=tuple(fully_supervised_note(m) for m in f.models if m != full_model) + (stage0_model,),
        evaluations=tuple(replace(e, epochs=2, batch_size=16, warmup_epochs=0) if isinstance(e, LabelFraction)
                          else e for e in _evaluations(eval_sets)),
        ablations=(_grid_probe(eval_sets), stage0_probe),
        tables=_tables(f"All rows {SMOKE_VIT} except DINO-CypherViT ({SMOKE_CYPHER}) and 'Pretrained on "
                       f"ImageNet' ({VIT}); ", *SMOKE_STAGE0,
                       " Smoke: 32 px local crops (4 patches), cyphervit_smoke's 16 or 8 tokens."),
        image_size=64, extraction_batch_size=64, notes=(SMOKE_NOTE,))


def build(profile: str) -> Recipe:
    return {"full": full, "smoke": smoke}[profile]()
