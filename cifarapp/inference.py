"""Devices, numeric precision and batched forward passes shared by training, evaluation and prediction."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .data import Normalization, to_model_input

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Test-time augmentation: logits averaged over views of each image.
TTA_MODES = {
    "none": "the image as it is",
    "flip": "the image and its mirror image (2 views)",
    "flip_translate": "flip, plus the image shifted by one pixel up-left and down-right, each also "
                      "mirrored (6 views, as airbench does)",
}


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then the CPU. Asking for an absent device is an error."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name == "cuda" and not cuda:
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is visible; use 'auto' or 'cpu'")
    if name == "mps" and not mps:
        raise ValueError("device 'mps' was asked for but Apple MPS is not available; use 'auto' or 'cpu'")
    if name not in DEVICES:
        raise ValueError(f"unknown device {name!r}; choose from {', '.join(DEVICES)}")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `name` on `device`, or None for plain fp32.

    'auto' means bf16 on the CPU and on GPUs that support it (it needs no loss scaling), fp16
    on other GPUs.
    """
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    if name == "fp16":
        return torch.float16
    if name != "auto":
        raise ValueError(f"unknown precision {name!r}; choose from {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed-precision context, or a no-op for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def batched_logits(model: nn.Module, images: torch.Tensor, normalization: Normalization,
                   device: torch.device, dtype: torch.dtype | None = None, batch_size: int = 500,
                   tta: str = "none", progress=None) -> torch.Tensor:
    """float32 logits [N, classes] on the CPU for uint8 images [N, 3, 32, 32], in eval mode,
    averaged over the views of test-time augmentation `tta` (one of TTA_MODES).
    `progress(done, total)` is called after each batch.
    """
    if tta not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {tta!r}; choose from {', '.join(TTA_MODES)}")
    was_training = model.training
    model.eval()
    outputs = []
    try:
        for start in range(0, len(images), batch_size):
            x = to_model_input(images[start:start + batch_size].to(device), normalization)
            with autocast(device, dtype):
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
