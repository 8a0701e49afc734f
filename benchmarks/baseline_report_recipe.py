"""The report's training recipe as the speed baseline, measured on this machine.

    python benchmarks/baseline_report_recipe.py --data PATH [--steps 100]

The report trained the 6-conv net with Adam 0.001, batch 128, feeding images one at a time through
torchvision transforms (ToTensor + Normalize) in a DataLoader, in fp32. This times `--steps`
training steps of exactly that pipeline on the real data (after a few warm-up steps) and
extrapolates to one epoch of 45,000 images and to the report's 14 epochs (which reached 78%).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from cifarapp.data import CIFAR10_MEAN, CIFAR10_STD, load_cifar10
from cifarapp.hardware import machine_header
from cifarapp.models import build_model

REPORT_EPOCHS = 14


class PerImageCifar(Dataset):
    """CIFAR-10 as torchvision serves it: a PIL image per item, transformed one at a time."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def report_recipe_step_seconds(data, steps: int = 100, workers: int = 2) -> tuple[float, float]:
    """(seconds per step, seconds per 45,000-image epoch) of the report's pipeline on `data`'s
    training images, timed over `steps` steps after 5 warm-up steps."""
    images = data.train_images[:45000].permute(0, 2, 3, 1).numpy()
    labels = data.train_labels[:45000].numpy()
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    loader = DataLoader(PerImageCifar(images, labels, transform), batch_size=128, shuffle=True, num_workers=workers)
    torch.manual_seed(0)
    model = build_model("cnn6")
    opt = torch.optim.Adam(model.parameters(), lr=0.001)
    warmup = 5
    for i, (x, y) in enumerate(loader):
        if i == warmup:
            t = time.perf_counter()
        if i == warmup + steps:
            break
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    per_step = (time.perf_counter() - t) / steps
    return per_step, per_step * len(loader)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="CIFAR-10 .npz or torchvision folder")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(machine_header(), flush=True)
    per_step, epoch_s = report_recipe_step_seconds(load_cifar10(args.data), args.steps, args.workers)
    print(f"report recipe (cnn6, Adam, fp32, per-image transforms, DataLoader with {args.workers} workers): "
          f"{per_step * 1000:.0f} ms/step, {epoch_s:.0f} s per 45,000-image epoch "
          f"(extrapolated from {args.steps} steps), {epoch_s * REPORT_EPOCHS / 60:.1f} min for the report's "
          f"{REPORT_EPOCHS} epochs; `time_to_accuracy.py --versus-report` compares a recipe in the same process")


if __name__ == "__main__":
    main()
