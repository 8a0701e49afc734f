"""What the UI handlers share: the run manager, the model catalog and where data comes from."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..catalog import ModelCatalog
from ..data import DataSource, DataUnavailableError
from ..hardware import Measurements, detect, resolve_device
from ..limits import Limits
from ..manager import RunManager, RunRules
from ..weights import load_sample

ASSETS_DIR = Path(__file__).resolve().parent.parent.parent / "assets"


@dataclass(frozen=True)
class EvalSet:
    images: torch.Tensor
    labels: torch.Tensor
    note: str
    full: bool  # the whole test set (a test accuracy worth keeping), not the shipped sample


@dataclass
class AppContext:
    """Everything the tabs need; built once per app."""

    manager: RunManager
    catalog: ModelCatalog
    data_source: DataSource
    limits: Limits = field(default_factory=lambda: Limits.create(None, None, None))
    cache_max_age_s: int = 3600  # uploads and files made for download are deleted after this
    _eval_set: EvalSet | None = None
    _eval_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, runs_root: str | Path = "runs", data_source: DataSource = DataSource(),
               max_active: int = 1, rules: RunRules = RunRules(),
               limits: Limits | None = None, cache_max_age_s: int = 3600) -> "AppContext":
        manager = RunManager(runs_root, data_source.load, max_active=max_active, rules=rules,
                             measurements=Measurements())
        return cls(manager, ModelCatalog(manager), data_source, limits or Limits.create(None, None, None),
                   cache_max_age_s)

    def train_image_count(self) -> int:
        """Training images of the data set: counted once it is loaded, else its known size."""
        data = self.manager.data.loaded()
        return len(data.train_images) if data is not None else self.data_source.expected_train_images()

    def eval_set(self) -> EvalSet:
        """The full test set when the data is already here (no download), else the shipped sample."""
        with self._eval_lock:
            if self._eval_set is None:
                self._eval_set = self._find_eval_set()
            return self._eval_set

    def _find_eval_set(self) -> EvalSet:
        try:
            data = self.manager.data.get() if self.data_source.is_synthetic else self.data_source.load(download=False)
            return EvalSet(data.test_images, data.test_labels,
                           f"the full test set ({len(data.test_labels):,} images from {data.source})", full=True)
        except DataUnavailableError:
            images, labels = load_sample()
            return EvalSet(images, labels, f"a sample of {len(labels):,} CIFAR-10 test images shipped in "
                                           "assets/ (the full test set is not on this machine)", full=False)


def hardware_summary() -> str:
    """What training and inference run on here, with device on 'auto'."""
    return detect(resolve_device("auto")).describe()
