"""Predict latency for one uploaded photo, Evaluate time on the full test set, and app start time.

    python benchmarks/latency.py [--repeats 50] [--data PATH]

Predict: a 4032x3024 JPEG photo's bytes -> preprocess -> best shipped model -> probabilities,
p50/p95 over `--repeats` calls (model already loaded, as in the running app). Evaluate (with
--data): the shipped default model on the 10,000 test images, loading the model included (its
inference precision is measured on first use and remembered, as in the app; a fresh cache is
used so that the measurement is counted). App start: wall time from `python app.py` to the
first HTTP answer, on synthetic data (nothing downloaded).
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from cifarapp.checkpoints import load_model
from cifarapp.data import load_cifar10
from cifarapp.evaluate import evaluate
from cifarapp.hardware import Measurements, machine_header
from cifarapp.predict import predict
from cifarapp.weights import default_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def photo_bytes() -> bytes:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, size=(63, 84, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((4032, 3024), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def app_start_seconds() -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = time.perf_counter()
    runs = tempfile.mkdtemp(prefix="latency-runs-")
    proc = subprocess.Popen([sys.executable, "app.py", "--data", "synthetic", "--runs-dir", runs,
                             "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
                return time.perf_counter() - t
            except OSError:
                time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--data", help="CIFAR-10 .npz or folder: also time Evaluate on its test set")
    args = parser.parse_args()
    print(machine_header(), flush=True)
    checkpoint = default_checkpoint()
    if args.data:
        data = load_cifar10(args.data)
        with tempfile.TemporaryDirectory() as fresh:
            t = time.perf_counter()
            loaded = load_model(checkpoint, measurements=Measurements(Path(fresh)))
            result = evaluate(loaded, data.test_images, data.test_labels)
            seconds = time.perf_counter() - t
        print(f"evaluate {checkpoint.name} on {result.n_images:,} test images: {seconds:.1f} s "
              f"({result.accuracy:.2%}; {loaded.compute.describe()})", flush=True)
    loaded = load_model(checkpoint)
    data = photo_bytes()
    predict(loaded, [data])
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        predict(loaded, [data])
        times.append((time.perf_counter() - t) * 1000)
    q = statistics.quantiles(times, n=20)
    print(f"predict, one 4032x3024 JPEG ({len(data) / 1e6:.1f} MB) with {checkpoint.name}: "
          f"p50 {statistics.median(times):.1f} ms, p95 {q[18]:.1f} ms over {args.repeats} calls")
    starts = [app_start_seconds() for _ in range(3)]
    print(f"app start to first HTTP answer: {min(starts):.1f}s best, {max(starts):.1f}s worst of 3")


if __name__ == "__main__":
    main()
