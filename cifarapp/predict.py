"""Class probabilities for arbitrary images (loaded and shaped by `images.preprocess`)."""

from __future__ import annotations

import numpy as np
import torch

from .checkpoints import LoadedModel
from .images import preprocess
from .inference import batched_logits


def predict(loaded: LoadedModel, sources: list, *, batch_size: int = 256, tta: str = "none") -> np.ndarray:
    """Probabilities [len(sources), classes] for images given as anything `preprocess` accepts."""
    if not sources:
        return np.zeros((0, len(loaded.classes)), dtype=np.float32)
    pixels = np.stack([preprocess(s, side=loaded.image_size) for s in sources])
    return predict_pixels(loaded, pixels, batch_size=batch_size, tta=tta)


def predict_pixels(loaded: LoadedModel, pixels: np.ndarray, *, batch_size: int = 256,
                   tta: str = "none") -> np.ndarray:
    """Probabilities for already preprocessed uint8 images [N, S, S, 3] (S: the model's image size)."""
    images = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2)
    logits = batched_logits(loaded.model, images, loaded.normalization, loaded.compute,
                            batch_size=batch_size, tta=tta)
    return logits.softmax(1).numpy()


def top_k(probabilities: np.ndarray, classes, k: int = 3) -> list[tuple[str, float]]:
    """The k most probable (class, probability) pairs of one image, most probable first."""
    order = np.argsort(-probabilities)[:k]
    return [(classes[i], float(probabilities[i])) for i in order]
