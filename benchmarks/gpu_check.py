"""On a CUDA GPU, in one go: the engine's GPU paths work, and how fast they are.

    python benchmarks/gpu_check.py --data PATH [--airbench]

1. How `auto` computes on this GPU (precision, layout, why), and the measured training and
   inference throughput of fastnet in bf16, fp16 (with loss scaling) and fp32.
2. A short training run in each precision on real data (fp16 exercises GradScaler), a stop and
   a resume, and that the resumed run finishes.
3. Evaluate and Predict with the shipped default model on the GPU (accuracy must match the CPU's
   within 0.3 points), and the flip + translate TTA.
4. With --airbench: `gpu_vs_airbench.py`'s comparison with airbench94 (needs `pip install airbench`).
Prints one line per check with PASS or FAIL and exits non-zero if any failed. Never run in tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from cifarapp.checkpoints import load_model, read
from cifarapp.data import load_cifar10
from cifarapp.evaluate import evaluate
from cifarapp.hardware import Measurements, Workload, choose, machine_header, measure
from cifarapp.predict import predict_pixels
from cifarapp.presets import PRESETS
from cifarapp.train import fit
from cifarapp.weights import default_checkpoint

GPU = torch.device("cuda")
results: list[tuple[str, bool, str]] = []


def check(name: str, passed: bool, detail: str = "") -> None:
    results.append((name, passed, detail))
    print(f"{'PASS' if passed else 'FAIL'} {name}: {detail}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="CIFAR-10 .npz or torchvision folder")
    parser.add_argument("--airbench", action="store_true", help="also run gpu_vs_airbench.py")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this check needs a CUDA GPU")
    print(machine_header(GPU), flush=True)
    data = load_cifar10(args.data)

    with tempfile.TemporaryDirectory() as scratch:
        measurements = Measurements(Path(scratch))
        for train in (True, False):
            work = Workload("fastnet", 0.5 if train else 1.0, batch_size=512, train=train)
            auto = choose(work, GPU, "auto", measurements)
            speeds = {p: measure(work, p, True, GPU)[0] for p in ("bf16", "fp16", "fp32")}
            check(f"auto for {'training' if train else 'inference'}", auto.precision in ("bf16", "fp16"),
                  f"{auto.describe()}; img/s " + ", ".join(f"{p} {v:,.0f}" for p, v in speeds.items()))

    base = dataclasses.replace(PRESETS["fast"].config, device="cuda", val_size=5000)
    for precision in ("bf16", "fp16", "fp32"):
        config = dataclasses.replace(base, precision=precision)
        started = time.perf_counter()
        result = fit(config, data)
        check(f"fast preset in {precision}", result.status == "finished" and result.history[-1]["val_acc"] > 0.7,
              f"val acc {result.history[-1]['val_acc']:.4f} in {time.perf_counter() - started:.1f} s")

    with tempfile.TemporaryDirectory() as scratch:
        ckpt = Path(scratch) / "stopped.pt"
        stop = threading.Event()
        config = dataclasses.replace(base, precision="fp16", epochs=4, warmup_epochs=0.8, stem_bias_epochs=2)
        stopped = fit(config, data, stop=stop, checkpoint_path=ckpt,
                      on_epoch_end=lambda epoch, model: stop.set() if epoch == 2 else None)
        resumed = fit(config, data, checkpoint_path=ckpt, resume_from=read(ckpt))
        check("stop and resume with fp16 loss scaling", stopped.status == "stopped" and resumed.status == "finished"
              and len(resumed.history) == 4, f"{stopped.message}; then {resumed.message}")

    cpu = load_model(default_checkpoint(), device="cpu")
    gpu = load_model(default_checkpoint(), device="cuda")
    on_cpu = evaluate(cpu, data.test_images, data.test_labels).accuracy
    started = time.perf_counter()
    on_gpu = evaluate(gpu, data.test_images, data.test_labels).accuracy
    gpu_s = time.perf_counter() - started
    check("evaluate the shipped model on the GPU", abs(on_gpu - on_cpu) < 0.003,
          f"GPU {on_gpu:.4f} in {gpu_s:.2f} s ({gpu.compute.describe()}), CPU {on_cpu:.4f}")
    tta = evaluate(gpu, data.test_images, data.test_labels, tta="flip_translate").accuracy
    check("flip + translate TTA on the GPU", tta >= on_gpu, f"{tta:.4f}")
    probs = predict_pixels(gpu, data.test_images[:16].permute(0, 2, 3, 1).numpy())
    check("predict on the GPU", probs.shape == (16, 10) and abs(float(probs.sum()) - 16) < 1e-3,
          f"{(probs.argmax(1) == data.test_labels[:16].numpy()).mean():.2f} of 16 right")

    if args.airbench:
        proc = subprocess.run([sys.executable, str(Path(__file__).with_name("gpu_vs_airbench.py")), "--data",
                               args.data, "--runs", "3"], text=True, capture_output=True)
        print(proc.stdout[-4000:], proc.stderr[-2000:], flush=True)
        check("gpu_vs_airbench.py", proc.returncode == 0, "its ratio is printed above")

    failed = [name for name, passed, _ in results if not passed]
    print(f"{len(results) - len(failed)}/{len(results)} checks passed" + (f"; failed: {failed}" if failed else ""))
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
