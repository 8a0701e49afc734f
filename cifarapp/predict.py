"""Class probabilities for arbitrary images (loaded and shaped by `images.preprocess`), calibrated by
the model's fitted temperature (see `calibration`), and the sentence that tells a user what they mean."""

from __future__ import annotations

import numpy as np
import torch

from .calibration import scaled_probabilities
from .checkpoints import LoadedModel
from .images import preprocess
from .inference import batched_logits

# Below this calibrated probability the top class is more likely wrong than right, so it is not an answer.
NOT_SURE_BELOW = 0.5
# classes named in a "not sure" verdict
NOT_SURE_ALTERNATIVES = 2


def predict(loaded: LoadedModel, sources: list, *, batch_size: int = 256, tta: str = "none") -> np.ndarray:
    """Probabilities [len(sources), classes] for images given as anything `preprocess` accepts."""
    if not sources:
        return np.zeros((0, len(loaded.classes)), dtype=np.float32)
    pixels = np.stack([preprocess(s, side=loaded.image_size) for s in sources])
    return predict_pixels(loaded, pixels, batch_size=batch_size, tta=tta)


def predict_pixels(loaded: LoadedModel, pixels: np.ndarray, *, batch_size: int = 256,
                   tta: str = "none") -> np.ndarray:
    """Probabilities softmax(logits / temperature) (the model's fitted temperature, 1 when it has
    none) for already preprocessed uint8 images [N, S, S, 3] (S: the model's image size)."""
    images = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2)
    logits = batched_logits(loaded.model, images, loaded.normalization, loaded.compute,
                            batch_size=batch_size, tta=tta)
    return scaled_probabilities(logits, loaded.temperature).numpy()


def top_k(probabilities: np.ndarray, classes, k: int = 3) -> list[tuple[str, float]]:
    """The k most probable (class, probability) pairs of one image, most probable first."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(classes[i], float(probabilities[i])) for i in order]


def is_unsure(probabilities: np.ndarray, threshold: float = NOT_SURE_BELOW) -> bool:
    """Whether the top probability of one image is below `threshold`: its best guess is no answer."""
    return float(np.max(probabilities)) < threshold


def verdict(probabilities: np.ndarray, classes, threshold: float = NOT_SURE_BELOW) -> str:
    """What to tell a user about one image's probabilities: "airplane (93%)" when the top class
    reaches `threshold`, else "not sure: cat 41% or dog 33%"."""
    if not is_unsure(probabilities, threshold):
        name, p = top_k(probabilities, classes, 1)[0]
        return f"{name} ({p:.0%})"
    alternatives = top_k(probabilities, classes, NOT_SURE_ALTERNATIVES)
    return "not sure: " + " or ".join(f"{name} {p:.0%}" for name, p in alternatives)
