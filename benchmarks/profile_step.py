"""Where a training step's time goes: torch.profiler over fastnet steps as the fast recipe runs them.

    python benchmarks/profile_step.py [--width 0.5] [--batch-size 512] [--steps 10] [--precision bf16]

Prints the operators that take the most self CPU time (forward and backward), grouped by name,
and the share of the step each takes. Random data: the kernels do not care what the pixels are.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from torch.profiler import ProfilerActivity, profile

from cifarapp.data import Normalization, augment_batch
from cifarapp.hardware import machine_header
from cifarapp.models import build_model
from cifarapp.presets import PRESETS
from cifarapp.train import make_optimizer, train_step, training_compute


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, default=PRESETS["fast"].config.width)
    parser.add_argument("--batch-size", type=int, default=PRESETS["fast"].config.batch_size)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--rows", type=int, default=20)
    args = parser.parse_args()

    print(machine_header(), flush=True)
    config = dataclasses.replace(PRESETS["fast"].config, width=args.width, batch_size=args.batch_size,
                                 precision=args.precision)
    compute = training_compute(config)
    device, dtype = compute.device, compute.dtype
    model = build_model("fastnet", width=args.width).to(device, memory_format=compute.memory_format)
    optimizer = make_optimizer(config, model)
    gen = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(0, 256, (args.batch_size, 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (args.batch_size,), device=device)
    norm = Normalization()
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def step() -> None:
        x = augment_batch(images.float().div(255), config.augment, gen)
        x = norm.apply(x).contiguous(memory_format=compute.memory_format)
        train_step(model, optimizer, scaler, x, labels, config.label_smoothing, device, dtype)

    for _ in range(3):  # warm up kernels and allocator
        step()
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    wall = time.perf_counter() - t
    print(f"fastnet width {args.width}, batch {args.batch_size}, {compute.describe()} "
          f"({torch.get_num_threads()} threads): {wall / args.steps * 1000:.0f} ms/step under the profiler, "
          f"{args.batch_size * args.steps / wall:.0f} img/s")
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(f"{'operator':<48} {'self CPU ms/step':>16} {'share':>7}")
    for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:args.rows]:
        print(f"{e.key[:48]:<48} {e.self_cpu_time_total / 1000 / args.steps:>16.1f} "
              f"{e.self_cpu_time_total / total:>7.1%}")


if __name__ == "__main__":
    main()
