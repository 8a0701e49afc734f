"""On a CUDA GPU: the fast recipe against airbench94 itself, same data, same GPU, one run.

    pip install airbench==0.1.8   # MIT licence; CUDA only
    python benchmarks/gpu_vs_airbench.py --data PATH [--runs 3]

airbench reads `cifar10/train.pt` and `cifar10/test.pt` from the working directory (and would
download CIFAR-10 without them), so this script first writes them from the project's npz. It
warms up both (kernel selection, compilation), then alternates timed runs: airbench94 with its
defaults (9.9 epochs, flip + translate TTA), and ours (`fastnet` width 1.0, the fast recipe at
batch 1024, per-image hyperparameters as in `cifarapp/presets.py`), eager and with
`compile=True`. Times exclude evaluation on both sides.
It prints each run and the ratio of our time to airbench's time to reach airbench's mean accuracy
(ours: the first epoch whose flip + translate TTA accuracy reaches it). Never run in tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from cifarapp.config import TrainConfig
from cifarapp.data import Normalization, load_cifar10
from cifarapp.hardware import machine_header
from cifarapp.inference import batched_logits
from cifarapp.presets import PRESETS
from cifarapp.train import fit, training_compute

# the fast_long recipe at airbench94's width, batch and epochs (lr per image unchanged)
OURS = TrainConfig.from_dict({**PRESETS["fast_long"].config.to_dict(), "width": 1.0, "lr": 1.5, "batch_size": 1024,
                              "epochs": 10, "warmup_epochs": 2.0, "device": "cuda", "val_size": 0})


def write_airbench_files(data, folder: Path) -> None:
    """airbench's CifarLoader format: uint8 NHWC images, int64 labels, class names."""
    folder.mkdir(exist_ok=True)
    for split, images, labels in (("train", data.train_images, data.train_labels),
                                  ("test", data.test_images, data.test_labels)):
        torch.save({"images": images.permute(0, 2, 3, 1).contiguous(), "labels": labels.long(),
                    "classes": list(data.classes)}, folder / f"{split}.pt")


def time_airbench() -> tuple[float, float]:
    """(training seconds, flip + translate TTA test accuracy) of one airbench94 run."""
    import airbench  # optional, CUDA-only: imported only where a GPU run needs it

    loader = airbench.CifarLoader("cifar10", train=True, batch_size=1024, aug={"flip": True, "translate": 2},
                                  altflip=True)
    torch.cuda.synchronize()
    t = time.perf_counter()
    model = airbench.train94(loader, verbose=False)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    test_loader = airbench.CifarLoader("cifar10", train=False, batch_size=2000)
    return seconds, float(airbench.evaluate(model, test_loader, tta_level=2))


def time_ours(config: TrainConfig, data) -> list[dict]:
    """Per epoch: training seconds so far and flip + translate TTA test accuracy."""
    compute = training_compute(config)
    rows: list[dict] = []

    def measure(epoch: int, model) -> None:  # fit excludes this callback's time from elapsed
        torch.cuda.synchronize()
        logits = batched_logits(model, data.test_images, Normalization(), compute, batch_size=2000,
                                tta="flip_translate")
        rows.append({"epoch": epoch, "acc": (logits.argmax(1) == data.test_labels).float().mean().item()})

    result = fit(config, data, on_epoch_end=measure)
    for row, epoch in zip(rows, result.history):
        row["train_s"] = epoch["elapsed_s"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="CIFAR-10 .npz or torchvision folder")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU (airbench runs only on CUDA)")

    data = load_cifar10(args.data)
    write_airbench_files(data, Path("cifar10"))
    print(machine_header(torch.device("cuda")), flush=True)
    import airbench

    airbench.warmup94(verbose=False)
    variants = {"eager": OURS, "compiled": dataclasses.replace(OURS, compile=True)}
    for name, config in list(variants.items()):
        try:  # warm-up: kernel selection, allocator, and for the compiled variant the compilation
            fit(dataclasses.replace(config, epochs=2, warmup_epochs=0.4, stem_bias_epochs=1), data)
        except Exception as exc:  # a failed compile must not cost the eager comparison
            print(f"ours {name}: warm-up failed, left out: {exc!r}", flush=True)
            del variants[name]
    theirs: list[tuple[float, float]] = []
    ours: dict[str, list[list[dict]]] = {name: [] for name in variants}
    for run in range(args.runs):
        theirs.append(time_airbench())
        print(f"airbench94 run {run}: {theirs[-1][0]:.2f} s, TTA accuracy {theirs[-1][1]:.4f}", flush=True)
        for name, config in variants.items():
            ours[name].append(time_ours(config, data))
            print(f"ours {name} run {run}: " + ", ".join(f"ep{r['epoch']} {r['train_s']:.2f}s {r['acc']:.4f}"
                                                        for r in ours[name][-1]), flush=True)

    target = statistics.mean(acc for _, acc in theirs)
    their_time = statistics.mean(s for s, _ in theirs)
    print(f"airbench94: {their_time:.2f} s to {target:.4f} (mean of {args.runs})")
    for name, runs in ours.items():
        hits = [next((r["train_s"] for r in rows if r["acc"] >= target), None) for rows in runs]
        reached = [h for h in hits if h is not None]
        if reached:
            our_time = statistics.mean(reached)
            print(f"ours {name}: {our_time:.2f} s to the same accuracy in {len(reached)}/{args.runs} runs; "
                  f"ratio ours/airbench = {our_time / their_time:.2f}x")
        else:
            finals = [rows[-1]["acc"] for rows in runs]
            print(f"ours {name} never reached {target:.4f}; final TTA accuracies {np.round(finals, 4).tolist()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"airbench94": theirs, "ours": ours, "target": target}, indent=2))


if __name__ == "__main__":
    main()
