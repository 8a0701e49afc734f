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
import math
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

from . import calibration, checkpoints
from .config import TrainConfig
from .data import ImageData
from .distributed import World, current_world, root_cause, signal_name
from .files import atomic_write_text
from .hardware import Measurements
from .train import EndEvent, EpochEvent, Event, FitResult, StartEvent, StopSignal, fit
from .weights import WEIGHTS_DIR, shipped_models

RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # matched in full
METRIC_COLUMNS = ("kind", "epoch", "step", "total_steps", "loss", "lr", "images_per_s", "elapsed_s",
                  "train_loss", "train_acc", "val_loss", "val_acc", "epoch_s", "status", "message")
FINAL_STATUSES = ("finished", "stopped", "diverged", "failed", "interrupted")
ACTIVE_STATUSES = ("running", "starting")
INTERRUPTED_MESSAGE = "the process training this run stopped; resume it from its last checkpoint"
# how often a run's processes look for a stop request in its folder
STOP_FILE_CHECK_S = 0.2

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
        """The latest checkpoint: what a resumed run continues from."""
        return self.path / "checkpoint.pt"

    @property
    def best(self) -> Path:
        """The best epoch's weights, when the run keeps the best epoch."""
        return self.path / "best.pt"

    @property
    def model_checkpoint(self) -> Path:
        """The weights that stand for the run in Evaluate, Predict and exports: the best epoch's
        where the run kept it, else the latest."""
        return self.best if self.best.is_file() else self.checkpoint

    @property
    def stop_file(self) -> Path:
        """Created to ask the run's processes to stop at their next step (see StopFile)."""
        return self.path / "stop-requested"

    def request_stop(self) -> None:
        self.stop_file.touch()

    def error_file(self, rank: int) -> Path:
        """Where process `rank` of a multi-process run writes why it failed."""
        return self.path / f"process-{rank}-error.txt"

    def exists(self) -> bool:
        return (self.path / "config.json").is_file()

    def create(self, config: TrainConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=False)
        self.write_config(config)
        with open(self.path / "metrics.csv", "w", newline="") as fh:
            csv.writer(fh).writerow(METRIC_COLUMNS)

    def read_config(self) -> TrainConfig:
        return TrainConfig.from_dict(json.loads((self.path / "config.json").read_text()))

    def write_config(self, config: TrainConfig) -> None:
        atomic_write_text(self.path / "config.json", json.dumps(config.to_dict(), indent=2))

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
        return self.read_new_events(0)[0]

    def read_new_events(self, offset: int) -> tuple[list[dict], int]:
        """The events written to metrics.csv after byte `offset` (0: all of them), and the offset
        to read from next time: a reader that follows a run another process writes parses each
        line once. A line still being written is left for the next read."""
        path = self.path / "metrics.csv"
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
        except OSError:
            return [], offset
        complete = chunk[:chunk.rfind(b"\n") + 1]
        lines = complete.decode("utf-8", errors="replace").splitlines()
        if offset == 0:
            lines = lines[1:]  # the header
        rows = csv.DictReader(lines, fieldnames=METRIC_COLUMNS)
        return ([{k: _parse(v) for k, v in row.items() if v not in ("", None) and k is not None} for row in rows],
                offset + len(complete))


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
    """The checkpoint a model name stands for (`init_from`, the CLI's model arguments): a shipped
    model's name, or the id of a run with a checkpoint (its best epoch's where it kept one)."""
    for model in shipped_models(weights_dir):
        if model.name == name:
            return model.checkpoint
    with contextlib.suppress(RunError):
        run = RunDir(runs_root, name)
        if run.model_checkpoint.is_file():
            return run.model_checkpoint
    shipped = ", ".join(m.name for m in shipped_models(weights_dir))
    raise RunError(f"nothing to start from named {name[:60]!r}: give a shipped model ({shipped}) or the id of a run "
                   "that has a checkpoint")


class StopFile:
    """A stop request kept as a file in the run's folder, so that a process that did not start
    the run (the app that launched it, or a later GPU chunk's caller) can ask for it. Looked at
    no more often than every STOP_FILE_CHECK_S seconds."""

    def __init__(self, path: Path):
        self.path = path
        self._checked = -math.inf
        self._set = False

    def is_set(self) -> bool:
        now = time.monotonic()
        if not self._set and now - self._checked >= STOP_FILE_CHECK_S:
            self._checked = now
            self._set = self.path.exists()
        return self._set


class AnyStop:
    """Set when any of its signals is."""

    def __init__(self, *signals: StopSignal):
        self.signals = signals

    def is_set(self) -> bool:
        return any(signal.is_set() for signal in self.signals)


def starting_weights(config: TrainConfig, runs_root: str | Path) -> dict | None:
    """The checkpoint `config.init_from` names (a shipped model or a run), if any."""
    return checkpoints.read(starting_checkpoint(config.init_from, runs_root)) if config.init_from else None


def _starting_payloads(run_dir: RunDir, config: TrainConfig, resume: bool, world: World) -> tuple:
    """(checkpoint to resume from, checkpoint to start from), read by process 0 and given to all."""
    payloads = (None, None)
    if world.is_main:
        resume_from = checkpoints.read(run_dir.checkpoint) if resume else None
        payloads = (resume_from, None if resume else starting_weights(config, run_dir.root))
    return world.broadcast(payloads)


