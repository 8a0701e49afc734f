"""Which models can be evaluated or used for prediction: shipped weights and runs with checkpoints."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from .checkpoints import CheckpointError, LoadedModel, load_model
from .manager import RunManager
from .runs import RunError
from .weights import WEIGHTS_DIR, shipped_models

SHIPPED_PREFIX = "shipped:"
RUN_PREFIX = "run:"


class ModelCatalog:
    """Lists model choices as (label, key) pairs and loads them, keeping a few in memory.

    Keys are `shipped:<name>` or `run:<run_id>`; a run stands for its best epoch's weights where
    it kept them, else its latest checkpoint, which is reloaded when it changes on disk (a run that
    is still training writes a new one every epoch).
    """

    def __init__(self, manager: RunManager, weights_dir: Path = WEIGHTS_DIR, cache_size: int = 4):
        self.manager = manager
        self.weights_dir = weights_dir
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, float], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def choices(self) -> list[tuple[str, str]]:
        """Shipped models (best first), then runs that have a checkpoint (newest first)."""
        items = [(f"shipped: {m.name} (CIFAR-10, {m.test_accuracy:.1%} test acc)", SHIPPED_PREFIX + m.name)
                 for m in shipped_models(self.weights_dir)]
        for run in self.manager.list_runs():
            run_dir = self.manager.run_dir(run.run_id)
            if run_dir.checkpoint.is_file():
                best = f", best val {run.best_val_acc:.1%}" if run.best_val_acc is not None else ""
                kept = ", its best epoch" if run_dir.best.is_file() else ""
                items.append((f"run: {run.run_id} ({run.dataset}; {run.status}{best}{kept})", RUN_PREFIX + run.run_id))
        return items

    def default_key(self) -> str | None:
        choices = self.choices()
        return choices[0][1] if choices else None

    def checkpoint_path(self, key: str) -> Path:
        """The checkpoint file behind a key (validated: it cannot point outside its folder)."""
        if not isinstance(key, str) or not key:
            raise CheckpointError("no model selected")
        if key.startswith(SHIPPED_PREFIX):
            name = key[len(SHIPPED_PREFIX):]
            for model in shipped_models(self.weights_dir):
                if model.name == name:
                    return model.checkpoint
            raise CheckpointError(f"no shipped model named {name!r}")
        if key.startswith(RUN_PREFIX):
            try:
                path = self.manager.run_dir(key[len(RUN_PREFIX):]).model_checkpoint
            except RunError as exc:
                raise CheckpointError(str(exc)) from None
            if not path.is_file():
                raise CheckpointError(f"run {key[len(RUN_PREFIX):]} has no checkpoint yet (it is written "
                                      "after the first epoch or when the run is stopped)")
            return path
        raise CheckpointError(f"unknown model choice {key!r}")

    def load(self, key: str) -> LoadedModel:
        """The model behind a key, from the cache when its file has not changed."""
        path = self.checkpoint_path(key)
        cache_key = (str(path), path.stat().st_mtime)
        with self._lock:
            if cache_key in self._cache:
                self._cache.move_to_end(cache_key)
                return self._cache[cache_key]
        loaded = load_model(path, measurements=self.manager.measurements)
        with self._lock:
            self._cache[cache_key] = loaded
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return loaded
