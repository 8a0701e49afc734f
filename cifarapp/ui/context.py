"""What the UI handlers share: the run manager, the model catalog and where data comes from."""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..catalog import ModelCatalog
from ..data import CIFAR10_TRAIN_SIZE, CifarData, DataUnavailableError, load_cifar10, synthetic_data
from ..hardware import Measurements, detect, resolve_device
from ..runs import RunManager

SYNTHETIC_TRAIN_SIZE = 2000
ASSETS_DIR = Path(__file__).resolve().parent.parent.parent / "assets"
TEST_SAMPLE = ASSETS_DIR / "test_sample.npz"


@dataclass(frozen=True)
class DataSettings:
    """Where training data comes from: `data` is an .npz/folder path, 'synthetic', or None for
    the default (cache in data_dir, else torchvision's download when `download` is true)."""

    data: str | None = None
    data_dir: str = "data"
    download: bool = True

    def load(self) -> CifarData:
        if self.data == "synthetic":
            return synthetic_data(n_train=SYNTHETIC_TRAIN_SIZE)
        return load_cifar10(self.data, self.data_dir, download=self.download)

    def describe(self) -> str:
        if self.data == "synthetic":
            return "a small synthetic data set of coloured shapes (for trying the app)"
        if self.data:
            return f"`{self.data}`"
        cache = Path(self.data_dir) / "cifar10_uint8.npz"
        if cache.is_file():
            return f"the CIFAR-10 cache in `{cache}`"
        if self.download:
            return (f"CIFAR-10, downloaded from the official site through torchvision into `{self.data_dir}/` "
                    "on the first Start (about 170 MB, once)")
        return "nowhere yet: start the app with `--data PATH` (or CIFARAPP_DATA) to train"


@dataclass(frozen=True)
class EvalSet:
    images: torch.Tensor
    labels: torch.Tensor
    note: str


@dataclass
class AppContext:
    """Everything the tabs need; built once per app."""

    manager: RunManager
    catalog: ModelCatalog
    data_settings: DataSettings
    cache_max_age_s: int = 3600  # uploads and files made for download are deleted after this
    _eval_set: EvalSet | None = None
    _eval_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, runs_root: str | Path = "runs", data_settings: DataSettings = DataSettings(),
               max_active: int = 1, abandon_after_s: float | None = 600.0,
               cache_max_age_s: int = 3600) -> "AppContext":
        manager = RunManager(runs_root, data_settings.load, max_active=max_active, abandon_after_s=abandon_after_s,
                             measurements=Measurements())
        return cls(manager, ModelCatalog(manager), data_settings, cache_max_age_s)

    def train_image_count(self) -> int:
        """Training images of the data set: counted once it is loaded, else its known size."""
        data = self.manager.loaded_data()
        if data is not None:
            return len(data.train_images)
        return SYNTHETIC_TRAIN_SIZE if self.data_settings.data == "synthetic" else CIFAR10_TRAIN_SIZE

    def eval_set(self) -> EvalSet:
        """The full test set when the data is already here (no download), else the shipped sample."""
        with self._eval_lock:
            if self._eval_set is None:
                self._eval_set = self._find_eval_set()
            return self._eval_set

    def _find_eval_set(self) -> EvalSet:
        try:
            data = (self.manager.data() if self.data_settings.data == "synthetic"
                    else load_cifar10(self.data_settings.data, self.data_settings.data_dir, download=False))
            return EvalSet(data.test_images, data.test_labels,
                           f"the full test set ({len(data.test_labels):,} images from {data.source})")
        except DataUnavailableError:
            with np.load(TEST_SAMPLE) as f:
                images = torch.from_numpy(f["x"]).permute(0, 3, 1, 2)
                labels = torch.from_numpy(f["y"].astype(np.int64))
            return EvalSet(images, labels, f"a sample of {len(labels):,} CIFAR-10 test images shipped in "
                                           "assets/ (the full test set is not on this machine)")


def new_owner_token() -> str:
    """An unguessable id for one browser, kept in its local storage."""
    return secrets.token_urlsafe(16)


def hardware_summary() -> str:
    """What training and inference run on here, with device on 'auto'."""
    return detect(resolve_device("auto")).describe()
