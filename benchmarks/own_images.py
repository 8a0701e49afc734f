"""Your own images: how fast an image folder is prepared, and what starting from the shipped
model buys on a small data set.

    python benchmarks/own_images.py --data PATH [--prepare-images 10000] [--per-class 150] [--seeds 3]

1. Preparation: a folder of `--prepare-images` JPEG photos (CIFAR-10 test images enlarged to
   480x360, the size of a small phone picture, in 10 class folders) is prepared cold (decoded,
   cropped, resized, hashed; the cache empty) and then again from the cache; images/s of each.
2. Transfer: a 3-class folder (cat, dog, ship; `--per-class` images each, 20% held out for
   validation) from CIFAR-10 *test* images, which the shipped model never trained on, and a
   held-out set of 300 other test images of those classes. fastnet trained from scratch against
   fine-tuned from the shipped fastnet (one frozen-body epoch), the same epochs; held-out accuracy
   and training time over `--seeds` seeds (mean ± std). The shipped body learned these classes
   among CIFAR-10's ten, so this is transfer to a close task.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from cifarapp import checkpoints
from cifarapp.config import TrainConfig
from cifarapp.data import load_cifar10
from cifarapp.evaluate import evaluate
from cifarapp.hardware import Measurements, machine_header
from cifarapp.imagesets import load_image_set, prepare, scan_folder
from cifarapp.train import fit
from cifarapp.weights import default_checkpoint

CLASSES = ("cat", "dog", "ship")
HELD_OUT_PER_CLASS = 100


def write_folder(root: Path, images: torch.Tensor, labels: torch.Tensor, names, size=None) -> None:
    for i, (pixels, label) in enumerate(zip(images, labels.tolist())):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(pixels.permute(1, 2, 0).numpy())
        if size:
            image = image.resize(size, Image.Resampling.BICUBIC)
            image.save(folder / f"{i:05d}.jpg", quality=85)
        else:
            image.save(folder / f"{i:05d}.png")


def preparation(data, n: int, work: Path) -> None:
    root = work / "photos"
    write_folder(root, data.test_images[:n], data.test_labels[:n], data.classes, size=(480, 360))
    scan = scan_folder(root)
    start = time.perf_counter()
    prepare(scan, 32, cache_dir=work / "cache")
    cold = time.perf_counter() - start
    start = time.perf_counter()
    prepare(scan_folder(root), 32, cache_dir=work / "cache")
    cached = time.perf_counter() - start
    print(f"prepare {n:,} JPEG photos (480x360) to 32x32: cold {cold:.1f} s ({n / cold:,.0f} img/s), "
          f"from the cache {cached:.2f} s ({n / cached:,.0f} img/s)", flush=True)


def transfer(data, per_class: int, seeds: int, epochs: int, work: Path) -> None:
    wanted = [data.classes.index(c) for c in CLASSES]
    picked, held = [], []
    for label in wanted:
        idx = (data.test_labels == label).nonzero().flatten()
        picked.append(idx[:per_class])
        held.append(idx[per_class:per_class + HELD_OUT_PER_CLASS])
    picked, held = torch.cat(picked), torch.cat(held)
    remap = {old: new for new, old in enumerate(wanted)}
    relabel = lambda labels: torch.tensor([remap[int(v)] for v in labels])  # noqa: E731
    root = work / "three"
    write_folder(root, data.test_images[picked], relabel(data.test_labels[picked]), CLASSES)
    small = load_image_set(root, work / "datasets").data
    held_images, held_labels = data.test_images[held], relabel(data.test_labels[held])
    payload = checkpoints.read(default_checkpoint())
    base = TrainConfig(model="fastnet", width=payload["width"], optimizer="adam", lr=0.002, epochs=epochs,
                       batch_size=32, augment=("flip", "translate"), label_smoothing=0.1)
    measurements = Measurements()
    print(f"3 classes ({', '.join(CLASSES)}), {len(small.train_labels)} training and {len(small.val_labels)} "
          f"validation images, {len(held_labels)} held out; fastnet width {payload['width']:g}, {epochs} epochs, "
          f"{seeds} seeds")
    print("| start | held-out accuracy | training time |")
    print("| --- | ---: | ---: |")
    for label, extra, init in (("from scratch", {}, None),
                               ("fine-tuned from shipped fastnet (1 frozen epoch)",
                                {"init_from": "fastnet", "freeze_epochs": 1}, payload)):
        accs, times = [], []
        for seed in range(seeds):
            config = TrainConfig(**{**base.to_dict(), "augment": base.augment, **extra, "seed": seed})
            path = work / f"transfer-{len(accs)}-{bool(init)}.pt"
            start = time.perf_counter()
            fit(config, small, init_weights=init, checkpoint_path=path, measurements=measurements)
            times.append(time.perf_counter() - start)
            loaded = checkpoints.load_model(path, measurements=measurements)
            accs.append(evaluate(loaded, held_images, held_labels).accuracy)
        print(f"| {label} | {statistics.mean(accs):.1%} ± {statistics.stdev(accs) if seeds > 1 else 0:.1%} | "
              f"{statistics.mean(times):.1f} ± {statistics.stdev(times) if seeds > 1 else 0:.1f} s |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="CIFAR-10 .npz or torchvision folder")
    parser.add_argument("--prepare-images", type=int, default=10_000)
    parser.add_argument("--per-class", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    print(machine_header(), flush=True)
    data = load_cifar10(args.data)
    with tempfile.TemporaryDirectory(prefix="own-images-") as work:
        preparation(data, args.prepare_images, Path(work))
        transfer(data, args.per_class, args.seeds, args.epochs, Path(work))


if __name__ == "__main__":
    main()
