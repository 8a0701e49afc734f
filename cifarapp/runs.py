"""Runs: their folders on disk, and the manager that owns every run in this process.

A run lives in `runs/<run_id>/`: config.json, metrics.csv (one row per event), log.txt (the
report-style lines), status.json and checkpoint.pt (atomic). `execute_run` trains one run in
the calling thread (the CLI uses it directly); `RunManager` starts runs in background threads,
answers snapshots for the UI, stops them, and is the only holder of mutable run state.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import checkpoints
from .data import CifarData
from .estimate import format_duration, remaining_seconds
from .files import atomic_write_text
from .hardware import Measurements
from .config import TrainConfig
from .train import EndEvent, EpochEvent, Event, FitResult, StartEvent, StepEvent, fit

RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # matched in full
METRIC_COLUMNS = ("kind", "epoch", "step", "total_steps", "loss", "lr", "images_per_s", "elapsed_s",
                  "train_loss", "train_acc", "val_loss", "val_acc", "epoch_s", "status", "message")
FINAL_STATUSES = ("finished", "stopped", "diverged", "failed", "interrupted")


class RunError(RuntimeError):
    """A run cannot be found, started or changed; the message says why."""


class BusyError(RunError):
    """The trainer limit is reached."""


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


def execute_run(run_dir: RunDir, config: TrainConfig, data: CifarData, *,
                on_event: Callable[[Event], None] | None = None, stop: threading.Event | None = None,
                resume: bool = False, owner: str | None = None,
                on_epoch_end: Callable | None = None, measurements: Measurements | None = None) -> FitResult | None:
    """Train one run in this thread, recording everything in `run_dir` (already created).
    `owner` is the owner's key (`owner_key`), never an identity. Returns the fit result, or None
    when it failed (status.json says why).
    `on_epoch_end(epoch, model)` is passed to `fit` (benchmarks measure test accuracy with it)."""
    started = time.time()
    resume_from = checkpoints.read(run_dir.checkpoint) if resume else None
    status = {"status": "running", "pid": os.getpid(), "started": started, "message": "", "owner_key": owner}

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
        result = fit(config, data, run_id=run_dir.run_id, on_event=record, stop=stop,
                     checkpoint_path=run_dir.checkpoint, resume_from=resume_from, on_epoch_end=on_epoch_end,
                     measurements=measurements)
        end_status, message = result.status, result.message
    except Exception as exc:  # the run ends as failed with the reason; the process lives on
        message = failure_message(exc)
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
class _LiveRun:
    run_dir: RunDir
    config: TrainConfig
    owner_key: str
    thread: threading.Thread | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    steps: list[dict] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    status: str = "starting"
    message: str = ""
    version: int = 0
    started: float = field(default_factory=time.time)
    ended: float | None = None
    last_seen: float = field(default_factory=time.time)
    compute: str = ""


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


class RunManager:
    """Owns all run state of the process: starts runs in background threads, limits how many
    train at once, answers snapshots, stops runs for their owner, lists and deletes past runs.

    Two rules for a shared app, both off by default: a run nobody has polled for
    `abandon_after_s` seconds is stopped (a closed tab does not end a run at once, but an
    abandoned one does not hold the trainer forever), and a run is stopped after `max_run_s`
    seconds of training. Either way its checkpoint stays and it can be resumed.
    """

    def __init__(self, runs_root: str | Path, data_provider: Callable[[], CifarData] | None = None, *,
                 max_active: int = 1, abandon_after_s: float | None = None, max_run_s: float | None = None,
                 measurements: Measurements | None = None):
        self.root = Path(runs_root)
        self.measurements = measurements or Measurements()
        self.root.mkdir(parents=True, exist_ok=True)
        self._data_provider = data_provider
        self._data: CifarData | None = None
        self.max_active = max_active
        self.abandon_after_s = abandon_after_s
        self.max_run_s = max_run_s
        self._lock = threading.Lock()
        self._data_lock = threading.Lock()
        self._live: dict[str, _LiveRun] = {}
        self._mark_interrupted()

    def _mark_interrupted(self) -> None:
        """Runs left 'running' by a process that no longer runs them were interrupted."""
        for run_dir in self._run_dirs():
            status = run_dir.read_status()
            if status.get("status") in ("running", "starting") and not _pid_alive_other(status.get("pid")):
                run_dir.write_status(**{**status, "status": "interrupted",
                                        "message": "the app stopped while this run was training; "
                                                   "resume it from its last checkpoint"})

    def _run_dirs(self) -> list[RunDir]:
        dirs = []
        for path in sorted(self.root.iterdir(), reverse=True):
            try:
                run_dir = RunDir(self.root, path.name)
            except RunError:
                continue
            if run_dir.exists():
                dirs.append(run_dir)
        return dirs

    def loaded_data(self) -> CifarData | None:
        """The dataset if it is loaded already (never loads it, never waits for a load)."""
        return self._data

    def active_runs(self) -> int:
        """How many runs are training now."""
        with self._lock:
            return sum(1 for r in self._live.values() if r.ended is None)

    def data(self) -> CifarData:
        """The dataset, loaded on first use (may download)."""
        with self._data_lock:
            if self._data is None:
                if self._data_provider is None:
                    raise RunError("this run manager only reads runs; it was given no training data")
                self._data = self._data_provider()
            return self._data

    def start(self, config: TrainConfig | dict, owner: str, resume_run_id: str | None = None) -> str:
        """Validate and start a run in a background thread for the identity `owner`; return its id.
        Raises ConfigError for bad settings and BusyError when the trainer limit is reached."""
        if resume_run_id is not None:
            run_dir = self.run_dir(resume_run_id)
            if not self.owns(resume_run_id, owner):
                raise RunError(f"run {resume_run_id} belongs to someone else; only its owner can resume it")
            if not run_dir.checkpoint.is_file():
                raise RunError(f"run {resume_run_id} has no checkpoint to resume from")
            config = run_dir.read_config()
        else:
            config = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
            config.validate()
        with self._lock:
            busy = [r for r in self._live.values() if r.ended is None]
            if len(busy) >= self.max_active:
                raise BusyError(self._busy_message(busy))
            if resume_run_id is None:
                run_dir = RunDir(self.root, new_run_id(config.model))
            live = _LiveRun(run_dir, config, owner_key(owner))
            self._live[run_dir.run_id] = live
        try:
            data = self.data()
            config.validate(len(data.train_images))
            if resume_run_id is None:
                run_dir.create(config)
        except BaseException:
            with self._lock:
                del self._live[run_dir.run_id]
            raise
        live.thread = threading.Thread(target=self._run, args=(live, data, resume_run_id is not None),
                                       name=f"train-{run_dir.run_id}", daemon=True)
        live.status = "running"
        live.thread.start()
        return run_dir.run_id

    def _busy_message(self, busy: list[_LiveRun]) -> str:
        parts = []
        for run in busy:
            last = run.steps[-1] if run.steps else {}
            remaining = remaining_seconds(last.get("step"), last.get("total_steps"), last.get("elapsed_s"))
            eta = f" for about {format_duration(remaining)} more" if remaining is not None else ""
            parts.append(f"{run.config.model} ({run.run_dir.run_id}){eta}")
        return ("Busy: the trainer is training " + ", ".join(parts) +
                f". At most {self.max_active} run(s) train at once; try again when it ends.")

    def _run(self, live: _LiveRun, data: CifarData, resume: bool) -> None:
        def on_event(event: Event) -> None:
            row = dataclasses.asdict(event)
            with self._lock:
                if isinstance(event, StartEvent):
                    live.compute = event.message
                    live.log.append(f"compute: {event.message}")
                elif isinstance(event, StepEvent):
                    live.steps.append(row)
                elif isinstance(event, EpochEvent):
                    live.epochs.append(row)
                    live.log.append(event.report_line(live.config.epochs))
                live.version += 1
                reason = self._stop_reason(live)
            if reason and not live.stop.is_set():
                live.message = reason
                live.stop.set()

        if resume:
            earlier = live.run_dir.read_events()  # the curves continue from where the run stopped
            live.steps.extend(e for e in earlier if e.get("kind") == "step")
            live.epochs.extend(e for e in earlier if e.get("kind") == "epoch")
        execute_run(live.run_dir, live.config, data, on_event=on_event, stop=live.stop, resume=resume,
                    owner=live.owner_key, measurements=self.measurements)
        status = live.run_dir.read_status()
        with self._lock:
            live.status = status.get("status", "failed")
            live.message = live.message if live.status == "stopped" and live.message else status.get("message", "")
            live.log.append(f"{live.status}: {live.message}")
            live.ended = time.time()
            live.version += 1

    def _stop_reason(self, live: _LiveRun) -> str | None:
        """Why the app's rules stop a run now (abandoned, or longer than allowed), if they do."""
        now = time.time()
        if self.abandon_after_s is not None and now - live.last_seen > self.abandon_after_s:
            return f"stopped: nobody watched this run for {format_duration(self.abandon_after_s)}"
        if self.max_run_s is not None and now - live.started > self.max_run_s:
            return f"stopped: this app stops runs after {format_duration(self.max_run_s)} (resume it to go on)"
        return None

    def latest_run_of(self, owner: str) -> str | None:
        """The id of the owner's most recently started run in this process, if any."""
        key = owner_key(owner)
        with self._lock:
            mine = [r for r in self._live.values() if r.owner_key == key]
        return max(mine, key=lambda r: r.started).run_dir.run_id if mine else None

    def stop(self, run_id: str, owner: str) -> bool:
        """Ask the owner's run to stop at its next step. Returns False if it is not theirs or not running."""
        with self._lock:
            live = self._live.get(run_id)
            if live is None or live.owner_key != owner_key(owner) or live.ended is not None:
                return False
            live.stop.set()
            live.message = "stopped by its owner"
            return True

    def wait(self, run_id: str, timeout: float | None = None) -> RunSnapshot:
        """Block until the run's thread ends (for the CLI and tests), then return its snapshot."""
        live = self._live.get(run_id)
        if live is not None and live.thread is not None:
            live.thread.join(timeout)
        return self.snapshot(run_id)

    def snapshot(self, run_id: str, viewer: str | None = None) -> RunSnapshot:
        """A copy of the run's state. A poll by the run's owner counts as someone watching."""
        with self._lock:
            live = self._live.get(run_id)
            if live is not None:
                if viewer is not None and owner_key(viewer) == live.owner_key:
                    live.last_seen = time.time()
                return self._snapshot_live(live)
        return self._snapshot_disk(self.run_dir(run_id))

    def _snapshot_live(self, live: _LiveRun) -> RunSnapshot:
        return RunSnapshot(live.run_dir.run_id, live.owner_key, live.status, live.message, live.config.to_dict(),
                           list(live.steps), list(live.epochs), "\n".join(live.log), live.version,
                           live.started, live.ended, live.run_dir.checkpoint.is_file(), live.compute)

    def _snapshot_disk(self, run_dir: RunDir) -> RunSnapshot:
        if not run_dir.exists():
            raise RunError(f"no run named {run_dir.run_id}")
        status = run_dir.read_status()
        events = run_dir.read_events()
        steps = [e for e in events if e.get("kind") == "step"]
        epochs = [e for e in events if e.get("kind") == "epoch"]
        log = "\n".join(line for line in run_dir.read_log().splitlines() if line.startswith("Epoch ["))
        return RunSnapshot(run_dir.run_id, stored_owner(status), status.get("status", "unknown"), status.get("message", ""),
                           json.loads((run_dir.path / "config.json").read_text()), steps, epochs, log,
                           len(events), status.get("started"), status.get("ended"), run_dir.checkpoint.is_file(),
                           (status.get("compute") or {}).get("summary", ""))

    def run_dir(self, run_id: str) -> RunDir:
        """The folder of a run id (validated; it cannot point outside the runs root)."""
        return RunDir(self.root, run_id)

    def list_runs(self) -> list[RunSummary]:
        """Every run on disk, newest first."""
        summaries = []
        for run_dir in self._run_dirs():
            snap = self.snapshot(run_dir.run_id)
            accs = [e["val_acc"] for e in snap.epochs if isinstance(e.get("val_acc"), (int, float))]
            duration = (snap.ended or time.time()) - snap.started if snap.started else None
            test = _read_json(run_dir.path / "evaluation.json").get("accuracy")
            summaries.append(RunSummary(run_dir.run_id, snap.config.get("model", "?"), snap.status, snap.config,
                                        max(accs) if accs else None, len(snap.epochs), duration, test))
        return summaries

    def owns(self, run_id: str, identity: str | None) -> bool:
        """Whether `identity` may control run `run_id`: it is the owner, or the run has none (made
        outside the app). Controls are stopping, resuming, deleting, downloading the checkpoint
        and recording a test accuracy; curves and metrics are anyone's to see."""
        with self._lock:
            live = self._live.get(run_id)
            key = live.owner_key if live is not None else stored_owner(self.run_dir(run_id).read_status())
        return key is None or (identity is not None and owner_key(identity) == key)

    def record_evaluation(self, run_id: str, summary: dict, requester: str | None = None) -> bool:
        """Keep a run's test-set result next to it (shown in the runs table), if `requester` owns
        the run; returns whether it was recorded."""
        if not self.owns(run_id, requester):
            return False
        atomic_write_text(self.run_dir(run_id).path / "evaluation.json", json.dumps(summary, indent=2))
        return True

    def delete(self, run_id: str, requester: str | None = None) -> None:
        """Remove a run's folder. A run that is still training cannot be deleted; with a
        `requester`, only their own runs (or runs made outside the app, with no owner) can."""
        run_dir = self.run_dir(run_id)
        if requester is not None and not self.owns(run_id, requester):
            raise RunError(f"run {run_id} belongs to someone else; only its owner can delete it")
        with self._lock:
            live = self._live.get(run_id)
            if live is not None and live.ended is None:
                raise RunError(f"run {run_id} is still training; stop it first")
            self._live.pop(run_id, None)
        if not run_dir.exists():
            raise RunError(f"no run named {run_id}")
        shutil.rmtree(run_dir.path)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


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

