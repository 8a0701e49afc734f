"""Metrics of a model on labelled images: accuracy; per-class accuracy, precision, recall and F1; the
confusion matrix and its drill-down (most confused pairs, the images of a cell, top losses); calibration
(ECE before and after temperature scaling, reliability bins); mistakes; and two models compared."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .calibration import Reliability, reliability, scaled_probabilities
from .checkpoints import LoadedModel
from .inference import batched_logits

log = logging.getLogger(__name__)


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [num_classes, num_classes]; rows are the true class, columns the predicted one."""
    true, predicted = np.asarray(true, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    flat = np.bincount(true * num_classes + predicted, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def precision_recall_f1(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision TP / (TP + FP), recall TP / (TP + FN) and F1 2TP / (2TP + FP + FN) of a
    confusion matrix (rows = true class). Undefined values are NaN: the precision of a class never
    predicted, the recall of a class without images, the F1 of a class neither present nor predicted.
    A class with images that is never predicted has F1 0 (and NaN precision)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    hits, predicted, actual = np.diag(confusion), confusion.sum(0), confusion.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hits / predicted, hits / actual, 2 * hits / (predicted + actual)


def _defined_mean(values: np.ndarray) -> float:
    """The mean over the classes where a value is defined (NaN when none is)."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if len(defined) else float("nan")


def _percent(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.2%}"


@dataclass(frozen=True)
class Mistake:
    index: int  # position in the evaluated images
    true: int
    predicted: int
    confidence: float  # calibrated probability given to the predicted class


@dataclass(frozen=True)
class EvalResult:
    """Metrics of one evaluation, and per-image predictions for drilling down. Per-class values are
    NaN where undefined (see precision_recall_f1); macro averages are means over the classes where
    they are defined. Probabilities are calibrated: softmax(logits / temperature)."""

    accuracy: float
    loss: float  # mean cross-entropy of the raw logits (temperature 1), the training loss
    confusion: np.ndarray  # [classes, classes], rows = true class
    mistakes: list[Mistake]  # most confident first
    classes: tuple[str, ...]
    n_images: int
    precision: np.ndarray  # [classes]
    recall: np.ndarray  # [classes]
    f1: np.ndarray  # [classes]
    temperature: float  # the model's fitted temperature; 1: not calibrated
    raw_reliability: Reliability  # of softmax(logits)
    calibrated_reliability: Reliability  # of softmax(logits / temperature)
    labels: np.ndarray  # [N] int64, the true class of each image
    predicted: np.ndarray  # [N] int64 (the same at every temperature)
    probabilities: np.ndarray  # [N, classes] float32, calibrated
    losses: np.ndarray  # [N] float32, each image's cross-entropy under the calibrated probabilities
    tta: str = "none"

    @property
    def per_class_accuracy(self) -> np.ndarray:
        """The share of each class's images predicted right: its recall (NaN for a class with no images)."""
        return self.recall

    @property
    def macro_precision(self) -> float:
        return _defined_mean(self.precision)

    @property
    def macro_recall(self) -> float:
        return _defined_mean(self.recall)

    @property
    def macro_f1(self) -> float:
        return _defined_mean(self.f1)

    @property
    def raw_ece(self) -> float:
        """Expected calibration error of the raw softmax (before temperature scaling)."""
        return self.raw_reliability.ece

    @property
    def calibrated_ece(self) -> float:
        """Expected calibration error after temperature scaling."""
        return self.calibrated_reliability.ece

    @property
    def calibrated(self) -> bool:
        return self.temperature != 1.0

    def summary(self) -> str:
        """Plain text: overall accuracy, a per-class table (accuracy, precision, recall, F1, images)
        with macro averages, and the calibration line."""
        calibrated_loss = f", {float(self.losses.mean()):.4f} calibrated" if self.calibrated and self.n_images else ""
        lines = [f"accuracy {self.accuracy:.2%} on {self.n_images:,} images (loss {self.loss:.4f}{calibrated_loss}"
                 f"{f', {self.tta} TTA' if self.tta != 'none' else ''})",
                 f"  {'class':<13} {'accuracy':>9} {'precision':>9} {'recall':>9} {'F1':>9} {'images':>7}"]
        for name, row in zip(self.classes, zip(self.per_class_accuracy, self.precision, self.recall, self.f1,
                                               self.confusion.sum(1))):
            *values, images = row
            lines.append(f"  {name[:13]:<13} " + " ".join(f"{_percent(v):>9}" for v in values) + f" {images:>7,}")
        macro = (self.macro_precision, self.macro_recall, self.macro_f1)
        lines.append(f"  {'macro average':<13} {'':>9} " + " ".join(f"{_percent(v):>9}" for v in macro))
        if self.calibrated:
            lines.append(f"calibration: ECE {_percent(self.raw_ece)} before temperature scaling, "
                         f"{_percent(self.calibrated_ece)} after (temperature {self.temperature:.3g})")
        else:
            lines.append(f"calibration: ECE {_percent(self.raw_ece)}; no temperature fitted (temperature 1), "
                         "the probabilities are the raw softmax")
        return "\n".join(lines)

    def confusion_text(self) -> str:
        """The confusion matrix as aligned text, rows = true class."""
        short = [c[:5] for c in self.classes]
        lines = ["true\\pred  " + " ".join(f"{s:>5}" for s in short)]
        lines += [f"{s:<10} " + " ".join(f"{v:>5d}" for v in row) for s, row in zip(short, self.confusion)]
        return "\n".join(lines)


def metrics_from_logits(logits: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...],
                        tta: str = "none", top_mistakes: int = 32, temperature: float = 1.0) -> EvalResult:
    """All evaluation metrics from logits [N, C] and true labels [N]; probabilities, confidences
    and per-image losses are those of softmax(logits / temperature)."""
    labels = labels.long()
    n, n_classes = len(labels), len(classes)
    logits = logits.float() if n else torch.zeros(0, n_classes)
    probabilities = scaled_probabilities(logits, temperature)
    predicted = logits.argmax(1)  # dividing by a positive temperature cannot change it
    confidence = probabilities.gather(1, predicted[:, None]).flatten()
    confusion = confusion_matrix(labels.numpy(), predicted.numpy(), n_classes)
    precision, recall, f1 = precision_recall_f1(confusion)
    wrong = (predicted != labels).nonzero().flatten()
    worst = wrong[confidence[wrong].argsort(descending=True, stable=True)][:top_mistakes]
    mistakes = [Mistake(int(i), int(labels[i]), int(predicted[i]), float(confidence[i])) for i in worst]
    return EvalResult(
        accuracy=float(np.trace(confusion) / n) if n else float("nan"),
        loss=float(F.cross_entropy(logits, labels)) if n else float("nan"),
        confusion=confusion, mistakes=mistakes, classes=classes, n_images=n,
        precision=precision, recall=recall, f1=f1, temperature=float(temperature),
        raw_reliability=reliability(logits.softmax(1), labels),
        calibrated_reliability=reliability(probabilities, labels),
        labels=labels.numpy(), predicted=predicted.numpy(), probabilities=probabilities.numpy(),
        losses=F.cross_entropy(logits / temperature, labels, reduction="none").numpy(), tta=tta)


def evaluate(loaded: LoadedModel, images: torch.Tensor, labels: torch.Tensor, *, tta: str = "none",
             batch_size: int = 500, top_mistakes: int = 32, progress=None) -> EvalResult:
    """Evaluate a loaded model on uint8 images [N, 3, S, S] with labels [N], its probabilities
    calibrated by its fitted temperature (fitted on plain views: with test-time augmentation the
    same temperature divides the averaged logits)."""
    log.info("evaluation started: %s on %d images, %s TTA", loaded.model_name, len(labels), tta)
    started = time.perf_counter()
    logits = batched_logits(loaded.model, images, loaded.normalization, loaded.compute,
                            batch_size=batch_size, tta=tta, progress=progress)
    result = metrics_from_logits(logits, labels, loaded.classes, tta, top_mistakes, loaded.temperature)
    log.info("evaluation finished: %s, accuracy %.4f in %.1f s", loaded.model_name, result.accuracy,
             time.perf_counter() - started)
    return result


@dataclass(frozen=True)
class ConfusedPair:
    """An off-diagonal cell of a confusion matrix: images of class `true` predicted as `predicted`."""

    true: int
    predicted: int
    true_name: str
    predicted_name: str
    count: int


def most_confused(confusion: np.ndarray, classes, k: int = 10) -> list[ConfusedPair]:
    """The k off-diagonal cells with the most images (cells of 0 left out), most first; equal
    counts in row-major order."""
    off_diagonal = np.array(confusion, dtype=np.int64)
    np.fill_diagonal(off_diagonal, 0)
    true, predicted = np.nonzero(off_diagonal)
    order = np.argsort(-off_diagonal[true, predicted], kind="stable")[:k]
    return [ConfusedPair(int(true[i]), int(predicted[i]), classes[true[i]], classes[predicted[i]],
                         int(off_diagonal[true[i], predicted[i]])) for i in order]


def cell_indices(result: EvalResult, true: int, predicted: int) -> np.ndarray:
    """Indices of the images of class `true` that `result` predicts as `predicted`, most
    confident (calibrated) first, equal confidence in image order."""
    indices = np.flatnonzero((result.labels == true) & (result.predicted == predicted))
    confidence = result.probabilities[indices, predicted]
    return indices[np.argsort(-confidence, kind="stable")]


def top_losses(result: EvalResult, k: int | None = None) -> np.ndarray:
    """Indices of the k images (all when None) with the highest loss, highest first (equal losses in image order)."""
    return np.argsort(-result.losses, kind="stable")[:k]


@dataclass(frozen=True)
class Comparison:
    """Two models' results on the same images: per-class accuracy side by side, and where they disagree."""

    names: tuple[str, str]
    classes: tuple[str, ...]
    accuracy: tuple[float, float]
    per_class_accuracy: tuple[np.ndarray, np.ndarray]
    both_right: int
    only_a_right: int
    only_b_right: int
    both_wrong: int
    disagreements: np.ndarray  # indices of the images the two predict differently, in image order

    def summary(self) -> str:
        """Plain text: accuracy overall and per class for both, then the agreement counts."""
        a, b = self.names
        width = max(9, len(a), len(b))
        lines = [f"  {'':<13} {a:>{width}} {b:>{width}}",
                 f"  {'accuracy':<13} {_percent(self.accuracy[0]):>{width}} {_percent(self.accuracy[1]):>{width}}"]
        lines += [f"  {name[:13]:<13} {_percent(x):>{width}} {_percent(y):>{width}}"
                  for name, x, y in zip(self.classes, *self.per_class_accuracy)]
        lines.append(f"both right {self.both_right:,} · only {a} right {self.only_a_right:,} · only {b} right "
                     f"{self.only_b_right:,} · both wrong {self.both_wrong:,} · predictions differ on "
                     f"{len(self.disagreements):,} images")
        return "\n".join(lines)


def compare(result_a: EvalResult, result_b: EvalResult, names: tuple[str, str] = ("A", "B")) -> Comparison:
    """Compare two evaluations of the same images (same classes and labels, in the same order)."""
    if result_a.classes != result_b.classes or not np.array_equal(result_a.labels, result_b.labels):
        raise ValueError("the two results are not on the same images with the same classes; evaluate both "
                         "models on the same evaluation set")
    right_a, right_b = result_a.predicted == result_a.labels, result_b.predicted == result_b.labels
    return Comparison(
        names=tuple(names), classes=result_a.classes, accuracy=(result_a.accuracy, result_b.accuracy),
        per_class_accuracy=(result_a.per_class_accuracy, result_b.per_class_accuracy),
        both_right=int((right_a & right_b).sum()), only_a_right=int((right_a & ~right_b).sum()),
        only_b_right=int((~right_a & right_b).sum()), both_wrong=int((~right_a & ~right_b).sum()),
        disagreements=np.flatnonzero(result_a.predicted != result_b.predicted))
