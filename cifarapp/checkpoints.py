"""Checkpoints: written atomically, read without ever executing code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, saved with
`torch.save` and read back with `torch.load(weights_only=True)`, which refuses any pickle that
would import or call something. It carries everything inference needs: architecture name and
arguments, class names, normalisation, and the metrics of the run that made it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .data import Normalization
from .files import atomic_write
from .hardware import Compute, Measurements, Workload, choose, resolve_device
from .models import build_model

if TYPE_CHECKING:
    from .calibration import Calibration

FORMAT = "cifarapp-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A file is not a usable cifarapp checkpoint."""


def save_atomic(payload: dict, path: str | Path) -> None:
    """Write `payload` to `path` atomically (see files.atomic_write): a crash mid-write leaves
    either the old file or the new one, never a torn one."""
    atomic_write(path, lambda fh: torch.save(payload, fh))


def make_payload(model: nn.Module, *, model_name: str, width: float, classes, normalization: Normalization,
                 config: dict, metrics: list[dict], dataset: dict | None = None, extra: dict | None = None) -> dict:
    """The dict stored in a checkpoint file; `dataset` is the training data's `ImageData.summary()`."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": model_name,
        "width": float(width),
        "classes": list(classes),
        "normalization": normalization.to_dict(),
        "config": config,
        "metrics": metrics,
        **({"dataset": dataset} if dataset is not None else {}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **(extra or {}),
    }


def read(path: str | Path) -> dict:
    """Read a checkpoint dict safely (weights_only) and check that it is ours."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler raises many types for hostile or broken files
        raise CheckpointError(f"{path.name} is not a loadable checkpoint (only plain weights files "
                              f"are accepted): {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path.name} is not a cifarapp checkpoint")
    return payload


DEFAULT_IMAGE_SIZE = 32  # checkpoints without a data set record were trained on CIFAR-10
# what a checkpoint holds only to continue training (inference, model cards and exports leave it out)
TRAINING_STATE = ("optimizer", "scaler", "lookahead", "position", "compute")

# inference speed is measured at Evaluate's batch size (Predict sends a few images at a time)
INFERENCE_PROBE_BATCH = 500


@dataclass
class LoadedModel:
    """A model ready for inference with what it needs to preprocess input. It lives on
    `compute.device` in `compute`'s memory layout and is never moved: Evaluate and Predict share it."""

    model: nn.Module
    model_name: str
    classes: tuple[str, ...]
    normalization: Normalization
    meta: dict  # config, metrics and any other stored fields except the weights
    compute: Compute

    @property
    def image_size(self) -> int:
        """The side of the square images the model was trained on."""
        return int(self.meta.get("dataset", {}).get("image_size", DEFAULT_IMAGE_SIZE))

    @property
    def dataset_name(self) -> str:
        return str(self.meta.get("dataset", {}).get("name", "CIFAR-10"))

    @functools.cached_property
    def calibration(self) -> Calibration | None:
        """The temperature fitted on held-out images and what it did (see cifarapp.calibration), if
        any; read once (`from_payload` reads it, so a broken record is refused at load)."""
        from .calibration import PAYLOAD_KEY, Calibration  # that module builds on this one

        stored = self.meta.get(PAYLOAD_KEY)
        return Calibration.from_dict(stored) if stored else None

    @property
    def temperature(self) -> float:
        """What the logits are divided by before the softmax: the fitted temperature, else 1."""
        calibration = self.calibration
        return calibration.temperature if calibration is not None else 1.0

    @classmethod
    def from_payload(cls, payload: dict, device: str = "auto", precision: str = "auto",
                     measurements: Measurements | None = None, compute: Compute | None = None) -> LoadedModel:
        """Build the model of a checkpoint dict on `device` in the precision and layout that run
        it fastest there (see `hardware.choose`), or in `compute` when it is given."""
        model = build_network(payload)
        if compute is None:
            work = Workload(payload["model"], float(payload.get("width", 1.0)), len(payload["classes"]),
                            INFERENCE_PROBE_BATCH, train=False)
            compute = choose(work, resolve_device(device), precision, measurements)
        model.eval().to(compute.device, memory_format=compute.memory_format)
        meta = {k: v for k, v in payload.items() if k != "state_dict" and k not in TRAINING_STATE}
        loaded = cls(model, payload["model"], tuple(payload["classes"]),
                     Normalization.from_dict(payload["normalization"]), meta, compute)
        _ = loaded.calibration  # read now: a broken calibration record is refused at load (CheckpointError)
        return loaded


def build_network(payload: dict) -> nn.Module:
    """The network of a checkpoint dict with its weights (on the CPU, in fp32)."""
    try:
        model = build_model(payload["model"], num_classes=len(payload["classes"]),
                            width=float(payload.get("width", 1.0)))
        model.load_state_dict(payload["state_dict"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint does not match its architecture: {exc}") from exc
    return model


def load_model(path: str | Path, device: str = "auto", precision: str = "auto",
               measurements: Measurements | None = None) -> LoadedModel:
    """Load a checkpoint file as an eval-mode model for inference on `device` (see from_payload)."""
    return LoadedModel.from_payload(read(path), device, precision, measurements)
