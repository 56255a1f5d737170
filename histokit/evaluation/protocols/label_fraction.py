"""Ye et al. Table 2: fine-tune each model end to end on 1 ... 100 % of the training labels, drawn evenly per class,
and report top-1 accuracy on the (unchanged) test split. One cached result per (model, dataset, fraction)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ...io import atomic_write_json
from ...run_identity import OWNER_KEYS, run_identity
from ...sidecars import SidecarError, check_sidecar, read_sidecar
from .base import Protocol
from .records import record


def finetune_transform(size: int, mean, std):
    """DINO / DeiT fine-tuning augmentation: random resized crop and flips (H&E tiles have no up or left)."""
    import torchvision.transforms as T

    return T.Compose([T.RandomResizedCrop(size, interpolation=T.InterpolationMode.BICUBIC), T.RandomHorizontalFlip(),
                      T.RandomVerticalFlip(), T.ToTensor(), T.Normalize(mean, std)])


@dataclass(frozen=True)
class LabelFraction(Protocol):
    fractions: dict = field(default_factory=dict)   # {"0.01": table column, ...}: fractions of the training labels
    rows: dict = field(default_factory=dict)
    epochs: int = 100
    lr: float = 1e-4
    batch_size: int = 64
    weight_decay: float = 0.05
    warmup_epochs: int = 0

    kind: ClassVar[str] = "label_fraction"
    words: ClassVar[str] = "label-fraction fine-tuning, end to end, test accuracy"
    needs_images: ClassVar[bool] = True

    def check(self, recipe) -> None:
        super().check(recipe)
        where = f"{recipe.paper}: {self.kind} evaluation of table {self.table!r}"
        if not self.fractions:
            raise ValueError(f"{where}: fractions is empty")
        for fraction in self.fractions:
            try:
                ok = 0.0 < float(fraction) <= 1.0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"{where}: fraction {fraction!r} must be a number in (0, 1]")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"{where}: epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")

    def run(self, ctx) -> list[dict]:
        out = []
        for m in self.models:
            for d in self.datasets:
                for fraction, column in self.fractions.items():
                    result = self.finetune(ctx, m, d, float(fraction))
                    out.append(record(self, m, d, column, result["accuracy"], per_item=np.asarray(result["correct"]),
                                      note=f"{result['n_train']} training tiles, {result['epochs']} epochs, "
                                           f"full fine-tuning", seed=ctx.seed, **self.row_labels(m)))
        return out

    def finetune(self, ctx, model_name: str, dataset: str, fraction: float) -> dict:
        """One fine-tuning on ``fraction`` of ``dataset``'s training labels: its cached result while the cache is
        this run's and starts from the same weights, else fine-tuned (and cached) now."""
        from ...data.splits import class_balanced_fraction
        from ...data.transforms import eval_transform
        from ...stages.common import (load_recipe_dataset, resolve_weights, slug, split_indices, training_rows,
                                      weights_normalization)
        from ...stages.context import seed_everything
        from ...stages.index import weights_identity
        from ...train.supervised import finetune_classifier, predict

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
                                        what=f"the {fraction:g} label-fraction result of {model_name!r} on "
                                             f"{dataset!r} of this {ctx.paper} {ctx.label} run")
                if checked.get("weights_identity") == weights:
                    return checked
                # this row's result from other starting weights (a retrained run, another file under the same name)
        model = ctx.recipe.model(model_name)
        seed_everything(ctx.seed)  # a random start (or fallback) must not depend on what ran before in this kernel
        encoder, source = resolve_weights(ctx, model.encoder, model.weights, dataset, image_size=ctx.recipe.image_size,
                                          pooling=model.pooling, encoder_kwargs=model.encoder_kwargs, scope=self.table)
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
        classifier, history = finetune_classifier(
            encoder, train_ds, val_ds, len(data.classes), epochs=int(self.epochs), lr=float(self.lr),
            batch_size=int(self.batch_size), weight_decay=float(self.weight_decay),
            warmup_epochs=int(self.warmup_epochs), device=ctx.device, seed=ctx.seed,
            progress=ctx.progress, amp=ctx.device.startswith("cuda"), max_steps=ctx.max_steps)
        preds = predict(classifier, test_ds, batch_size=64, device=ctx.device, progress=False)
        correct = (preds.logits.argmax(1) == preds.labels).astype(float) * 100.0
        result = {"model": model_name, "dataset": dataset, "fraction": fraction, "run": run, "weights": source,
                  "weights_identity": weights, "n_train": int(len(picked)), "epochs": int(self.epochs),
                  "max_steps": ctx.max_steps, "accuracy": float(correct.mean()), "correct": correct.tolist(),
                  "history": history}
        atomic_write_json(path, result)
        return result
