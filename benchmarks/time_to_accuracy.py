"""Time-to-accuracy of a training recipe on the full CIFAR-10 training set.

    python benchmarks/time_to_accuracy.py --preset fast [--epochs N --width W ...] [--data PATH]

Trains on all 50,000 training images (no validation split) and, after each epoch, measures test
accuracy (that evaluation is excluded from the timings; data loading is included). Prints one line
per epoch and the time at which each target (78.5%, 85%, 90%, 92%) was first reached. The run is
recorded in runs/ like any other, so `python -m cifarapp export RUN_ID --name NAME` can ship it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from cifarapp.data import Normalization, load_cifar10  # noqa: E402
from cifarapp.inference import TTA_MODES, batched_logits, resolve_device, resolve_precision  # noqa: E402
from cifarapp.presets import PRESETS  # noqa: E402
from cifarapp.runs import RunDir, execute_run, new_run_id  # noqa: E402
from cifarapp.train import TrainConfig  # noqa: E402

TARGETS = (0.785, 0.85, 0.90, 0.92)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--data", default="../shared/data/cifar10.npz")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override config values, e.g. epochs=10 width=0.75 (JSON values)")
    parser.add_argument("--tta", choices=[m for m in TTA_MODES if m != "none"], nargs="*", default=[],
                        help="also report test accuracy with these test-time augmentations")
    parser.add_argument("--json", help="write the per-epoch results here")
    parser.add_argument("--runs-dir", default="runs")
    args = parser.parse_args()

    overrides = {k: json.loads(v) if v[:1] in "0123456789-[{tf" else v
                 for k, v in (item.split("=", 1) for item in args.set)}
    config = TrainConfig.from_dict({**PRESETS[args.preset].config.to_dict(), "val_size": 0, **overrides})
    t0 = time.perf_counter()
    data = load_cifar10(args.data)
    load_s = time.perf_counter() - t0
    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device)
    eval_s = 0.0
    rows: list[dict] = []
    print(f"config: {json.dumps(config.to_dict())}\ndata load: {load_s:.1f}s on {torch.get_num_threads()} "
          f"threads, device {device}", flush=True)

    def measure(epoch: int, model) -> None:
        nonlocal eval_s
        t = time.perf_counter()
        logits = batched_logits(model, data.test_images, Normalization(), device, dtype, batch_size=1000)
        acc = (logits.argmax(1) == data.test_labels).float().mean().item()
        row = {"epoch": epoch, "train_s": round(t - t0 - eval_s, 1), "test_acc": round(acc, 4)}
        for mode in args.tta:
            logits = batched_logits(model, data.test_images, Normalization(), device, dtype, batch_size=1000,
                                    tta=mode)
            row[f"test_acc_{mode}"] = round((logits.argmax(1) == data.test_labels).float().mean().item(), 4)
        eval_s += time.perf_counter() - t
        rows.append(row)
        print(json.dumps(row), flush=True)

    run_dir = RunDir(args.runs_dir, new_run_id(config.model))
    run_dir.create(config)
    print(f"run {run_dir.run_id}", flush=True)
    execute_run(run_dir, config, data, on_epoch_end=measure)
    print(f"training time (data load included, evaluation excluded): {rows[-1]['train_s']}s; "
          f"final test accuracy {rows[-1]['test_acc']:.2%}")
    for target in TARGETS:
        hit = next((r for r in rows if r["test_acc"] >= target), None)
        print(f"target {target:.1%}: " + (f"reached after epoch {hit['epoch']} at {hit['train_s']}s"
                                          if hit else "not reached"))
    if args.json:
        Path(args.json).write_text(json.dumps({"run_id": run_dir.run_id, "config": config.to_dict(),
                                               "load_s": load_s, "epochs": rows}, indent=2))


if __name__ == "__main__":
    main()
