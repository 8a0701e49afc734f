"""Time to test accuracy of a training recipe on the full CIFAR-10 training set, over seeds.

    python benchmarks/time_to_accuracy.py --preset fast --data PATH [--seeds 3] [--tta flip_translate]
        [--versus-report] [any `python -m cifarapp train` option, e.g. --epochs 4 --width 0.75]

Trains on all 50,000 training images (validation size 0 unless given) and after each epoch
measures test accuracy; that evaluation is excluded from the timings, data loading is included.
Prints one line per epoch, then per target (78.5%, 85%, 90%, 92%) the time at which each seed
first reached it, as mean ± std over the seeds that did. With --versus-report it also times the
report's recipe (`baseline_report_recipe.py`) in the same process and prints how many times
faster the recipe reaches 78.5% than the report's 14 epochs. Runs are recorded in --runs-dir
like any other, so `python -m cifarapp export RUN_ID --name NAME` can ship one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

from baseline_report_recipe import REPORT_EPOCHS, report_recipe_step_seconds

from cifarapp.__main__ import build_parser, config_from_args
from cifarapp.config import TrainConfig
from cifarapp.data import Normalization, load_cifar10
from cifarapp.hardware import machine_header
from cifarapp.inference import TTA_MODES, batched_logits
from cifarapp.runs import RunDir, execute_run, new_run_id
from cifarapp.train import training_compute

TARGETS = (0.785, 0.85, 0.90, 0.92)


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def time_one_seed(config: TrainConfig, data, load_s: float, tta: list[str], runs_dir: str) -> list[dict]:
    """Train `config`; per epoch, seconds since the start (data loading included, test
    evaluation excluded) and test accuracy (also under each TTA mode)."""
    compute = training_compute(config, len(data.classes))
    rows: list[dict] = []
    t0 = time.perf_counter() - load_s
    eval_s = 0.0

    def measure(epoch: int, model) -> None:
        nonlocal eval_s
        t = time.perf_counter()
        row = {"seed": config.seed, "epoch": epoch, "train_s": round(t - t0 - eval_s, 1)}
        for mode in ["none", *tta]:
            logits = batched_logits(model, data.test_images, Normalization(), compute, batch_size=1000, tta=mode)
            key = "test_acc" if mode == "none" else f"test_acc_{mode}"
            row[key] = round((logits.argmax(1) == data.test_labels).float().mean().item(), 4)
        eval_s += time.perf_counter() - t
        rows.append(row)
        print(json.dumps(row), flush=True)

    run_dir = RunDir(runs_dir, new_run_id(config.model))
    run_dir.create(config)
    print(f"run {run_dir.run_id} (seed {config.seed})", flush=True)
    execute_run(run_dir, config, data, on_epoch_end=measure)
    return rows


def main() -> None:
    bench = argparse.ArgumentParser(add_help=False)
    bench.add_argument("--seeds", type=int, default=1, help="train with seeds 0..N-1")
    bench.add_argument("--tta", choices=[m for m in TTA_MODES if m != "none"], nargs="*", default=[],
                       help="also report test accuracy with these test-time augmentations")
    bench.add_argument("--versus-report", action="store_true",
                       help="also time the report's recipe in this process and print the speed-up")
    bench.add_argument("--report-steps", type=int, default=60, help="steps of the report's recipe to time")
    bench.add_argument("--json", help="write the per-epoch results here")
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        bench.print_help()
        return
    args, rest = bench.parse_known_args()
    train_args = build_parser().parse_args(["train", *rest])
    if train_args.val_size is None:
        train_args.val_size = "0"
    config = config_from_args(train_args).validate()
    print(machine_header(), flush=True)
    t = time.perf_counter()
    data = load_cifar10(train_args.data, train_args.data_dir, download=not train_args.no_download)
    load_s = time.perf_counter() - t
    print(f"config: {json.dumps(config.to_dict())}\ndata load: {load_s:.1f}s", flush=True)
    per_seed = [time_one_seed(dataclasses.replace(config, seed=seed), data, load_s, args.tta, train_args.runs_dir)
                for seed in range(args.seeds)]

    finals = [rows[-1] for rows in per_seed]
    print(f"{args.seeds} run(s); final test accuracy "
          f"{mean_std([100 * r['test_acc'] for r in finals])}%; "
          f"training time {mean_std([r['train_s'] for r in finals])} s")
    for mode in args.tta:
        print(f"final test accuracy with {mode} TTA: {mean_std([100 * r[f'test_acc_{mode}'] for r in finals])}%")
    hits = {}
    for target in TARGETS:
        times = [next((r["train_s"] for r in rows if r["test_acc"] >= target), None) for rows in per_seed]
        reached = [s for s in times if s is not None]
        hits[target] = reached
        print(f"target {target:.1%}: " + (f"reached by {len(reached)}/{args.seeds} run(s) after {mean_std(reached)} s"
                                          if reached else "not reached"))
    if args.versus_report:
        step_s, epoch_s = report_recipe_step_seconds(data, args.report_steps)
        report_s = epoch_s * REPORT_EPOCHS
        print(f"report recipe: {step_s * 1000:.0f} ms/step, {report_s / 60:.1f} min for its {REPORT_EPOCHS} epochs "
              f"to 78%")
        if hits[TARGETS[0]]:
            ours = statistics.mean(hits[TARGETS[0]])
            print(f"to 78.5%: {ours:.1f} s against {report_s:.0f} s: "
                  f"{report_s / ours:.1f}x faster than the report's recipe")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": config.to_dict(), "load_s": load_s, "runs": per_seed},
                                              indent=2))


if __name__ == "__main__":
    main()
