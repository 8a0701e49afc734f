"""ONNX export of the shipped models: export time, and inference speed of onnxruntime against torch.

    python benchmarks/export_latency.py [--repeats 100] [--batch 256] [--rounds 3] [--threads 2]

For each model in weights/: the time `cifarapp.export.export_onnx` takes (export, then its check
on 256 sample images), then the same computation (pixels in [0, 1] -> probabilities) in
onnxruntime (CPU execution provider) and in torch eager as the app runs the model here (the
precision and memory layout `auto` measures fastest for its inference):
batch 1 as p50 over `--repeats` calls, and `--batch` images as images/s (median of `--rounds`).
The runtimes take turns in blocks of calls, so a load that comes and goes hits both alike.
torch and onnxruntime get the same number of threads (`--threads`; onnxruntime: intra-op
threads, one inter-op thread).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime
import torch

from cifarapp import checkpoints
from cifarapp.export import INPUT_NAME, export_onnx, probability_model, sample_pixels
from cifarapp.hardware import Compute, machine_header
from cifarapp.inference import autocast
from cifarapp.weights import shipped_models

WARMUP_CALLS = 10
SINGLE_ROUNDS = 5  # the batch-1 calls come in this many blocks per runtime


def interleaved_seconds(calls: dict, rounds: int, per_round: int) -> dict[str, list[float]]:
    """Seconds of each call of each function in `calls` (name -> function): in each of `rounds`
    rounds, each function is called `per_round` times in a row (the runtimes' thread pools would
    slow each other down if their calls alternated one by one)."""
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            for _ in range(per_round):
                start = time.perf_counter()
                call()
                seconds[name].append(time.perf_counter() - start)
    return seconds


def speeds(reference: torch.nn.Module, compute: Compute, session: onnxruntime.InferenceSession,
           images: torch.Tensor, repeats: int, rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """Batch-1 p50 milliseconds and whole-batch images/s of torch (in `compute`) and onnxruntime on `images`."""
    one = images[:1]

    def run_torch(pixels: torch.Tensor) -> None:
        with torch.inference_mode(), autocast(compute.device, compute.dtype):
            reference(pixels.contiguous(memory_format=compute.memory_format))

    def calls(pixels: torch.Tensor) -> dict:
        feeds = {INPUT_NAME: pixels.numpy()}
        return {"torch": lambda: run_torch(pixels), "onnxruntime": lambda: session.run(None, feeds)}

    interleaved_seconds(calls(one), 1, WARMUP_CALLS)
    interleaved_seconds(calls(images), 1, 1)
    single = interleaved_seconds(calls(one), SINGLE_ROUNDS, max(1, repeats // SINGLE_ROUNDS))
    p50_ms = {k: statistics.median(v) * 1000 for k, v in single.items()}
    per_s = {k: len(images) / statistics.median(v) for k, v in interleaved_seconds(calls(images), rounds, 1).items()}
    return p50_ms, per_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=100, help="batch-1 calls per runtime")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3, help="timed large batches per runtime")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    print(machine_header(), flush=True)
    print(f"# onnxruntime {onnxruntime.__version__} (CPUExecutionProvider), torch {torch.__version__} eager in the "
          f"precision and layout the app picks here; {args.threads} threads each", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for shipped in shipped_models():
            payload = checkpoints.read(shipped.checkpoint)
            start = time.perf_counter()
            report = export_onnx(payload, Path(folder) / f"{shipped.name}.onnx")
            total_s = time.perf_counter() - start
            compute = checkpoints.load_model(shipped.checkpoint).compute  # what the app runs this model in here
            reference = probability_model(payload).to(memory_format=compute.memory_format)
            session = onnxruntime.InferenceSession(str(report.path), options, providers=["CPUExecutionProvider"])
            images = sample_pixels(reference.info.image_size, args.batch)
            p50_ms, per_s = speeds(reference, compute, session, images, args.repeats, args.rounds)
            rows.append((shipped.name, report, total_s, p50_ms, per_s, compute))
            print(f"{shipped.name}: {report.describe()}", flush=True)

    print()
    print(f"| model | torch runs in | export s | export + check s | ONNX MB | max abs diff | b1 p50 torch ms | "
          f"b1 p50 ort ms | b1 torch / ort | b{args.batch} torch img/s | b{args.batch} ort img/s | "
          f"b{args.batch} ort / torch |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, report, total_s, p50_ms, per_s, compute in rows:
        layout = "channels-last" if compute.channels_last else "contiguous"
        print(f"| {name} | {compute.precision} {layout} | {report.export_s:.1f} | {total_s:.1f} | "
              f"{report.bytes / 1e6:.1f} | "
              f"{report.max_abs_diff:.1e} | "
              f"{p50_ms['torch']:.2f} | {p50_ms['onnxruntime']:.2f} | {p50_ms['torch'] / p50_ms['onnxruntime']:.2f} | "
              f"{per_s['torch']:,.0f} | {per_s['onnxruntime']:,.0f} | {per_s['onnxruntime'] / per_s['torch']:.2f} |")


if __name__ == "__main__":
    main()
