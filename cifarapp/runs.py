"""Runs on disk: their folders, training one run into its folder, and reading them back.

A run lives in `runs/<run_id>/`: config.json, metrics.csv (one row per event), log.txt (the
report-style lines and any failure's traceback), status.json and checkpoint.pt (atomic).
`execute_run` trains one run in the calling thread and records it (the CLI and the app's
trainer both use it); `RunStore` reads runs back, lists and deletes them, and never writes
while reading. Runs that are training in this process are `manager.RunManager`'s.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import checkpoints
from .config import TrainConfig
from .data import ImageData
from .files import atomic_write_text
from .hardware import Measurements
from .train import EndEvent, EpochEvent, Event, FitResult, StartEvent, fit
from .weights import WEIGHTS_DIR, shipped_models

RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # matched in full
METRIC_COLUMNS = ("kind", "epoch", "step", "total_steps", "loss", "lr", "images_per_s", "elapsed_s",
                  "train_loss", "train_acc", "val_loss", "val_acc", "epoch_s", "status", "message")
FINAL_STATUSES = ("finished", "stopped", "diverged", "failed", "interrupted")
ACTIVE_STATUSES = ("running", "starting")
INTERRUPTED_MESSAGE = "the process training this run stopped; resume it from its last checkpoint"

log = logging.getLogger(__name__)


class RunError(RuntimeError):
    """A run cannot be found, started or changed; the message says why."""


def owner_key(identity: str) -> str:
    """What a run keeps of its owner: a hash of the identity (a browser's token is a secret that
    must never sit in a file or a snapshot)."""
    return hashlib.sha256(identity.encode("utf-8", "replace")).hexdigest()[:32]


def stored_owner(status: dict) -> str | None:
    """The owner key of a status.json (None: a run made outside the app, owned by nobody)."""
    key = status.get("owner_key")
    if isinstance(key, str):
        return key
    legacy = status.get("owner")  # runs written before owners were stored as hashes
    return owner_key(legacy) if isinstance(legacy, str) else None


def new_run_id(model: str) -> str:
    """A sortable, unguessable id such as 20261128-224512-lenet-3f2a9c."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{model}-{secrets.token_hex(3)}"


