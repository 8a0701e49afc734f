"""Expected against actual duration on this machine: the Train tab's time budgets and presets.

    python benchmarks/time_budget.py [--budgets 120 300 900] [--presets fast] [--data PATH]

For each budget, the fast recipe that the app plans for it (from measured throughput), and for
each preset as it is: the expected duration, the actual duration of the run (from Start to the
end: setup, training, validation and checkpoints, with the data already in memory) and the test
accuracy. A budget is met when the actual duration lands within 20% of it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from cifarapp import checkpoints
from cifarapp.data import load_cifar10
from cifarapp.estimate import expected_duration, format_duration, plan_for_budget
from cifarapp.evaluate import evaluate
from cifarapp.hardware import Measurements, machine_header
from cifarapp.presets import BUDGET_BASE, PRESETS
from cifarapp.runs import RunDir, execute_run, new_run_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=float, nargs="*", default=[120, 300])
    parser.add_argument("--presets", nargs="*", default=[], choices=sorted(PRESETS))
    parser.add_argument("--data", required=True, help="CIFAR-10 .npz or torchvision folder")
    parser.add_argument("--runs-dir", default=None, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()
    print(machine_header(), flush=True)
    data = load_cifar10(args.data)
    measurements = Measurements()
    runs_dir = Path(args.runs_dir or tempfile.mkdtemp(prefix="time-budget-"))
    jobs = []
    for budget in args.budgets:
        plan = plan_for_budget(budget, PRESETS[BUDGET_BASE].config, len(data.train_images), len(data.classes),
                               measurements)
        jobs.append((f"budget {format_duration(budget)}", budget, plan.config))
        print(f"budget {format_duration(budget)}: {plan.describe()}", flush=True)
    jobs += [(f"preset {name}", None, PRESETS[name].config) for name in args.presets]

    print("| run | recipe | expected | actual | actual / expected | actual / budget | test acc |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for label, budget, config in jobs:
        estimate = expected_duration(config, len(data.train_images), len(data.classes), measurements)
        run_dir = RunDir(runs_dir, new_run_id(config.model))
        run_dir.create(config)
        start = time.perf_counter()
        execute_run(run_dir, config, data, measurements=measurements)
        actual = time.perf_counter() - start
        loaded = checkpoints.load_model(run_dir.checkpoint, measurements=measurements)
        accuracy = evaluate(loaded, data.test_images, data.test_labels).accuracy
        recipe = (f"{config.model} w{config.width:g}, {config.epochs} ep"
                  f"{f' ({config.low_res_epochs} at {config.low_res_size}px)' if config.low_res_epochs else ''}"
                  f"{f', {config.train_size:,} images' if config.train_size else ''}, {estimate.compute.precision}")
        versus_budget = f"{actual / budget:.2f}" if budget else "–"
        print(f"| {label} | {recipe} | {estimate.seconds:.0f} s | {actual:.0f} s | {actual / estimate.seconds:.2f} | "
              f"{versus_budget} | {accuracy:.2%} |", flush=True)


if __name__ == "__main__":
    main()
