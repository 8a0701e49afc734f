"""Training throughput with 1, 2, ... processes (torch.distributed through `train --nproc`), side by
side in one run: on this machine's CPU cores (gloo), or on its GPUs (NCCL, one process each).

    python benchmarks/distributed.py [--data PATH] [--nproc 1 2] [--model fastnet --width 0.5]
                                     [--batch-size 512] [--images 8192] [--epochs 2] [--device auto]

Each process count trains the same run (the same global batch, seed and images) for `--epochs`
epochs of `--images` training images; the throughput is the median of the step reports' images/s
after the first epoch (which holds start-up, the first steps' warm-up and measurements). With
`--device cuda` on a machine with N GPUs, `--nproc 1 2 4 8` measures scaling on 1..N GPUs.
Without --data it trains on the synthetic set (throughput does not depend on the pictures).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cifarapp.hardware import machine_header, resolve_device

ROOT = Path(__file__).resolve().parent.parent


def run(nproc: int, args: argparse.Namespace, runs: Path) -> tuple[float, float]:
    """(median images/s after the first epoch, wall seconds) of one training with `nproc` processes."""
    data = ["--data", args.data] if args.data else ["--data", "synthetic"]
    command = [sys.executable, "-m", "cifarapp", "train", *data, "--model", args.model, "--width", str(args.width),
               "--optimizer", "sgd", "--lr", "0.2", "--momentum", "0.9", "--batch-size", str(args.batch_size),
               "--epochs", str(args.epochs), "--train-size", str(args.images), "--val-size", "500",
               "--device", args.device, "--nproc", str(nproc), "--runs-dir", str(runs)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{nproc} processes failed:\n{done.stderr[-3000:]}")
    (folder,) = [p for p in runs.iterdir() if p.is_dir()]
    with open(folder / "metrics.csv") as fh:
        steps = [row for row in csv.DictReader(fh) if row["kind"] == "step" and int(row["epoch"]) > 1]
    return statistics.median(float(row["images_per_s"]) for row in steps), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a CIFAR-10 .npz or folder (default: the synthetic set)")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model", default="fastnet")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--images", type=int, default=8192, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(machine_header(device))
    units = (f"{torch.cuda.device_count()} GPUs visible" if device.type == "cuda"
             else f"{os.cpu_count()} CPU cores, each process gets cores / processes threads")
    print(f"# {args.model} width {args.width:g}, global batch {args.batch_size}, {args.images:,} images per epoch, "
          f"{args.epochs} epochs; {units}")
    print("| processes | images/s (median after epoch 1) | vs 1 process | wall s (start-up included) |")
    print("| ---: | ---: | ---: | ---: |")
    baseline = None
    for nproc in args.nproc:
        with tempfile.TemporaryDirectory() as runs:
            speed, wall = run(nproc, args, Path(runs))
        baseline = baseline or speed
        print(f"| {nproc} | {speed:,.0f} | {speed / baseline:.2f} | {wall:.1f} |", flush=True)


if __name__ == "__main__":
    main()
