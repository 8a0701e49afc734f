"""Reproduce every experiment of the CIFAR-10 report with the CLI and write a markdown table.

    python benchmarks/reproduce_report.py --data ../shared/data/cifar10.npz [--only report_lenet ...]

Each preset is trained with `python -m cifarapp train --preset NAME`, then its checkpoint is
evaluated on the test set with `python -m cifarapp evaluate RUN_ID --json ...`. Wall times are
measured around each command. Results land in benchmarks/results/ (one JSON per preset and
reproduce_report.md). The data was decoded from JPEG q75: expect ~2-3 points below the report.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PRESETS = ["report_lenet", "report_sgd", "report_k4", "report_bn", "report_high_lr", "report_cnn6"]


def run(cmd: list[str]) -> tuple[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    sys.stdout.write(proc.stdout)
    if proc.returncode not in (0, 1):
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    return proc.stdout, elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="../shared/data/cifar10.npz")
    parser.add_argument("--only", nargs="*", default=PRESETS)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for preset in args.only:
        train_cmd = [sys.executable, "-m", "cifarapp", "train", "--preset", preset, "--data", args.data]
        out, train_s = run(train_cmd)
        run_id = re.search(r"^run (\S+)", out, re.M).group(1)
        epochs = re.findall(r"^Epoch \[(\d+)/\d+\], train_loss: (\S+), val_loss: (\S+), val_acc: (\S+)", out, re.M)
        end = re.search(r"^(finished|stopped|diverged|failed): (.*)$", out, re.M)
        result = {"preset": preset, "run_id": run_id, "train_command": " ".join(["python"] + train_cmd[1:]),
                  "train_wall_s": round(train_s, 1), "status": end.group(1), "end_message": end.group(2),
                  "last_epoch": epochs[-1] if epochs else None, "date": time.strftime("%Y-%m-%d")}
        ckpt = ROOT / "runs" / run_id / "checkpoint.pt"
        if ckpt.is_file():
            eval_json = RESULTS / f"{preset}_eval.json"
            eval_cmd = [sys.executable, "-m", "cifarapp", "evaluate", run_id, "--data", args.data,
                        "--json", str(eval_json)]
            _, eval_s = run(eval_cmd)
            result["eval_command"] = " ".join(["python"] + eval_cmd[1:])
            result["test_accuracy"] = json.loads(eval_json.read_text())["accuracy"]
        (RESULTS / f"{preset}.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
