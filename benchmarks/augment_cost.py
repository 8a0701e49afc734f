"""What share of a fastnet training step the on-device batch augmentation costs.

    python benchmarks/augment_cost.py [--batch 512] [--width 0.5]

Times (a) augmenting a uint8 batch exactly as the training loop does (to float, augment,
normalise) and (b) a full bf16 training step of fastnet on that batch, for crop+flip (the fast
recipe) and for all five augmentations.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from cifarapp.data import AUGMENTATIONS, Normalization, augment_batch
from cifarapp.models import build_model


def timed(fn, repeats: int = 10) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--width", type=float, default=0.5)
    args = parser.parse_args()
    torch.manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (args.batch,))
    norm = Normalization()
    gen = torch.Generator().manual_seed(0)
    model = build_model("fastnet", width=args.width).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9, nesterov=True)

    def step() -> None:
        x = norm.apply(images.float().div(255)).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step_s = timed(step)
    print(f"fastnet width {args.width}, batch {args.batch}: training step {step_s * 1000:.1f} ms")
    for names in (("crop", "flip"), tuple(AUGMENTATIONS)):
        aug_s = timed(lambda names=names: norm.apply(augment_batch(images.float().div(255), names, gen)))
        print(f"augment {'+'.join(names)}: {aug_s * 1000:.1f} ms = {aug_s / (step_s + aug_s):.1%} of an "
              f"augmented step")


if __name__ == "__main__":
    main()
