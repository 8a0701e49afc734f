"""Where a run's images come from, as the app, the CLI and the benchmarks name it: CIFAR-10 (an
npz, torchvision's folder, or its download), a folder or .zip of a user's own labelled images
(see `imagesets`), or a small synthetic set for trying the app."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .data import (
    CACHE_NAME,
    CIFAR10_TRAIN_SIZE,
    CIFAR100_CACHE_NAME,
    DATA_ENV_VAR,
    DEFAULT_DATA_DIR,
    SYNTHETIC_TRAIN_SIZE,
    ImageData,
    copy_note,
    load_cifar10,
    load_cifar100,
    synthetic_data,
)
from .imagesets import IMAGE_SIZES, is_image_set, load_image_set, scan_folder

SYNTHETIC = "synthetic"
CIFAR100 = "cifar100"  # --data cifar100: CIFAR-100 through torchvision, into --data-dir
CIFAR100_KEY = "builtin/cifar100"  # a run config's `dataset` for CIFAR-100 chosen in the app's Data panel
DEFAULT_DATASETS_DIR = "datasets"


@dataclass(frozen=True)
class DataSource:
    """`data` is an .npz, a CIFAR-10 folder, an image folder or .zip, 'synthetic', or None for the
    default (the CIFARAPP_DATA environment variable, else the cache in `data_dir`, else
    torchvision's download there when `download` is true). Image sets are prepared at
    `image_size` with `val_fraction` of each class held out when they have no val/ folder;
    whatever they need written goes under `datasets_dir`."""

    data: str | None = None
    data_dir: str = str(DEFAULT_DATA_DIR)
    download: bool = True
    datasets_dir: str = DEFAULT_DATASETS_DIR
    image_size: int = 32
    val_fraction: float = 0.2

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DataSource:
        """The source that the options of `add_data_options` name."""
        return cls(args.data, args.data_dir, not args.no_download, args.datasets_dir, args.image_size,
                   args.val_fraction)

    @property
    def given(self) -> str | None:
        """What the data is named by: `data`, else the CIFARAPP_DATA environment variable."""
        return self.data or os.environ.get(DATA_ENV_VAR) or None

    @property
    def is_synthetic(self) -> bool:
        return self.given == SYNTHETIC

    @property
    def is_image_set(self) -> bool:
        return self.given not in (None, SYNTHETIC, CIFAR100) and is_image_set(self.given)

    def load(self, download: bool | None = None, progress: Callable[[int, int], None] | None = None) -> ImageData:
        """The data set (`download` overrides whether a missing CIFAR-10 may be downloaded;
        `progress(done, total)` follows the preparation of an image set)."""
        download = self.download if download is None else download
        if self.is_synthetic:
            return synthetic_data(n_train=SYNTHETIC_TRAIN_SIZE)
        if self.given == CIFAR100:
            return load_cifar100(self.data_dir, download=download)
        if self.is_image_set:
            return load_image_set(self.given, self.datasets_dir, self.image_size, self.val_fraction,
                                  progress=progress).data
        return load_cifar10(self.given, self.data_dir, download=download)

    def to_args(self) -> list[str]:
        """The command-line options (of `add_data_options`) that name this source."""
        args = ["--data-dir", self.data_dir, "--datasets-dir", self.datasets_dir, "--image-size",
                str(self.image_size), "--val-fraction", str(self.val_fraction)]
        if self.data:
            args += ["--data", self.data]
        return args + ([] if self.download else ["--no-download"])

    def for_dataset(self, dataset: str) -> DataSource:
        """The source of a run config's `dataset`: this one for the default data ('') or an image set
        key, CIFAR-100 for CIFAR100_KEY."""
        return DataSource(CIFAR100, self.data_dir, self.download) if dataset == CIFAR100_KEY else self

    def expected_train_images(self) -> int:
        """How many training images the data set has, before loading it (a zip counts once extracted)."""
        if self.is_synthetic:
            return SYNTHETIC_TRAIN_SIZE
        if self.is_image_set and Path(self.given).is_dir():
            counts = scan_folder(self.given).counts()
            if "pool" in counts:
                return round(sum(counts["pool"].values()) * (1 - self.val_fraction))
            return sum(counts["train"].values())
        return CIFAR10_TRAIN_SIZE

    def describe(self) -> str:
        """Where the data comes from, in words for the Train tab."""
        if self.is_synthetic:
            return "a small synthetic data set of coloured shapes (for trying the app)"
        given = self.given
        if given == CIFAR100:
            cached = (Path(self.data_dir) / CIFAR100_CACHE_NAME).is_file()
            return "CIFAR-100 (100 classes)" + ("" if cached else f", downloaded through torchvision into "
                                                                 f"`{self.data_dir}/` on the first Start (once)")
        if given and self.is_image_set:
            return f"the image set `{Path(given).name}` (prepared at {self.image_size}x{self.image_size})"
        if given:
            note = copy_note(given) if Path(given).is_file() else ""
            return f"`{given}`" + (f". {note}" if note else "")
        cache = Path(self.data_dir) / CACHE_NAME
        if cache.is_file():
            return f"the CIFAR-10 cache in `{cache}`"
        if self.download:
            return (f"CIFAR-10, downloaded from the official site through torchvision into `{self.data_dir}/` "
                    "on the first Start (about 170 MB, once)")
        return "nowhere yet: start the app with `--data PATH` (or CIFARAPP_DATA) to train"


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """The options that name a DataSource (the CLI's and the app's)."""
    parser.add_argument("--data", help=f"a folder of class folders (root/<class>/*, or root/train|val|test/<class>/*) "
                                       f"or a .zip of one; a CIFAR-10 .npz or torchvision folder (or set "
                                       f"{DATA_ENV_VAR}); '{CIFAR100}' for CIFAR-100 (downloaded into --data-dir); "
                                       f"'{SYNTHETIC}' for a tiny generated set. Default: CIFAR-10, "
                                       "downloaded into --data-dir")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR),
                        help="where the CIFAR-10 download and its cache live (default ./data)")
    parser.add_argument("--no-download", action="store_true", help="never download; fail if no data is found")
    add_image_set_options(parser)


def add_image_set_options(parser: argparse.ArgumentParser) -> None:
    """The options that say where and how an image set is prepared."""
    parser.add_argument("--datasets-dir", default=DEFAULT_DATASETS_DIR,
                        help="where image sets are extracted, collected and prepared (default ./datasets)")
    parser.add_argument("--image-size", type=int, choices=IMAGE_SIZES, default=IMAGE_SIZES[0],
                        help="side of the square images an image set is prepared at (64 needs fastnet or resnet18)")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="share of each class held out for validation when an image set has no val/ folder")
