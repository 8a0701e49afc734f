"""Honest confidence: temperature scaling fitted on held-out images, and how well confidences match accuracy.

A network trained with cross-entropy is usually over-confident: among the images it calls 95% sure,
fewer than 95% are right. Temperature scaling (Guo et al., "On Calibration of Modern Neural
Networks", 2017) divides the logits by one number T > 0 fitted to minimise the negative
log-likelihood on images the model did not train on. Dividing by a positive number never changes
which class is largest, so accuracy and the confusion matrix stay exactly as they were; only the
probabilities become honest. The expected calibration error (ECE) measures what is left: the
images are put in equal-width bins of their top probability, and each bin's |accuracy - mean
confidence| is weighted by its share of the images.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoints
from .data import ImageData
from .hardware import Measurements
from .inference import batched_logits

# T from 20x sharper to 20x flatter than the raw softmax: far wider than the 1-3 that trained
# networks need (Guo et al.), so the bound only matters for degenerate data (e.g. all images right).
TEMPERATURE_BOUNDS = (0.05, 20.0)
# coarse grid over log T that brackets the minimum before golden-section search refines it
_GRID_POINTS = 61
_LOG_T_TOLERANCE = 1e-7
# Guo et al.'s number of confidence bins
ECE_BINS = 15
PAYLOAD_KEY = "calibration"


class CalibrationError(ValueError):
    """A checkpoint cannot be calibrated on these images; the message says why and what to do."""


def scaled_probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """softmax(logits / temperature) over the classes of logits [N, C]."""
    return (logits.float() / temperature).softmax(1)


def _mean_nll(logits: torch.Tensor, labels: torch.Tensor, log_temperature: float) -> float:
    return float(F.cross_entropy(logits / math.exp(log_temperature), labels))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T in TEMPERATURE_BOUNDS minimising the mean NLL of softmax(logits / T)
    on held-out logits [N, C] with labels [N]. Computed in float64: the NLL is convex in 1/T, so
    it has one minimum along log T; a grid brackets it and golden-section search narrows the
    bracket. Deterministic; logits that are equal across classes in every row (the NLL does not
    depend on T) keep T = 1."""
    if len(labels) == 0:
        raise ValueError("fitting a temperature needs at least one labelled image")
    z = logits.detach().cpu().to(torch.float64)
    y = labels.detach().cpu().long()
    if bool((z == z[:, :1]).all()):
        return 1.0
    low, high = (math.log(t) for t in TEMPERATURE_BOUNDS)
    grid = np.linspace(low, high, _GRID_POINTS)
    best = int(np.argmin([_mean_nll(z, y, g) for g in grid]))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, _GRID_POINTS - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = _mean_nll(z, y, c), _mean_nll(z, y, d)
    while b - a > _LOG_T_TOLERANCE:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = _mean_nll(z, y, c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = _mean_nll(z, y, d)
    return math.exp((a + b) / 2)


def _as_numpy(values, dtype) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype)


@dataclass(frozen=True)
class Reliability:
    """A reliability diagram: per equal-width bin (lower, upper] of the top probability, the mean
    top probability, the accuracy and the number of images (NaN means for empty bins), and the ECE."""

    edges: np.ndarray  # [bins + 1], from 0 to 1
    confidence: np.ndarray  # [bins]
    accuracy: np.ndarray  # [bins]
    count: np.ndarray  # [bins] int64
    ece: float  # NaN for no images


