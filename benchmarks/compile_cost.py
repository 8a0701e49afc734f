"""Does torch.compile pay for the fast recipe here? Compile time and training throughput, eager vs compiled.

    python benchmarks/compile_cost.py [--width 0.5] [--batch-size 512] [--steps 20]

Runs eager, compiled, then eager again (the two eager runs show the machine's noise) on random
data in the precision the fast recipe uses. "first 2 steps" includes compilation.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from cifarapp.hardware import machine_header
from cifarapp.models import build_model
from cifarapp.presets import PRESETS
from cifarapp.train import make_optimizer, train_step, training_compute


def measure(compiled: bool, width: float, batch_size: int, steps: int) -> tuple[float, float]:
    """(seconds for the first two steps, images/s over the next `steps`)."""
    config = dataclasses.replace(PRESETS["fast"].config, width=width, batch_size=batch_size)
    compute = training_compute(config)
    device, dtype = compute.device, compute.dtype
    torch.manual_seed(0)
    model = build_model("fastnet", width=width).to(device, memory_format=compute.memory_format)
    optimizer = make_optimizer(config, model)
    forward = torch.compile(model) if compiled else model
    x = torch.randn(batch_size, 3, 32, 32, device=device).contiguous(memory_format=compute.memory_format)
    y = torch.randint(0, 10, (batch_size,), device=device)

    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def step() -> None:
        train_step(forward, optimizer, scaler, x, y, config.label_smoothing, device, dtype)

    t = time.perf_counter()
    step()
    step()
    first = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return first, batch_size * steps / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    print(machine_header(), flush=True)
    results = {}
    for label, compiled in (("eager", False), ("compiled", True), ("eager again", False)):
        first, rate = measure(compiled, args.width, args.batch_size, args.steps)
        results[label] = rate
        print(f"{label:<12} first 2 steps {first:6.1f} s, then {rate:7.0f} img/s", flush=True)
    eager = (results["eager"] + results["eager again"]) / 2
    print(f"compiled / eager throughput: {results['compiled'] / eager:.2f}x")


if __name__ == "__main__":
    main()
