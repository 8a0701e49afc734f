"""The runs training in this process: `RunManager` starts them in background threads, limits
how many train at once, answers snapshots for the UI, stops them for their owner and applies
the app's rules for runs; it is the only holder of mutable run state. Past runs are read
through its `RunStore`; the training data is loaded once, on first use, by `LazyData`.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .config import TrainConfig
from .data import ImageData
from .estimate import format_duration, remaining_seconds
from .hardware import Measurements
from .library import ImageSetLibrary
from .runs import (
    ACTIVE_STATUSES,
    RunDir,
    RunError,
    RunSnapshot,
    RunStore,
    RunSummary,
    execute_run,
    new_run_id,
    owner_key,
)
from .train import EpochEvent, Event, StartEvent, StepEvent, check_fit


class BusyError(RunError):
    """The trainer limit is reached."""


class LazyData:
    """The training data, loaded on first use (it may be a download) and kept."""

    def __init__(self, provider: Callable[[], ImageData] | None):
        self._provider = provider
        self._data: ImageData | None = None
        self._lock = threading.Lock()

    def get(self) -> ImageData:
        with self._lock:
            if self._data is None:
                if self._provider is None:
                    raise RunError("this run manager only reads runs; it was given no training data")
                self._data = self._provider()
            return self._data

    def loaded(self) -> ImageData | None:
        """The data if it is loaded already (never loads it, never waits for a load)."""
        return self._data


@dataclass(frozen=True)
class RunRules:
    """The app's rules for runs, both off by default: a run nobody has polled for
    `abandon_after_s` seconds is stopped (a closed tab does not end a run at once, but an
    abandoned one does not hold the trainer forever), and a run is stopped after `max_run_s`
    seconds. Either way its checkpoint stays and it can be resumed."""

    abandon_after_s: float | None = None
    max_run_s: float | None = None

    def stop_reason(self, started: float, last_seen: float, now: float) -> str | None:
        """Why the rules stop a run now, if they do."""
        if self.abandon_after_s is not None and now - last_seen > self.abandon_after_s:
            return f"stopped: nobody watched this run for {format_duration(self.abandon_after_s)}"
        if self.max_run_s is not None and now - started > self.max_run_s:
            return f"stopped: this app stops runs after {format_duration(self.max_run_s)} (resume it to go on)"
        return None


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

    def snapshot(self) -> RunSnapshot:
        return RunSnapshot(self.run_dir.run_id, self.owner_key, self.status, self.message, self.config.to_dict(),
                           list(self.steps), list(self.epochs), "\n".join(self.log), self.version, self.started,
                           self.ended, self.run_dir.checkpoint.is_file(), self.compute)


class RunManager:
    """Owns all run state of the process (see the module docstring). Owners are identities
    (`ui.identity`); only their hash (`runs.owner_key`) is kept."""

    def __init__(self, runs_root: str | Path, data_provider: Callable[[], ImageData] | None = None, *,
                 max_active: int = 1, rules: RunRules = RunRules(), measurements: Measurements | None = None,
                 image_sets: ImageSetLibrary | None = None,
                 builtin: dict[str, Callable[[], ImageData]] | None = None):
        self.store = RunStore(runs_root)
        self.store.root.mkdir(parents=True, exist_ok=True)
        self.data = LazyData(data_provider)  # the default data (config.dataset empty)
        self.image_sets = image_sets  # the users' own sets (config.dataset names one)
        # other data sets the app offers by name (CIFAR-100), each loaded on first use
        self.builtin = {key: LazyData(provider) for key, provider in (builtin or {}).items()}
        self.measurements = measurements or Measurements()
        self.max_active = max_active
        self.rules = rules
        self._lock = threading.Lock()
        self._live: dict[str, _LiveRun] = {}

    def active_runs(self) -> int:
        """How many runs are training now."""
        with self._lock:
            return sum(1 for r in self._live.values() if r.ended is None)

    def start(self, config: TrainConfig | dict | None, owner: str, resume_run_id: str | None = None) -> str:
        """Validate and start a run in a background thread for the identity `owner`; return its id.
        Raises ConfigError for bad settings and BusyError when the trainer limit is reached."""
        if resume_run_id is not None:
            run_dir = self.store.run_dir(resume_run_id)
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
                run_dir = self.store.run_dir(new_run_id(config.model))
            live = _LiveRun(run_dir, config, owner_key(owner))
            self._live[run_dir.run_id] = live
        try:
            data = self.training_data(config.dataset, owner_key(owner))
            check_fit(config, data)
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

    def training_data(self, dataset: str, owner: str | None) -> ImageData:
        """The data a run of `config.dataset` trains on, for the owner key `owner` (None: any owner)."""
        if not dataset:
            return self.data.get()
        if dataset in self.builtin:
            return self.builtin[dataset].get()
        if self.image_sets is None:
            raise RunError("this app keeps no image sets; start it with a data-sets directory")
        return self.image_sets.load(dataset, owner).data

    def _busy_message(self, busy: list[_LiveRun]) -> str:
        parts = []
        for run in busy:
            last = run.steps[-1] if run.steps else {}
            remaining = remaining_seconds(last.get("step"), last.get("total_steps"), last.get("elapsed_s"))
            eta = f" for about {format_duration(remaining)} more" if remaining is not None else ""
            parts.append(f"{run.config.model} ({run.run_dir.run_id}){eta}")
        return ("Busy: the trainer is training " + ", ".join(parts) +
                f". At most {self.max_active} run(s) train at once; try again when it ends.")

    def _run(self, live: _LiveRun, data: ImageData, resume: bool) -> None:
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
                reason = self.rules.stop_reason(live.started, live.last_seen, time.time())
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
                return live.snapshot()
        return self.store.snapshot(run_id)

    def run_dir(self, run_id: str) -> RunDir:
        return self.store.run_dir(run_id)

    def list_runs(self) -> list[RunSummary]:
        """Every run, newest first (the ones training here as they are now)."""
        return [self.store.summary(self.snapshot(run_dir.run_id)) for run_dir in self.store.run_dirs()]

    def owns(self, run_id: str, identity: str | None) -> bool:
        """Whether `identity` may control run `run_id`: it is the owner, or the run has none (made
        outside the app). Controls are stopping, resuming, deleting, downloading the checkpoint
        and recording a test accuracy; curves and metrics are anyone's to see."""
        with self._lock:
            live = self._live.get(run_id)
        key = live.owner_key if live is not None else self.store.owner_key(run_id)
        return key is None or (identity is not None and owner_key(identity) == key)

    def record_evaluation(self, run_id: str, summary: dict, requester: str | None = None) -> bool:
        """Keep a run's test-set result next to it, if `requester` owns the run; returns whether
        it was recorded."""
        if not self.owns(run_id, requester):
            return False
        self.store.record_evaluation(run_id, summary)
        return True

    def delete(self, run_id: str, requester: str | None = None) -> None:
        """Remove a run's folder. A run that is still training cannot be deleted; with a
        `requester`, only their own runs (or runs made outside the app, with no owner) can."""
        self.store.run_dir(run_id)  # validates the id
        if requester is not None and not self.owns(run_id, requester):
            raise RunError(f"run {run_id} belongs to someone else; only its owner can delete it")
        with self._lock:
            live = self._live.get(run_id)
            if live is not None and live.ended is None and live.status in ACTIVE_STATUSES:
                raise RunError(f"run {run_id} is still training; stop it first")
            self._live.pop(run_id, None)
        self.store.delete(run_id)
