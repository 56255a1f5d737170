"""histokit.train: the one training engine (``train``), its schedules and checkpoints, and supervised fine-tuning."""
from .engine import train
from .supervised import Classifier, Predictions, finetune_classifier, predict

__all__ = ["train", "finetune_classifier", "predict", "Classifier", "Predictions"]
