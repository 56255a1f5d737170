"""Supervised fine-tuning of an encoder with a linear classifier on its pooled embedding, through the one engine.

Used for the label-fraction fine-tuning of Ye et al. (2024, Table 2: 1-100 % of the CRC labels), the linear probe
(``freeze_backbone=True``: encoder frozen and kept in eval mode, only the linear layer trains) and the "no SSL
pretraining" arms of Habijan et al. (2025, Table II: the same fine-tuning from a random initialisation).
Loss: cross-entropy on the logits of ``Linear(encoder.embed_dim, num_classes)``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from ..data.loading import loader_kwargs, seeded_loader
from ..progress import progress_bar

from histokit.models.base import Encoder

from .engine import _resolve_device, move_to_device, train


class Classifier(nn.Module):
    """``logits = head(encoder(x))``; ``encoder`` keeps the Encoder contract, so the fine-tuned backbone can be
    used for feature extraction afterwards."""

    def __init__(self, encoder: Encoder, num_classes: int):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got num_classes={num_classes}")
        self.encoder = encoder
        self.head = nn.Linear(encoder.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def image_and_label(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, label, ...) tuples (PatchDataset yields ``(image, label, index)``) or ``{"image", "label"}`` dicts."""
    if isinstance(batch, dict):
        if "image" not in batch or "label" not in batch:
            raise ValueError(f"a classification batch dict needs 'image' and 'label', got keys {sorted(batch)}")
        return batch["image"], batch["label"]
    if isinstance(batch, (list, tuple)) and len(batch) >= 2 and isinstance(batch[0], torch.Tensor):
        return batch[0], batch[1]
    raise ValueError("a classification batch must be (image, label, ...) with an image tensor first")


class _ClassificationObjective(nn.Module):
    """Adapter that gives a :class:`Classifier` the engine's method interface (batch -> (loss, logs))."""

    # A static graph once iBOT's [MASK] embedding (a ViT carries it for every method) is frozen: DDP need not
    # search each step for unused parameters.
    find_unused_parameters = False

    def __init__(self, model: Classifier, freeze_backbone: bool, label_smoothing: float = 0.0):
        super().__init__()
        token = getattr(model.encoder, "mask_token", None)
        if isinstance(token, nn.Parameter):
            token.requires_grad_(False)  # fine-tuning never masks; the value stays in the state dict
        self.model = model
        self.freeze_backbone = freeze_backbone
        self.label_smoothing = label_smoothing

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_backbone:  # linear probe: BN statistics / dropout of the backbone stay in eval mode
            self.model.encoder.eval()
        return self

    def batch_to_inputs(self, batch) -> tuple:
        return image_and_label(batch)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        logits = self.model(x)
        loss = F.cross_entropy(logits.float(), y.long(), label_smoothing=self.label_smoothing)
        acc = (logits.argmax(1) == y).float().mean()
        return loss, {"train_acc": acc.detach()}


@dataclass
class Predictions:
    logits: np.ndarray   # (N, C)
    labels: np.ndarray   # (N,)
    index: np.ndarray    # (N,) dataset row of each prediction

    @property
    def probabilities(self) -> np.ndarray:
        z = self.logits - self.logits.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)

    @property
    def predicted(self) -> np.ndarray:
        return self.logits.argmax(1)

    @property
    def accuracy(self) -> float:
        return float((self.predicted == self.labels).mean()) if len(self.labels) else float("nan")


@torch.no_grad()
def predict(model: nn.Module, ds, *, batch_size: int = 64, device: Optional[str | torch.device] = None,
            num_workers: int | str = "auto", progress: bool = True) -> Predictions:
    """Logits of ``model`` on every item of ``ds`` in order (eval mode, no gradient); ``num_workers="auto"``: the
    kit's loader policy for an evaluation loader (:mod:`histokit.data.loading`)."""
    if len(ds) == 0:
        raise ValueError("predict: the dataset is empty")
    device = _resolve_device(device)
    model.to(device).eval()
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False,
                        **loader_kwargs(device, train=False, num_workers=num_workers))
    logits, labels = [], []
    for batch in progress_bar(loader, desc="predict", disable=not progress, leave=False):
        x, y = image_and_label(move_to_device(batch, device))
        logits.append(model(x).float().cpu())
        labels.append(y.cpu())
    return Predictions(torch.cat(logits).numpy(), torch.cat(labels).numpy(), np.arange(len(ds)))


