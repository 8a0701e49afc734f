"""What the UI handlers share: the run manager, the model catalog and where data comes from."""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..catalog import ModelCatalog
from ..checkpoints import LoadedModel
from ..config import TrainConfig
from ..data import CIFAR10_CLASSES, CIFAR10_TRAIN_SIZE, DataUnavailableError
from ..estimate import Estimate, duration_on, expected_duration
from ..evaluate import EvalResult
from ..hardware import Measurements, detect, resolve_device
from ..library import ImageSetLibrary
from ..limits import Limits
from ..manager import RunManager, RunRules
from ..sources import CIFAR100, CIFAR100_KEY, DataSource
from ..weights import load_sample

ASSETS_DIR = Path(__file__).resolve().parent.parent.parent / "assets"


@dataclass(frozen=True)
class EvalSet:
    images: torch.Tensor
    labels: torch.Tensor
    note: str
    full: bool  # the whole test set (a test accuracy worth keeping), not the shipped sample


@dataclass(frozen=True)
class Evaluation:
    """One evaluation kept for its drill-down and comparisons, named by an unguessable token (the
    images may be an owner's own)."""

    token: str
    model_key: str
    result: EvalResult
    images: torch.Tensor  # uint8 [N, 3, S, S], in the result's order
    where: str  # what the images are, in words
    full: bool  # the whole test set (see EvalSet)

    @classmethod
    def of(cls, model_key: str, result: EvalResult, eval_set: EvalSet) -> Evaluation:
        """An evaluation of `eval_set` with a fresh token (kept only once an EvaluationCache keeps it)."""
        return cls(secrets.token_urlsafe(16), model_key, result, eval_set.images, eval_set.note, eval_set.full)


class EvaluationCache:
    """The last few evaluations of the app, by token."""

    def __init__(self, size: int = 8):
        self.size = size
        self._kept: OrderedDict[str, Evaluation] = OrderedDict()
        self._lock = threading.Lock()

    def keep(self, evaluation: Evaluation) -> Evaluation:
        """Keep `evaluation` under its token, forgetting the oldest beyond `size`."""
        with self._lock:
            self._kept[evaluation.token] = evaluation
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)
        return evaluation

    def get(self, token: str | None) -> Evaluation | None:
        with self._lock:
            return self._kept.get(token) if token else None


@dataclass
class AppContext:
    """Everything the tabs need; built once per app."""

    manager: RunManager
    catalog: ModelCatalog
    data_source: DataSource
    limits: Limits = field(default_factory=lambda: Limits.create(None, None, None))
    cache_max_age_s: int = 3600  # uploads and files made for download are deleted after this
    evaluations: EvaluationCache = field(default_factory=EvaluationCache)
    _eval_set: EvalSet | None = None
    _eval_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, runs_root: str | Path = "runs", data_source: DataSource = DataSource(),
               max_active: int = 1, rules: RunRules = RunRules(),
               limits: Limits | None = None, cache_max_age_s: int = 3600, isolate_runs: bool = False,
               gpu_chunk_s: float | None = None) -> AppContext:
        library = ImageSetLibrary(data_source.datasets_dir, data_source.image_size, data_source.val_fraction)
        cifar100 = DataSource(CIFAR100, data_source.data_dir, data_source.download)
        manager = RunManager(runs_root, data_source.load, max_active=max_active, rules=rules,
                             measurements=Measurements(), image_sets=library, builtin={CIFAR100_KEY: cifar100.load},
                             worker_args=data_source.to_args(), isolate=isolate_runs, gpu_chunk_s=gpu_chunk_s)
        return cls(manager, ModelCatalog(manager), data_source, limits or Limits.create(None, None, None),
                   cache_max_age_s)

    def train_image_count(self, dataset: str = "") -> int:
        """Training images of a data set (the default one: counted once it is loaded, else its
        known size; CIFAR-100 has as many as CIFAR-10). Any key will do: a count tells nothing
        about a set's images."""
        if dataset == CIFAR100_KEY:
            return CIFAR10_TRAIN_SIZE
        if dataset and self.manager.image_sets is not None:
            return len(self.manager.image_sets.load(dataset, None).data.train_labels)
        data = self.manager.data.loaded()
        return len(data.train_images) if data is not None else self.data_source.expected_train_images()

    def estimate(self, config: TrainConfig) -> Estimate:
        """The expected duration of a run of `config` on its data set here."""
        measurements = self.manager.measurements
        if config.dataset and config.dataset != CIFAR100_KEY and self.manager.image_sets is not None:
            return duration_on(config, self.manager.image_sets.load(config.dataset, None).data, measurements)
        classes = 100 if config.dataset == CIFAR100_KEY else 10
        return expected_duration(config, self.train_image_count(config.dataset), classes, measurements)

    def eval_set(self) -> EvalSet:
        """The full test set when the data is already here (no download), else the shipped sample."""
        with self._eval_lock:
            if self._eval_set is None:
                self._eval_set = self._find_eval_set()
            return self._eval_set

    def eval_set_for(self, loaded: LoadedModel, owner: str | None) -> EvalSet:
        """The evaluation images that match a model: CIFAR-10's (see eval_set) for a CIFAR-10
        model; for a model of an image set, that set's test images, if it is one of the sets of
        the owner key `owner` here. DataUnavailableError says what is missing."""
        dataset = loaded.meta.get("dataset") or {}
        if loaded.classes == CIFAR10_CLASSES and not dataset.get("content_hash"):  # CIFAR-10 (or its stand-in)
            return self.eval_set()
        if dataset.get("name") == "CIFAR-100":
            data = self.manager.builtin[CIFAR100_KEY].get()
            return EvalSet(data.test_images, data.test_labels, f"the CIFAR-100 test set ({len(data.test_labels):,} "
                                                               "images)", full=True)
        library = self.manager.image_sets
        for entry in (library.entries(owner) if library is not None and owner is not None else []):
            if sorted(entry.counts) != sorted(loaded.classes):
                continue
            data = library.load(entry.key, owner).data
            if data.content_hash == dataset.get("content_hash") and data.image_size == loaded.image_size:
                return EvalSet(data.test_images, data.test_labels,
                               f"the {data.test_name} of {data.name} ({len(data.test_labels):,} images)", full=True)
        raise DataUnavailableError(
            f"This model was trained on {dataset.get('name', 'an image set')} ({len(loaded.classes)} classes), which "
            "is not among your data sets here. Pick the data set in the Train tab's Data panel (upload its zip), "
            "or evaluate it with `python -m cifarapp evaluate RUN_ID --data PATH`.")

    def _find_eval_set(self) -> EvalSet:
        try:
            data = self.manager.data.get() if self.data_source.is_synthetic else self.data_source.load(download=False)
            return EvalSet(data.test_images, data.test_labels,
                           f"the full {data.name} test set ({len(data.test_labels):,} images)"
                           + (f". {data.note}" if data.note else ""), full=True)
        except DataUnavailableError:
            images, labels = load_sample()
            return EvalSet(images, labels, f"a sample of {len(labels):,} CIFAR-10 test images shipped in "
                                           "assets/ (the full test set is not on this machine)", full=False)


def hardware_summary() -> str:
    """What training and inference run on here, with device on 'auto'."""
    return detect(resolve_device("auto")).describe()
