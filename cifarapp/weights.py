"""The pretrained weights shipped in `weights/`, each with a model card (JSON) beside it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import checkpoints
from .calibration import Calibration, calibrate_checkpoint
from .data import CIFAR10_CLASSES
from .evaluate import EvalResult, evaluate
from .files import atomic_write_text
from .inference import TTA_MODES

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


@dataclass(frozen=True)
class ShippedModel:
    name: str
    checkpoint: Path
    card: dict

    @property
    def test_accuracy(self) -> float:
        return float(self.card.get("test_accuracy", 0.0))


def shipped_models(folder: Path = WEIGHTS_DIR) -> list[ShippedModel]:
    """Every `<name>.pt` with a `<name>.json` card, best test accuracy first."""
    models = []
    for card_path in sorted(folder.glob("*.json")):
        checkpoint = card_path.with_suffix(".pt")
        if checkpoint.is_file():
            models.append(ShippedModel(card_path.stem, checkpoint, json.loads(card_path.read_text())))
    return sorted(models, key=lambda m: -m.test_accuracy)


def default_checkpoint(folder: Path = WEIGHTS_DIR) -> Path:
    """The shipped checkpoint with the best test accuracy."""
    models = shipped_models(folder)
    if not models:
        raise FileNotFoundError(f"no shipped weights in {folder}; pass a checkpoint or run id instead")
    return models[0].checkpoint


SAMPLE_PATH = Path(__file__).resolve().parent.parent / "assets" / "test_sample.npz"


def load_sample(path: Path = SAMPLE_PATH):
    """The fixed sample of test images shipped in assets/: (uint8 [N, 3, 32, 32], int64 labels [N])."""
    with np.load(path) as f:
        return torch.from_numpy(f["x"]).permute(0, 3, 1, 2), torch.from_numpy(f["y"].astype(np.int64))


def export_shipped(checkpoint: Path, name: str, test_images, test_labels, folder: Path = WEIGHTS_DIR,
                   command: str = "", data_note: str = "") -> dict:
    """Write `<name>.pt` (weights, config, classes, normalisation, data set and metrics; no
    optimizer state) and its model card `<name>.json` with the data set, test-set accuracy (also
    under each test-time augmentation), and for a CIFAR-10 model accuracy on the shipped sample.
    `data_note` says what a reader must know about the test data (ImageData.note)."""
    payload = checkpoints.read(checkpoint)
    slim = {k: v for k, v in payload.items() if k not in checkpoints.TRAINING_STATE}
    loaded = checkpoints.LoadedModel.from_payload(slim)
    test = evaluate(loaded, test_images, test_labels)
    tta = {mode: round(evaluate(loaded, test_images, test_labels, tta=mode).accuracy, 4)
           for mode in TTA_MODES if mode != "none"}
    history = payload.get("metrics", [])
    card = {
        "name": name,
        "model": payload["model"],
        "width": payload.get("width", 1.0),
        "test_accuracy": round(test.accuracy, 4),
        **calibration_card(loaded, test),
        "test_accuracy_tta": tta,
        "per_class_accuracy": dict(zip(test.classes, [round(float(a), 4) for a in test.per_class_accuracy])),
        "dataset": payload.get("dataset", {"name": "CIFAR-10", "classes": list(loaded.classes)}),
        "epochs": payload.get("epochs_done"),
        "training_time_s": round(history[-1]["elapsed_s"], 1) if history else None,
        "config": payload["config"],
        "command": command,
        "run_id": payload.get("run_id"),
        "data_note": data_note,
        "date": time.strftime("%Y-%m-%d"),
    }
    if tuple(loaded.classes) == CIFAR10_CLASSES:
        sample_images, sample_labels = load_sample()
        card["sample_accuracy"] = round(evaluate(loaded, sample_images, sample_labels).accuracy, 4)
        card["sample"] = f"assets/{SAMPLE_PATH.name} ({len(sample_labels)} test images)"
    folder.mkdir(parents=True, exist_ok=True)
    checkpoints.save_atomic(slim, folder / f"{name}.pt")
    atomic_write_text(folder / f"{name}.json", json.dumps(card, indent=2) + "\n")
    return card


def calibration_card(loaded: checkpoints.LoadedModel, test: EvalResult) -> dict:
    """What a model card says about a model's confidence: its temperature, where it was fitted,
    and the test set's expected calibration error before and after it."""
    calibration = loaded.calibration
    return {"calibration": calibration.to_dict() if calibration is not None else None,
            "test_ece": {"raw": round(test.raw_ece, 4), "calibrated": round(test.calibrated_ece, 4)}}


def calibrate_shipped(name: str, data, folder: Path = WEIGHTS_DIR) -> Calibration:
    """Fit the shipped model `name`'s temperature on its validation split of `data` (the images
    its config held out of training) and record it in its checkpoint and in its card, with the
    test set's ECE before and after."""
    model = next((m for m in shipped_models(folder) if m.name == name), None)
    if model is None:
        raise checkpoints.CheckpointError(f"no shipped model named {name!r}")
    fitted = calibrate_checkpoint(model.checkpoint, data)
    loaded = checkpoints.load_model(model.checkpoint)
    test = evaluate(loaded, data.test_images, data.test_labels)
    card = {**model.card, **calibration_card(loaded, test)}
    atomic_write_text(folder / f"{name}.json", json.dumps(card, indent=2) + "\n")
    return fitted
