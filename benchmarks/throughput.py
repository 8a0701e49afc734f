"""Training and inference throughput (images/s) of every model in each precision and memory
layout, and what `auto` picks, measured side by side in one run.

    python benchmarks/throughput.py [--train-batch 256] [--infer-batch 500] [--seconds 1.5] [--rounds 3]

For each model (fastnet at width 0.5 for training, as the `fast` preset trains it, and at width
1.0 for inference, as the shipped model runs): `auto`'s choice is made first with a fresh cache,
exactly as the app makes it; then every setting (fp32 and, where oneDNN has bf16 kernels, bf16;
channels-last and contiguous) is timed in `--rounds` interleaved rounds of `--seconds` each on
random data, and the median is reported. The last column is auto's setting against the fastest
explicit one (1.00 = auto picked the fastest).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from cifarapp import hardware
from cifarapp.hardware import Measurements, Workload, choose, detect, machine_header, measure
from cifarapp.models import MODELS

CPU = torch.device("cpu")


def row(work: Workload, rounds: int, settings: list[tuple[str, bool]]) -> str:
    with tempfile.TemporaryDirectory() as fresh:
        auto = choose(work, CPU, "auto", Measurements(Path(fresh)))
    timings: dict[tuple[str, bool], list[float]] = {s: [] for s in settings}
    for _ in range(rounds):
        for setting in timings:
            timings[setting].append(measure(work, *setting, CPU)[0])
    speed = {s: statistics.median(v) for s, v in timings.items()}
    best_fp32 = max(v for (p, _), v in speed.items() if p == "fp32")
    best_bf16 = max((v for (p, _), v in speed.items() if p == "bf16"), default=None)
    layout = {s: "cl" if s[1] else "nchw" for s in speed}
    cells = " | ".join(f"{speed[s]:,.0f}" for s in speed)
    bf16_ratio = f"{best_bf16 / best_fp32:.2f}" if best_bf16 else "–"
    auto_speed = speed[(auto.precision, auto.channels_last)]
    what = f"{work.model} w{work.width:g}" if work.model == "fastnet" else work.model
    return (f"| {what} | {'train' if work.train else 'infer'} b{work.batch_size} | {cells} | {bf16_ratio} | "
            f"{auto.precision} {layout[(auto.precision, auto.channels_last)]} | "
            f"{auto_speed / max(speed.values()):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-batch", type=int, default=256)
    parser.add_argument("--infer-batch", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=1.5, help="time each setting at least this long per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--precisions", nargs="*", choices=["fp32", "bf16"],
                        help="explicit precisions to time (default: fp32, and bf16 where oneDNN has bf16 kernels; "
                             "name bf16 to time it where oneDNN emulates it)")
    args = parser.parse_args()
    hardware.MIN_PROBE_S = args.seconds
    hardware.MAX_PROBE_STEPS = 10_000
    print(machine_header(), flush=True)
    precisions = args.precisions or (["fp32", "bf16"] if detect(CPU).bf16_kernels else ["fp32"])
    settings = [(p, cl) for p in precisions for cl in (True, False)]
    names = " | ".join(f"{p} {'cl' if cl else 'nchw'}" for p, cl in settings)
    print(f"| model | workload | {names} | best bf16 / best fp32 | auto picks | auto / fastest |")
    print("| --- | --- |" + " ---: |" * (len(settings) + 1) + " --- | ---: |", flush=True)
    for name in args.models:
        for train, batch in ((True, args.train_batch), (False, args.infer_batch)):
            width = (0.5 if train else 1.0) if name == "fastnet" else 1.0
            print(row(Workload(name, width, batch_size=batch, train=train), args.rounds, settings), flush=True)


if __name__ == "__main__":
    main()