def reliability(probs, labels, bins: int = ECE_BINS) -> Reliability:
    """Bin the images of probabilities [N, C] (array or tensor) with labels [N] by their top
    probability; see Reliability."""
    probs, labels = _as_numpy(probs, np.float64), _as_numpy(labels, np.int64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"expected probabilities [N, C] and labels [N], got {probs.shape} and {labels.shape}")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    edges = np.linspace(0.0, 1.0, bins + 1)
    if len(labels) == 0:
        empty = np.full(bins, np.nan)
        return Reliability(edges, empty, empty.copy(), np.zeros(bins, np.int64), float("nan"))
    confidence = probs.max(1)
    correct = (probs.argmax(1) == labels).astype(np.float64)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    confidence_sum = np.bincount(which, weights=confidence, minlength=bins)
    correct_sum = np.bincount(which, weights=correct, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence, accuracy = confidence_sum / count, correct_sum / count
    ece = float(np.abs(correct_sum - confidence_sum).sum() / len(labels))
    return Reliability(edges, mean_confidence, accuracy, count.astype(np.int64), ece)


def expected_calibration_error(probs, labels, bins: int = ECE_BINS) -> float:
    """Sum over equal-width bins of the top probability of (images in bin / N) * |accuracy - mean confidence|."""
    return reliability(probs, labels, bins).ece


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and what it did on the images it was fitted on (stored in a
    checkpoint under PAYLOAD_KEY)."""

    temperature: float
    fitted_on: str  # in words, e.g. "the validation split: 5,000 images held out of training (seed 0)"
    n_images: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        """Read a stored record; CheckpointError when it is incomplete or its temperature is not a positive number."""
        try:
            calibration = cls(**{f.name: d[f.name] for f in fields(cls)})
        except (KeyError, TypeError) as exc:
            raise checkpoints.CheckpointError(f"the checkpoint's calibration record is incomplete: {exc}") from exc
        t = calibration.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise checkpoints.CheckpointError(f"the checkpoint's temperature {t!r} is not a positive number; "
                                              "calibrate the checkpoint again")
        return calibration

    def describe(self) -> str:
        """One line for people: the temperature, where it was fitted, and NLL and ECE before and after."""
        return (f"temperature {self.temperature:.3g}, fitted on {self.fitted_on}: NLL {self.nll_before:.4f} → "
                f"{self.nll_after:.4f}, ECE {self.ece_before:.2%} → {self.ece_after:.2%}")


def calibration_from_logits(logits: torch.Tensor, labels: torch.Tensor, fitted_on: str) -> Calibration:
    """Fit the temperature on held-out logits [N, C] and labels [N] (described by `fitted_on`)
    and measure NLL and ECE before and after."""
    labels = labels.long()
    temperature = fit_temperature(logits, labels)

    def nll_and_ece(t: float) -> tuple[float, float]:
        return (_mean_nll(logits.double(), labels, math.log(t)),
                expected_calibration_error(scaled_probabilities(logits, t), labels))

    (nll_before, ece_before), (nll_after, ece_after) = nll_and_ece(1.0), nll_and_ece(temperature)
    return Calibration(temperature, fitted_on, len(labels), nll_before, nll_after, ece_before, ece_after)


def _check_same_data(payload: dict, data: ImageData) -> None:
    """Held-out indices only mean something on the data the model was trained on."""
    recorded = payload.get("dataset", {})
    differences = []
    if tuple(payload.get("classes", ())) != tuple(data.classes):
        differences.append("classes")
    for key, here in (("image_size", data.image_size), ("content_hash", data.content_hash)):
        if recorded.get(key) and here and recorded[key] != here:
            differences.append(key.replace("_", " "))
    counts, here_counts = recorded.get("counts", {}), data.summary()["counts"]
    differences += [f"number of {split} images" for split in ("train", "val")
                    if split in counts and counts[split] != here_counts.get(split)]
    if differences:
        raise CalibrationError(f"this checkpoint was not trained on {data.name} (its {', '.join(differences)} "
                               "differ), so the images it did not train on cannot be found there; calibrate it "
                               "with the data it was trained on")


def validation_images(payload: dict, data: ImageData) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The images [N, 3, S, S], labels [N] and a description of the images that a checkpoint's
    model did not train on: the data's own validation split, or the seeded split of its
    training set that its config held out (as `train.Trainer` does)."""
    config = payload.get("config")
    if not isinstance(config, dict):
        raise CalibrationError("this checkpoint records no training config, so which images its model did not "
                               "train on is unknown; its temperature cannot be fitted honestly")
    _check_same_data(payload, data)
    if data.has_validation:
        return (data.val_images, data.val_labels,
                f"the validation split of {data.name}: {len(data.val_labels):,} images kept apart from training")
    val_size, seed = int(config.get("val_size", 0)), int(config.get("seed", 0))
    if val_size == 0:
        raise CalibrationError(
            f"this model trained on all {len(data.train_labels):,} training images (validation size 0), so no "
            "held-out images are left: its temperature cannot be fitted without images it did not train on, and "
            "fitting it on the test set would be dishonest (the test set would then no longer measure the "
            "calibrated model). Train it with a validation size above 0 to calibrate it")
    images, labels = data.held_out(val_size, seed, config.get("train_size"))
    return images, labels, f"the validation split: {val_size:,} images held out of training (seed {seed})"


def calibrate(payload: dict, data: ImageData, device: str = "auto", precision: str = "auto",
              measurements: Measurements | None = None) -> Calibration:
    """Fit the temperature of a checkpoint dict's model on the images it did not train on
    (see validation_images), computing on `device` in `precision` (see LoadedModel.from_payload)."""
    images, labels, fitted_on = validation_images(payload, data)
    loaded = checkpoints.LoadedModel.from_payload(payload, device, precision, measurements)
    logits = batched_logits(loaded.model, images, loaded.normalization, loaded.compute)
    return calibration_from_logits(logits, labels, fitted_on)


def calibrate_checkpoint(path: str | Path, data: ImageData, device: str = "auto", precision: str = "auto",
                         measurements: Measurements | None = None) -> Calibration:
    """Calibrate the checkpoint file at `path` (see calibrate) and write the calibration into it
    atomically, keeping everything else it holds."""
    payload = checkpoints.read(path)
    calibration = calibrate(payload, data, device, precision, measurements)
    checkpoints.save_atomic({**payload, PAYLOAD_KEY: calibration.to_dict()}, path)
    return calibration
