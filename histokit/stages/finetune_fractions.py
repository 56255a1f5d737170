"""Fine-tuning on a class-balanced fraction of the training labels (Ye et al. Table 2), cached per run."""
from __future__ import annotations

import numpy as np

from ..data.splits import class_balanced_fraction
from ..data.transforms import eval_transform
from ..io import atomic_write_json
from ..run_identity import OWNER_KEYS, run_identity
from ..sidecars import SidecarError, check_sidecar, read_sidecar
from ..train.supervised import finetune_classifier, predict
from .common import load_recipe_dataset, resolve_weights, slug, split_indices, training_rows, weights_normalization
from .context import StageContext, seed_everything


def finetune_transform(size: int, mean, std):
    """DINO / DeiT fine-tuning augmentation: random resized crop and flips (H&E tiles have no up or left)."""
    import torchvision.transforms as T

    return T.Compose([T.RandomResizedCrop(size, interpolation=T.InterpolationMode.BICUBIC), T.RandomHorizontalFlip(),
                      T.RandomVerticalFlip(), T.ToTensor(), T.Normalize(mean, std)])


def finetune_fraction(ctx: StageContext, model_name: str, dataset: str, fraction: float, params: dict) -> dict:
    from .index import weights_identity

    path = ctx.path("label_fraction", slug(model_name), slug(dataset), f"{fraction:g}.json")
    run = run_identity(ctx.paper, ctx.profile, ctx.label, ctx.run_dir, ctx.recipe)
    weights = weights_identity(ctx, model_name, dataset)  # what the fine-tuning starts from, without building it
    if path.exists():
        try:
            saved = read_sidecar(path)
        except SidecarError:
            saved = None  # damaged: fine-tuned again, over it
        if saved is not None:  # a result of another (model, dataset, fraction) or run, copied here, is refused
            expected = {"model": model_name, "dataset": dataset, "fraction": fraction}
            if "run" in saved:  # written before the run was recorded: the kit's cache then, kept
                expected["run"] = {k: run[k] for k in OWNER_KEYS}
            checked = check_sidecar(path, expected, meta=saved,
                                    remedy=f"delete {path} (stage 05 fine-tunes it again)",
                                    what=f"the {fraction:g} label-fraction result of {model_name!r} on {dataset!r} "
                                         f"of this {ctx.paper} {ctx.label} run")
            if checked.get("weights_identity") == weights:
                return checked
            # this row's result from other starting weights (a retrained run, another file under the same name)
    model = ctx.recipe.model(model_name)
    seed_everything(ctx.seed)  # a random start (or fallback) must not depend on what ran before in this kernel
    encoder, source = resolve_weights(ctx, model.encoder, model.weights, dataset, image_size=ctx.recipe.image_size,
                                      pooling=model.pooling, encoder_kwargs=model.encoder_kwargs,
                                      scope=params.get("table", "all"))
    data = load_recipe_dataset(ctx, dataset)
    split = split_indices(ctx, dataset)
    train_rows = np.asarray(split["train"])
    picked = train_rows[class_balanced_fraction(data.labels[train_rows], fraction, seed=ctx.seed)]
    picked = training_rows(ctx, picked)  # a rehearsal caps the images (and so the batch) of every training run
    size = ctx.recipe.image_size
    mean, std, _ = weights_normalization(ctx, model, dataset)   # an official checkpoint's own, else the row's
    train_ds = data.subset(picked).with_transform(finetune_transform(size, mean, std))
    val_ds = data.subset(split["val"]).with_transform(eval_transform(size, mean, std))
    if ctx.recipe.dataset(dataset).test_dataset:
        test_ds = load_recipe_dataset(ctx, dataset, test=True).with_transform(eval_transform(size, mean, std))
    else:
        test_ds = data.subset(split["test"]).with_transform(eval_transform(size, mean, std))
    epochs = int(params.get("epochs", 100))
    classifier, history = finetune_classifier(
        encoder, train_ds, val_ds, len(data.classes), epochs=epochs, lr=float(params.get("lr", 1e-4)),
        batch_size=int(params.get("batch_size", 64)), weight_decay=float(params.get("weight_decay", 0.05)),
        warmup_epochs=int(params.get("warmup_epochs", 0)), device=ctx.device, seed=ctx.seed,
        progress=ctx.progress, amp=ctx.device.startswith("cuda"), max_steps=ctx.max_steps)
    preds = predict(classifier, test_ds, batch_size=64, device=ctx.device, progress=False)
    correct = (preds.logits.argmax(1) == preds.labels).astype(float) * 100.0
    result = {"model": model_name, "dataset": dataset, "fraction": fraction, "run": run, "weights": source,
              "weights_identity": weights,
              "n_train": int(len(picked)), "epochs": epochs, "max_steps": ctx.max_steps, "accuracy": float(correct.mean()),
              "correct": correct.tolist(), "history": history}
    atomic_write_json(path, result)
    return result
