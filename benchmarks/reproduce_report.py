"""Reproduce every experiment of the CIFAR-10 homework report with the CLI.

    python benchmarks/reproduce_report.py --data PATH [--only report_lenet ...] [--out DIR]

Each preset is trained with `python -m cifarapp train --preset NAME --data PATH`, then its
checkpoint is evaluated on the test set with `python -m cifarapp evaluate RUN_ID --json ...`.
Wall times are measured around each command. Results: one JSON per preset in --out
(default benchmarks/results/report/), with the per-class accuracy and confusion matrix.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cifarapp.files import atomic_write_text
from cifarapp.hardware import machine_header

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ["report_lenet", "report_sgd", "report_k4", "report_bn", "report_high_lr", "report_cnn6"]


def run(cmd: list[str]) -> tuple[str, float]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    sys.stdout.write(proc.stdout)
    if proc.returncode not in (0, 1):
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    return proc.stdout, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="CIFAR-10 .npz or torchvision folder")
    parser.add_argument("--only", nargs="*", default=PRESETS, choices=PRESETS)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "report"))
    args = parser.parse_args()
    header = machine_header()
    print(header, flush=True)
    out = Path(args.out)
    for preset in args.only:
        train_cmd = [sys.executable, "-m", "cifarapp", "train", "--preset", preset, "--data", args.data]
        text, train_s = run(train_cmd)
        run_id = re.search(r"^run (\S+)", text, re.M).group(1)
        epochs = re.findall(r"^Epoch \[(\d+)/\d+\], train_loss: (\S+), val_loss: (\S+), val_acc: (\S+)", text, re.M)
        end = re.search(r"^(finished|stopped|diverged|failed): (.*)$", text, re.M)
        compute = re.search(r"^compute: (.*)$", text, re.M)
        result = {"preset": preset, "hardware": header, "compute": compute.group(1) if compute else None,
                  "train_command": f"python -m cifarapp train --preset {preset} --data PATH",
                  "train_wall_s": round(train_s, 1), "status": end.group(1), "end_message": end.group(2),
                  "epochs": [dict(zip(("epoch", "train_loss", "val_loss", "val_acc"), e)) for e in epochs]}
        if (ROOT / "runs" / run_id / "checkpoint.pt").is_file():
            with tempfile.TemporaryDirectory() as scratch:
                evaluation = Path(scratch) / "evaluation.json"
                run([sys.executable, "-m", "cifarapp", "evaluate", run_id, "--data", args.data,
                     "--json", str(evaluation)])
                result["evaluate_command"] = "python -m cifarapp evaluate RUN_ID --data PATH"
                result["test"] = {k: v for k, v in json.loads(evaluation.read_text()).items() if k != "model"}
        atomic_write_text(out / f"{preset}.json", json.dumps(result, indent=2) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k not in ("epochs", "test")}), flush=True)


if __name__ == "__main__":
    main()
