"""The pretrained weights shipped in `weights/`, each with a model card (JSON) beside it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

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