def finetune_classifier(encoder: Encoder, train_ds, val_ds, num_classes: int, *, epochs: int, lr: float,
                        batch_size: int, freeze_backbone: bool = False, optimizer: str = "adamw",
                        weight_decay: float = 0.05, warmup_epochs: int = 0, min_lr: float = 1e-6,
                        label_smoothing: float = 0.0, grad_clip: Optional[float] = None, amp: bool = True,
                        device: Optional[str | torch.device] = None,
                        checkpoint_dir: Optional[str | os.PathLike] = None, resume: bool = True,
                        num_workers: int | str = "auto", seed: int = 0, progress: bool = True,
                        log_every: int = 10, max_steps: Optional[int] = None) -> tuple[Classifier, list[dict]]:
    """Fine-tune ``encoder`` + a new linear head on ``train_ds``; evaluate on ``val_ds`` (may be None) each epoch.

    ``num_workers="auto"``: the kit's loader policy (:mod:`histokit.data.loading`; none on a CPU). The weights are
    the same for a seed whatever the worker count: the training loader is a
    :func:`~histokit.data.loading.seeded_loader` (per-sample seeded augmentation, order by seed + epoch).
    ``freeze_backbone=False`` trains every encoder parameter (they are unfrozen first: an EMA teacher arrives
    frozen); True trains the head only. ``max_steps`` caps the optimizer steps (a rehearsal), schedules kept at
    full length. History entries of each epoch end carry ``val_loss`` and ``val_acc``.
    Returns the trained :class:`Classifier` (on ``device``, eval mode) and the history.
    """
    if len(train_ds) == 0:
        raise ValueError("finetune_classifier: train_ds is empty")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got batch_size={batch_size}")
    torch.manual_seed(seed)  # the head's initialisation is part of the run
    model = Classifier(encoder, num_classes)
    for p in model.encoder.parameters():
        p.requires_grad_(not freeze_backbone)
    objective = _ClassificationObjective(model, freeze_backbone, label_smoothing)
    bs = min(batch_size, len(train_ds))
    # a last batch of one image breaks BatchNorm in train mode; drop it only then
    drop_last = len(train_ds) > bs and len(train_ds) % bs == 1
    resolved = _resolve_device(device)
    # the same batches whatever the worker count (and after a resume): each image's crop and flips from
    # (seed, epoch, index), each epoch's order from seed + epoch, the workers' base seed from the loader's own
    # generator, not from the global RNG the model's dropout draws from (histokit.data.loading.seeded_loader)
    loader = seeded_loader(train_ds, batch_size=bs, seed=seed, device=resolved, drop_last=drop_last,
                           num_workers=num_workers)

    def validate(epoch: int) -> dict:
        if val_ds is None or len(val_ds) == 0:
            return {}
        preds = predict(model, val_ds, batch_size=bs, device=resolved, num_workers=num_workers, progress=False)
        val_loss = F.cross_entropy(torch.from_numpy(preds.logits), torch.from_numpy(preds.labels).long())
        return {"val_loss": float(val_loss), "val_acc": preds.accuracy}

    history = train(objective, loader, epochs=epochs, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                    warmup_epochs=warmup_epochs, min_lr=min_lr, amp=amp, device=resolved,
                    checkpoint_dir=checkpoint_dir, resume=resume, grad_clip=grad_clip, seed=seed, progress=progress,
                    log_every=log_every, epoch_end=validate, max_steps=max_steps)
    model.eval()
    return model, history