def _calibrate(run_dir: RunDir, data: ImageData, measurements: Measurements | None) -> str:
    """Fit the temperature of the run's checkpoints on its validation images; what to log."""
    lines = []
    for path in (run_dir.checkpoint, run_dir.best):
        if not path.is_file():
            continue
        try:
            fitted = calibration.calibrate_checkpoint(path, data, measurements=measurements)
        except calibration.CalibrationError as exc:
            return f"probabilities are not calibrated: {exc}"
        lines.append(f"{path.name}: {fitted.describe()}")
    return "calibrated " + "; ".join(lines) if lines else ""


def execute_run(run_dir: RunDir, config: TrainConfig, data: ImageData, *,
                on_event: Callable[[Event], None] | None = None, stop: StopSignal | None = None,
                resume: bool = False, owner: str | None = None,
                on_epoch_end: Callable | None = None, measurements: Measurements | None = None,
                deadline: float | None = None) -> FitResult | None:
    """Train one run in this thread, recording everything in `run_dir` (already created).
    `owner` is the owner's key (`owner_key`), never an identity. Returns the fit result, or None
    when it failed (status.json says why). A stop request in the run's folder (`RunDir.request_stop`)
    stops it like `stop`. With a `deadline` the run may end paused, still "running" on disk, to be
    continued by another call with `resume=True` (a chunk of a longer run).
    `on_epoch_end(epoch, model)` is passed to `fit` (benchmarks measure test accuracy with it).

    In a process group every process calls it: process 0 records the run, the others train
    their share and write only the reason they failed, if they do."""
    world = current_world()
    stop = AnyStop(stop or threading.Event(), StopFile(run_dir.stop_file))
    if not world.is_main:
        try:
            resume_from, init_weights = _starting_payloads(run_dir, config, resume, world)
            return fit(config, data, run_id=run_dir.run_id, stop=stop, resume_from=resume_from,
                       init_weights=init_weights, measurements=measurements, deadline=deadline)
        except Exception as exc:
            with contextlib.suppress(OSError):
                atomic_write_text(run_dir.error_file(world.rank), f"{failure_message(exc)}\n\n"
                                  + "".join(traceback.format_exception(exc)))
            raise
    started = time.time()
    previous = run_dir.read_status()  # a resumed run's, or what the app that launched this one wrote
    status = {"status": "running", "pid": os.getpid(), "message": "", "dataset": data.summary(), "nproc": world.size,
              "started": previous.get("started", started) if resume else started,
              "owner_key": owner if owner is not None else stored_owner(previous)}

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

    run_dir.stop_file.unlink(missing_ok=True)
    run_dir.write_status(**status)
    how = "continued" if resume and deadline is not None else "resumed" if resume else "started"
    processes = f" with {world.size} processes" if world.distributed else ""
    run_dir.append_log(f"{how} {time.strftime('%Y-%m-%d %H:%M:%S')}{processes} on {data.source}: "
                       f"{json.dumps(config.to_dict())}")
    result, end_status, message = None, "failed", ""
    try:
        resume_from, init_weights = _starting_payloads(run_dir, config, resume, world)
        if init_weights is not None:
            run_dir.append_log(f"starting from {config.init_from}")
        result = fit(config, data, run_id=run_dir.run_id, on_event=record, stop=stop,
                     checkpoint_path=run_dir.checkpoint, best_path=run_dir.best if config.keep_best else None,
                     resume_from=resume_from, init_weights=init_weights, on_epoch_end=on_epoch_end,
                     measurements=measurements, deadline=deadline)
        end_status, message = result.status, result.message
        if result.best_epoch is not None:
            status["best_epoch"] = result.best_epoch
        if end_status == "paused":
            status.update(message=f"{message}; continues from its checkpoint")
            run_dir.write_status(**status)
            return result
        if end_status in ("finished", "stopped"):
            calibrated = _calibrate(run_dir, data, measurements)
            if calibrated:
                run_dir.append_log(calibrated)
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


def settle_after_exit(run_dir: RunDir, returncode: int | None, launcher_output: str = "") -> dict:
    """After the processes of a run launched on their own have exited: if they left the run
    looking active, or failed, record why in words: a process that torch.distributed.run's
    summary names as killed first (say, by the kernel when memory ran out), else the messages of
    the processes that failed first: process 0's where it failed before the others (say, timed
    out waiting for a frozen one, whose lost connection came after), else the others' own, else
    how the launcher ended. Returns the run's final status."""
    status = run_dir.read_status()
    if status.get("status") in ("finished", "stopped", "diverged"):
        return status
    reasons = []
    cause = root_cause(launcher_output)
    if cause is not None and "killed" in cause:  # the others' lost connections are what followed from it
        reasons.append(cause + "; the other processes stopped with it")
    main_failed_at = status.get("ended", math.inf) if status.get("status") == "failed" and status.get("message") \
        else math.inf
    for path in [] if reasons else sorted(run_dir.path.glob("process-*-error.txt")):
        if path.stat().st_mtime > main_failed_at:
            continue  # it failed after process 0 did: a consequence
        rank = path.stem.split("-")[1]
        first = path.read_text(errors="replace").strip().splitlines()[:1]
        reasons.append(f"process {rank} failed: {first[0] if first else 'no message'}")
    if not reasons and main_failed_at < math.inf:
        return status  # process 0 recorded its own failure, and it came first
    if not reasons:
        if returncode is not None and returncode < 0:
            reasons.append(f"the training processes were killed by {signal_name(-returncode)}")
        else:
            tail = launcher_output.strip().splitlines()[-1:]
            reasons.append(f"the training processes exited with status {returncode}"
                           + (f": {tail[0][:300]}" if tail else ""))
    message = "; ".join(reasons)
    status.update(status="failed", ended=time.time(), message=message)
    run_dir.append_log(f"failed: {message}")
    run_dir.write_status(**{k: v for k, v in status.items() if k != "updated"})
    return status


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
