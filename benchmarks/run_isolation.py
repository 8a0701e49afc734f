"""Should a one-process run train in the app's process (a thread) or in a process of its own? The
two costs, side by side in one run: the start-up of a run (Start to its first step) and the
latency of Predict requests made to the app while the run trains.

    python benchmarks/run_isolation.py [--data PATH] [--requests 40] [--model fastnet --width 0.5]

The app's own RunManager starts the run both ways (`isolate` off and on) on the same data; the
Predict request is the Predict tab's handler (preprocess, the shipped fastnet, its Grad-CAM map)
called from a request thread of this process, as the server calls it, every 0.25 s. Idle: the
same requests with nothing training.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as app.py sets it before torch is imported

from gradio.utils import get_upload_folder  # noqa: E402

from cifarapp.config import TrainConfig  # noqa: E402
from cifarapp.hardware import machine_header  # noqa: E402
from cifarapp.sources import DataSource  # noqa: E402
from cifarapp.ui import AppContext  # noqa: E402
from cifarapp.ui.predict_tab import predict_one  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "assets" / "examples" / "photo_cat.jpg"


def request_latencies(ctx: AppContext, count: int, photo: str) -> list[float]:
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        predict_one(ctx, "shipped:fastnet", photo)
        latencies.append(time.perf_counter() - started)
        time.sleep(0.25)
    return latencies


def describe(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered) * 1000:,.0f} | {p95 * 1000:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a CIFAR-10 .npz or folder (default: the synthetic set)")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--model", default="fastnet")
    parser.add_argument("--width", type=float, default=0.5)
    args = parser.parse_args()
    source = DataSource(args.data or "synthetic")
    print(machine_header())
    config = TrainConfig(model=args.model, width=args.width, optimizer="sgd", lr=0.2, momentum=0.9, epochs=200,
                         batch_size=256, val_size=500)
    data = source.load()
    print(f"# the run: {args.model} width {args.width:g}, batch 256, on {data.name}; {args.requests} Predict "
          "requests (shipped fastnet with Grad-CAM) 0.25 s apart; OMP_WAIT_POLICY=PASSIVE, as in the app")
    print("| the run trains | start to first step (s) | Predict p50 (ms) | Predict p95 (ms) |")
    print("| --- | ---: | ---: | ---: |")
    uploads = Path(get_upload_folder())  # the handler opens uploads only, as in the app
    uploads.mkdir(parents=True, exist_ok=True)
    photo = uploads / PHOTO.name
    shutil.copyfile(PHOTO, photo)
    with tempfile.TemporaryDirectory() as runs:
        ctx = AppContext.create(runs, source)
        ctx.manager.data.get()  # loaded once, as in a running app
        request_latencies(ctx, 3, str(photo))  # the model is loaded and measured, as after the first request
        print(f"| nothing trains | – | {describe(request_latencies(ctx, args.requests, str(photo)))} |", flush=True)
        for isolate in (False, True):
            ctx.manager.isolate = isolate
            started = time.perf_counter()
            run_id = ctx.manager.start(config, owner="benchmark")
            while not ctx.manager.snapshot(run_id).steps:
                time.sleep(0.05)
            startup = time.perf_counter() - started
            latencies = request_latencies(ctx, args.requests, str(photo))
            ctx.manager.stop(run_id, "benchmark")
            ctx.manager.wait(run_id, timeout=600)
            where = "in a process of its own" if isolate else "in a thread of the app"
            print(f"| {where} | {startup:.1f} | {describe(latencies)} |", flush=True)


if __name__ == "__main__":
    main()
