"""The learning-rate range test's suggestion against the presets' tuned learning rates, one preset
after another in one run.

    python benchmarks/lr_finder.py --data PATH [--presets report_lenet report_sgd fast fast_medium]
                                   [--steps 100] [--plots DIR]

For each preset, `lr-find` runs on its full recipe (model, optimizer, batch, augmentation, lr
multipliers) from its initial weights: 100 steps with the lr growing from 1e-7 to 10. The table
gives the tuned lr, the suggestion (steepest fall of the smoothed loss), the lr of the lowest
smoothed loss, and how far the suggestion is from the tuned lr in decades (log10 ratio).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from cifarapp.data import load_cifar10
from cifarapp.figures import lr_finder_figure
from cifarapp.hardware import machine_header
from cifarapp.lr_finder import find_lr
from cifarapp.presets import PRESETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a CIFAR-10 .npz or folder (default: the download cache)")
    parser.add_argument("--presets", nargs="+", default=["report_lenet", "report_sgd", "report_bn", "fast",
                                                         "fast_medium"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--plots", help="also save each preset's plot here (PNG)")
    args = parser.parse_args()
    data = load_cifar10(args.data)
    print(machine_header())
    if data.note:
        print(f"# {data.note}")
    print(f"# range test: {args.steps} steps from 1e-7 to 10, one run per preset")
    print("| preset | optimizer | tuned lr | suggested lr | lowest-loss lr | suggested / tuned (decades) | test s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name in args.presets:
        config = PRESETS[name].config
        result = find_lr(config, data, steps=args.steps)
        distance = (f"{math.log10(result.suggestion / config.lr):+.2f}" if result.suggestion is not None else "–")
        suggestion = f"{result.suggestion:.3g}" if result.suggestion is not None else "none"
        print(f"| {name} | {config.optimizer} | {config.lr:g} | {suggestion} | {result.minimum_lr:.3g} | "
              f"{distance} | {result.seconds:.0f} |", flush=True)
        if args.plots:
            Path(args.plots).mkdir(parents=True, exist_ok=True)
            lr_finder_figure(result).savefig(Path(args.plots) / f"lr_finder_{name}.png")


if __name__ == "__main__":
    main()
