"""Metrics of a model on labelled images: accuracy, per-class accuracy, confusion matrix, mistakes."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoints import LoadedModel
from .inference import batched_logits

log = logging.getLogger(__name__)


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [num_classes, num_classes]; rows are the true class, columns the predicted one."""
    true, predicted = np.asarray(true, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    flat = np.bincount(true * num_classes + predicted, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


@dataclass(frozen=True)
class Mistake:
    index: int  # position in the evaluated images
    true: int
    predicted: int
    confidence: float  # probability given to the predicted class


@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    loss: float
    per_class_accuracy: np.ndarray  # [classes]; NaN for a class with no images
    confusion: np.ndarray  # [classes, classes], rows = true class
    mistakes: list[Mistake]  # most confident first
    classes: tuple[str, ...]
    n_images: int
    tta: str = "none"

    def summary(self) -> str:
        """A plain-text table of overall and per-class accuracy."""
        lines = [f"accuracy {self.accuracy:.2%} on {self.n_images} images (loss {self.loss:.4f}"
                 f"{f', {self.tta} TTA' if self.tta != 'none' else ''})"]
        lines += [f"  {name:<11} {acc:7.2%}" for name, acc in zip(self.classes, self.per_class_accuracy)]
        return "\n".join(lines)

    def confusion_text(self) -> str:
        """The confusion matrix as aligned text, rows = true class."""
        short = [c[:5] for c in self.classes]
        lines = ["true\\pred  " + " ".join(f"{s:>5}" for s in short)]
        lines += [f"{s:<10} " + " ".join(f"{v:>5d}" for v in row) for s, row in zip(short, self.confusion)]
        return "\n".join(lines)


def metrics_from_logits(logits: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...],
                        tta: str = "none", top_mistakes: int = 32) -> EvalResult:
    """All evaluation metrics from logits [N, C] and true labels [N]."""
    labels = labels.long()
    probs = logits.softmax(1)
    confidence, predicted = probs.max(1)
    n_classes = len(classes)
    confusion = confusion_matrix(labels.numpy(), predicted.numpy(), n_classes)
    per_class_total = confusion.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.diag(confusion) / per_class_total
    wrong = (predicted != labels).nonzero().flatten()
    worst = wrong[confidence[wrong].argsort(descending=True)][:top_mistakes]
    mistakes = [Mistake(int(i), int(labels[i]), int(predicted[i]), float(confidence[i])) for i in worst]
    n = len(labels)
    return EvalResult(
        accuracy=float(np.trace(confusion) / n) if n else float("nan"),
        loss=float(F.cross_entropy(logits, labels)) if n else float("nan"),
        per_class_accuracy=per_class, confusion=confusion, mistakes=mistakes, classes=classes,
        n_images=n, tta=tta)


def evaluate(loaded: LoadedModel, images: torch.Tensor, labels: torch.Tensor, *, tta: str = "none",
             batch_size: int = 500, top_mistakes: int = 32, progress=None) -> EvalResult:
    """Evaluate a loaded model on uint8 images [N, 3, 32, 32] with labels [N]."""
    log.info("evaluation started: %s on %d images, %s TTA", loaded.model_name, len(labels), tta)
    started = time.perf_counter()
    logits = batched_logits(loaded.model, images, loaded.normalization, loaded.compute,
                            batch_size=batch_size, tta=tta, progress=progress)
    result = metrics_from_logits(logits, labels, loaded.classes, tta, top_mistakes)
    log.info("evaluation finished: %s, accuracy %.4f in %.1f s", loaded.model_name, result.accuracy,
             time.perf_counter() - started)
    return result
