"""Training-step and inference throughput (images/s) of every registered model, CPU fp32 vs bf16.

    python benchmarks/throughput.py [--batch 256] [--steps 6]

Each measurement runs a few warm-up steps, then times `--steps` steps on random data in
channels-last layout. Ratios are bf16 over fp32 measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cifarapp.models import MODELS, build_model  # noqa: E402


def images_per_s(model, batch: int, steps: int, train: bool, dtype) -> float:
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    model.train(train)
    for i in range(steps + 2):
        if i == 2:
            t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None), torch.set_grad_enabled(train):
            logits = model(x)
        if train:
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return batch * steps / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    print("| model | train fp32 img/s | train bf16 img/s | bf16/fp32 | infer fp32 img/s | infer bf16 img/s | bf16/fp32 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in MODELS:
        torch.manual_seed(0)
        model = build_model(name).to(memory_format=torch.channels_last)
        r = {(train, dt): images_per_s(model, args.batch, args.steps, train, dt)
             for train in (True, False) for dt in (None, torch.bfloat16)}
        print(f"| {name} | {r[True, None]:,.0f} | {r[True, torch.bfloat16]:,.0f} | "
              f"{r[True, torch.bfloat16] / r[True, None]:.2f} | {r[False, None]:,.0f} | "
              f"{r[False, torch.bfloat16]:,.0f} | {r[False, torch.bfloat16] / r[False, None]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
