"""The report's training recipe as the speed baseline, measured on this machine.

    python benchmarks/baseline_report_recipe.py [--steps 100] [--fast-seconds S]

The report trained the 6-conv net with Adam 0.001, batch 128, feeding images one at a time through
torchvision transforms (ToTensor + Normalize) in a DataLoader, in fp32. This times `--steps`
training steps of exactly that pipeline on the real data (after a few warm-up steps) and
extrapolates to one epoch of 45,000 images and to the report's 14 epochs. With `--fast-seconds`
(the fast recipe's measured time to 78.5% from time_to_accuracy.py) it prints the speed-up.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision import transforms  # noqa: E402

from cifarapp.data import CIFAR10_MEAN, CIFAR10_STD  # noqa: E402
from cifarapp.models import build_model  # noqa: E402

REPORT_EPOCHS = 14


class PerImageCifar(Dataset):
    """CIFAR-10 as torchvision serves it: a PIL image per item, transformed one at a time."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="../shared/data/cifar10.npz")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--fast-seconds", type=float, help="fast recipe's time to 78.5%%, for the ratio")
    args = parser.parse_args()
    with np.load(args.data) as f:
        images, labels = f["x_train"][:45000], f["y_train"][:45000]
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    loader = DataLoader(PerImageCifar(images, labels, transform), batch_size=128, shuffle=True,
                        num_workers=args.workers)
    torch.manual_seed(0)
    model = build_model("cnn6")
    opt = torch.optim.Adam(model.parameters(), lr=0.001)
    warmup = 5
    for i, (x, y) in enumerate(loader):
        if i == warmup:
            t = time.perf_counter()
        if i == warmup + args.steps:
            break
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    per_step = (time.perf_counter() - t) / args.steps
    epoch_s = per_step * len(loader)
    total = epoch_s * REPORT_EPOCHS
    print(f"report recipe (cnn6, Adam, fp32, per-image transforms, DataLoader with {args.workers} workers): "
          f"{per_step * 1000:.0f} ms/step, {epoch_s:.0f} s per 45,000-image epoch "
          f"(extrapolated from {args.steps} steps), {total / 60:.1f} min for the report's {REPORT_EPOCHS} epochs")
    if args.fast_seconds:
        print(f"fast recipe reaches 78.5% in {args.fast_seconds:.0f} s: {total / args.fast_seconds:.1f}x faster "
              f"than the report recipe's {REPORT_EPOCHS} epochs")


if __name__ == "__main__":
    main()