class RunDir:
    """The files of one run. Every path is checked to stay inside the runs root."""

    def __init__(self, root: str | Path, run_id: str):
        if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id) or ".." in run_id:
            raise RunError(f"{run_id!r} is not a valid run id")
        self.root = Path(root).resolve()
        self.path = (self.root / run_id).resolve()
        if self.path.parent != self.root:
            raise RunError(f"{run_id!r} is not a valid run id")
        self.run_id = run_id

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    def exists(self) -> bool:
        return (self.path / "config.json").is_file()

    def create(self, config: TrainConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=False)
        atomic_write_text(self.path / "config.json", json.dumps(config.to_dict(), indent=2))
        with open(self.path / "metrics.csv", "w", newline="") as fh:
            csv.writer(fh).writerow(METRIC_COLUMNS)

    def read_config(self) -> TrainConfig:
        return TrainConfig.from_dict(json.loads((self.path / "config.json").read_text()))

    def append_event(self, event: Event) -> None:
        row = dataclasses.asdict(event)
        with open(self.path / "metrics.csv", "a", newline="") as fh:
            csv.writer(fh).writerow([_csv_value(row.get(c)) for c in METRIC_COLUMNS])

    def append_log(self, line: str) -> None:
        with open(self.path / "log.txt", "a") as fh:
            fh.write(line.rstrip("\n") + "\n")

    def read_log(self) -> str:
        path = self.path / "log.txt"
        return path.read_text() if path.is_file() else ""

    def write_status(self, **status) -> None:
        atomic_write_text(self.path / "status.json", json.dumps({"updated": time.time(), **status}, indent=2))

    def read_status(self) -> dict:
        try:
            return json.loads((self.path / "status.json").read_text())
        except (OSError, ValueError):
            return {"status": "unknown"}

    def read_events(self) -> list[dict]:
        """metrics.csv as dicts with numbers parsed (empty cells dropped)."""
        path = self.path / "metrics.csv"
        if not path.is_file():
            return []
        with open(path, newline="") as fh:
            return [{k: _parse(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]


def _csv_value(value) -> str:
    return "" if value is None else (f"{value:.6g}" if isinstance(value, float) else str(value))


def _parse(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def failure_message(exc: BaseException) -> str:
    """A plain explanation of why a run failed, with what to do about it."""
    text = f"{type(exc).__name__}: {exc}"
    if "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError":
        return f"out of memory on the training device: lower the batch size (or the width). ({text})"
    if isinstance(exc, OSError):
        return f"could not write the run's files: {exc.strerror or exc} ({getattr(exc, 'filename', '')}). " \
               "Free disk space or fix the runs folder's permissions."
    return text


def starting_checkpoint(name: str, runs_root: str | Path, weights_dir: Path = WEIGHTS_DIR) -> Path:
    """The checkpoint that `init_from` names: a shipped model's name or the id of a run with a checkpoint."""
    for model in shipped_models(weights_dir):
        if model.name == name:
            return model.checkpoint
    with contextlib.suppress(RunError):
        run = RunDir(runs_root, name)
        if run.checkpoint.is_file():
            return run.checkpoint
    shipped = ", ".join(m.name for m in shipped_models(weights_dir))
    raise RunError(f"nothing to start from named {name[:60]!r}: give a shipped model ({shipped}) or the id of a run "
                   "that has a checkpoint")


def execute_run(run_dir: RunDir, config: TrainConfig, data: ImageData, *,
                on_event: Callable[[Event], None] | None = None, stop: threading.Event | None = None,
                resume: bool = False, owner: str | None = None,
                on_epoch_end: Callable | None = None, measurements: Measurements | None = None) -> FitResult | None:
    """Train one run in this thread, recording everything in `run_dir` (already created).
    `owner` is the owner's key (`owner_key`), never an identity. Returns the fit result, or None
    when it failed (status.json says why).
    `on_epoch_end(epoch, model)` is passed to `fit` (benchmarks measure test accuracy with it)."""
    started = time.time()
    status = {"status": "running", "pid": os.getpid(), "started": started, "message": "", "owner_key": owner,
              "dataset": data.summary()}

    def record(event: Event) -> None:
        run_dir.append_event(event)
        if isinstance(event, EpochEvent):
            run_dir.append_log(event.report_line(config.epochs))
        elif isinstance(event, StartEvent):
            run_dir.append_log(f"hardware: {event.hardware}")
            run_dir.append_log(f"compute: {event.message}")
            status["compute"] = {**event.compute, "summary": event.message, "hardware": event.hardware}
            run_dir.write_status(**status)
        if on_event is not None:
            on_event(event)

    run_dir.write_status(**status)
    run_dir.append_log(f"{'resumed' if resume else 'started'} {time.strftime('%Y-%m-%d %H:%M:%S')} "
                       f"on {data.source}: {json.dumps(config.to_dict())}")
    result, end_status, message = None, "failed", ""
    try:
        resume_from = checkpoints.read(run_dir.checkpoint) if resume else None
        init_weights = None
        if config.init_from and not resume:
            init_weights = checkpoints.read(starting_checkpoint(config.init_from, run_dir.root))
            run_dir.append_log(f"starting from {config.init_from}")
        result = fit(config, data, run_id=run_dir.run_id, on_event=record, stop=stop,
                     checkpoint_path=run_dir.checkpoint, resume_from=resume_from, init_weights=init_weights,
                     on_epoch_end=on_epoch_end, measurements=measurements)
        end_status, message = result.status, result.message
    except Exception as exc:  # the run ends as failed with the reason; the process lives on
        message = failure_message(exc)
        log.exception("run %s failed", run_dir.run_id)
        with contextlib.suppress(OSError):
            run_dir.append_log("".join(traceback.format_exception(exc)).rstrip())
    end = EndEvent(run_dir.run_id, end_status, message, time.time() - started)
    status.update(status=end_status, ended=time.time(), message=message)
    for action in (lambda: record(end), lambda: run_dir.append_log(f"{end_status}: {message}"),
                   lambda: run_dir.write_status(**status)):
        try:
            action()
        except OSError:
            pass  # the disk that failed the run may refuse these too; the caller still gets the result
    return result


@dataclass
class RunSnapshot:
    """A copy of one run's state, safe to read while the run goes on."""

    run_id: str
    owner_key: str | None  # who may stop, delete and download it (see owner_key); None: anyone
    status: str
    message: str
    config: dict
    steps: list[dict]
    epochs: list[dict]
    log: str
    version: int  # grows with every event; equal versions mean nothing changed
    started: float | None = None
    ended: float | None = None
    has_checkpoint: bool = False
    compute: str = ""  # device, precision and layout the run trains in, and why

    @property
    def last_step(self) -> dict | None:
        return self.steps[-1] if self.steps else None


@dataclass
class RunSummary:
    run_id: str
    model: str
    status: str
    config: dict
    best_val_acc: float | None
    epochs_done: int
    duration_s: float | None
    test_acc: float | None
    dataset: str = "CIFAR-10"  # the data set's name and class count, as lists show it



class RunStore:
    """The runs on disk under one root folder: read, listed and deleted here. Reading never
    writes: a run whose status says it is training, but whose process is gone, reads as
    interrupted."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def run_dir(self, run_id: str) -> RunDir:
        """The folder of a run id (validated: it cannot point outside the runs root)."""
        return RunDir(self.root, run_id)

    def run_dirs(self) -> list[RunDir]:
        """Every run folder, newest first."""
        if not self.root.is_dir():
            return []
        dirs = []
        for path in sorted(self.root.iterdir(), reverse=True):
            try:
                run_dir = RunDir(self.root, path.name)
            except RunError:
                continue
            if run_dir.exists():
                dirs.append(run_dir)
        return dirs

    def status(self, run_dir: RunDir) -> dict:
        """status.json as it stands, with a dead process's training status read as interrupted."""
        status = run_dir.read_status()
        if status.get("status") in ACTIVE_STATUSES and not _pid_alive_other(status.get("pid")):
            status = {**status, "status": "interrupted", "message": INTERRUPTED_MESSAGE}
        return status

    def owner_key(self, run_id: str) -> str | None:
        return stored_owner(self.run_dir(run_id).read_status())

    def snapshot(self, run_id: str) -> RunSnapshot:
        """A run's state as its files record it."""
        run_dir = self.run_dir(run_id)
        if not run_dir.exists():
            raise RunError(f"no run named {run_id}")
        status = self.status(run_dir)
        events = run_dir.read_events()
        steps = [e for e in events if e.get("kind") == "step"]
        epochs = [e for e in events if e.get("kind") == "epoch"]
        log_text = "\n".join(line for line in run_dir.read_log().splitlines() if line.startswith("Epoch ["))
        compute = status.get("compute") if isinstance(status.get("compute"), dict) else {}
        return RunSnapshot(run_id, stored_owner(status), status.get("status", "unknown"), status.get("message", ""),
                           _read_json(run_dir.path / "config.json"), steps, epochs, log_text, len(events),
                           status.get("started"), status.get("ended"), run_dir.checkpoint.is_file(),
                           compute.get("summary", ""))

    def summary(self, snap: RunSnapshot) -> RunSummary:
        """A row of the runs table."""
        accs = [e["val_acc"] for e in snap.epochs if isinstance(e.get("val_acc"), (int, float))]
        duration = (snap.ended or time.time()) - snap.started if isinstance(snap.started, (int, float)) else None
        run_dir = self.run_dir(snap.run_id)
        test = _read_json(run_dir.path / "evaluation.json").get("accuracy")
        dataset = run_dir.read_status().get("dataset")
        named = (f"{dataset.get('name', 'CIFAR-10')} ({len(dataset.get('classes') or ()) or 10} classes)"
                 if isinstance(dataset, dict) else "CIFAR-10 (10 classes)")
        return RunSummary(snap.run_id, snap.config.get("model", "?"), snap.status, snap.config,
                          max(accs) if accs else None, len(snap.epochs), duration, test, named)

    def list_runs(self) -> list[RunSummary]:
        """Every run on disk, newest first."""
        return [self.summary(self.snapshot(run_dir.run_id)) for run_dir in self.run_dirs()]

    def record_evaluation(self, run_id: str, summary: dict) -> None:
        """Keep a run's test-set result next to it (shown in the runs table)."""
        atomic_write_text(self.run_dir(run_id).path / "evaluation.json", json.dumps(summary, indent=2))

    def delete(self, run_id: str) -> None:
        run_dir = self.run_dir(run_id)
        if not run_dir.exists():
            raise RunError(f"no run named {run_id}")
        shutil.rmtree(run_dir.path)


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _pid_alive_other(pid) -> bool:
    """True if `pid` is a live process other than this one (then it may still be training)."""
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
