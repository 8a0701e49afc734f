"""Devices, mixed precision and batched forward passes shared by training, evaluation and prediction
(which precision and layout is fastest on this machine is `hardware`'s business)."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .data import Normalization, to_model_input
from .hardware import Compute

# Test-time augmentation: logits averaged over views of each image.
TTA_MODES = {
    "none": "the image as it is",
    "flip": "the image and its mirror image (2 views)",
    "flip_translate": "flip, plus the image shifted by one pixel up-left and down-right, each also "
                      "mirrored (6 views, as airbench does)",
}


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed-precision context, or a no-op for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def batched_logits(model: nn.Module, images: torch.Tensor, normalization: Normalization, compute: Compute,
                   batch_size: int = 500, tta: str = "none", progress=None) -> torch.Tensor:
    """float32 logits [N, classes] on the CPU for uint8 images [N, 3, 32, 32], in eval mode, with
    the device, precision and memory layout of `compute` (the model must already be on that
    device), averaged over the views of test-time augmentation `tta` (one of TTA_MODES).
    `progress(done, total)` is called after each batch.
    """
    if tta not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {tta!r}; choose from {', '.join(TTA_MODES)}")
    was_training = model.training
    model.eval()
    outputs = []
    try:
        for start in range(0, len(images), batch_size):
            x = to_model_input(images[start:start + batch_size].to(compute.device), normalization,
                               compute.memory_format)
            with autocast(compute.device, compute.dtype):
                logits = _tta_logits(model, x, tta)
            outputs.append(logits.cpu())
            if progress is not None:
                progress(min(start + batch_size, len(images)), len(images))
    finally:
        model.train(was_training)
    if not outputs:
        return torch.empty(0, 0)
    return torch.cat(outputs)


def _tta_logits(model: nn.Module, x: torch.Tensor, tta: str) -> torch.Tensor:
    def with_mirror(views: torch.Tensor) -> torch.Tensor:
        return (model(views).float() + model(views.flip(3)).float()) / 2

    if tta == "none":
        return model(x).float()
    logits = with_mirror(x)
    if tta == "flip":
        return logits
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = (with_mirror(padded[:, :, :-2, :-2]) + with_mirror(padded[:, :, 2:, 2:])) / 2
    return (logits + shifted) / 2
