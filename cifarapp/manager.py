"""The runs this app trains: `RunManager` starts them, limits how many train at once, answers
snapshots for the UI, stops them for their owner and applies the app's rules for runs; it is the
only holder of mutable run state. Past runs are read through its `RunStore`; the training data
is loaded once, on first use, by `LazyData`.

A run trains in one of three ways, and the UI sees the same run folder whichever it is:
- in a background thread of this process (one process; events arrive in memory);
- in processes of its own, launched with torch.distributed.run (several processes, or every run
  when the app isolates runs): a crash or an out-of-memory kill ends only that run; the
  manager follows the run folder they write, asks them to stop through a file there, and kills
  their process group if they do not stop within distributed.STOP_GRACE_S;
- on a ZeroGPU Space, as a chain of `@spaces.GPU` calls (`gpu_chunk`): each continues from the
  latest checkpoint and pauses, with a checkpoint, before its GPU time is up.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .config import TrainConfig
from .data import ImageData
from .distributed import GroupStop, launch
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
    settle_after_exit,
    stored_owner,
)
from .train import EpochEvent, Event, StartEvent, StepEvent, check_fit

# how often the manager looks at a run that trains in processes of its own
WATCH_INTERVAL_S = 0.5
# ZeroGPU: the GPU time each call asks for; a chunk pauses in time to save its checkpoint
GPU_CHUNK_ENV_VAR = "CIFARAPP_GPU_CHUNK_S"
DEFAULT_GPU_CHUNK_S = 60.0


def on_zero_gpu() -> bool:
    """Whether this app runs on a Hugging Face ZeroGPU Space (a GPU only inside @spaces.GPU calls)."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true", "t")


def gpu_decorator(duration_s: float) -> Callable[[Callable], Callable]:
    """`spaces.GPU(duration=...)` on a ZeroGPU Space; elsewhere the identity (the `spaces` package
    is only imported where it is installed and needed)."""
    if not on_zero_gpu():
        return lambda function: function
    try:
        import spaces
    except ImportError as exc:
        raise RunError("this Space runs on ZeroGPU, but the `spaces` package is missing: add `spaces` to "
                       "requirements.txt") from exc
    return spaces.GPU(duration=int(duration_s))


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
    launcher: str = "thread"  # thread | processes | gpu chunks (see the module docstring)
    thread: threading.Thread | None = None
    process: subprocess.Popen | None = None
    events_read: int = 0  # how far the run folder's metrics.csv has been read (runs outside this thread)
    status_seen: float | None = None  # the status.json update last read (runs outside this thread)
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

    @property
    def in_files(self) -> bool:
        """Whether the run's events come from its folder (another process writes them)."""
        return self.launcher != "thread"

    def snapshot(self) -> RunSnapshot:
        return RunSnapshot(self.run_dir.run_id, self.owner_key, self.status, self.message, self.config.to_dict(),
                           list(self.steps), list(self.epochs), "\n".join(self.log), self.version, self.started,
                           self.ended, self.run_dir.checkpoint.is_file(), self.compute)

    def catch_up(self) -> None:
        """Read what the run's processes wrote since the last look (events, status, log)."""
        events, self.events_read = self.run_dir.read_new_events(self.events_read)
        for event in events:
            if event.get("kind") == "step":
                self.steps.append(event)
            elif event.get("kind") == "epoch":
                self.epochs.append(event)
        status = self.run_dir.read_status()
        if self.ended is None:
            self.status = "running" if status.get("status") in (*ACTIVE_STATUSES, "unknown") else self.status
            self.message = self.message if self.stop.is_set() else status.get("message", "")
        compute = status.get("compute")
        self.compute = compute.get("summary", "") if isinstance(compute, dict) else self.compute
        self.log = [line for line in self.run_dir.read_log().splitlines()
                    if line.startswith(("Epoch [", "compute:", "calibrated", "failed:", "stopped", "finished"))]
        self.version += len(events) + (status.get("updated") != self.status_seen)
        self.status_seen = status.get("updated")


class RunManager:
    """Owns all run state of the process (see the module docstring). Owners are identities
    (`ui.identity`); only their hash (`runs.owner_key`) is kept. `worker_args` are the data
    options (`sources.DataSource.to_args`) that a run's own processes need to load the data;
    with `isolate`, every run trains in processes of its own; with `gpu_chunk_s` (and on any
    ZeroGPU Space) runs train as chains of GPU calls of that many seconds."""

    def __init__(self, runs_root: str | Path, data_provider: Callable[[], ImageData] | None = None, *,
                 max_active: int = 1, rules: RunRules = RunRules(), measurements: Measurements | None = None,
                 image_sets: ImageSetLibrary | None = None,
                 builtin: dict[str, Callable[[], ImageData]] | None = None,
                 worker_args: list[str] | None = None, isolate: bool = False,
                 gpu_chunk_s: float | None = None):
        self.store = RunStore(runs_root)
        self.store.root.mkdir(parents=True, exist_ok=True)
        self.data = LazyData(data_provider)  # the default data (config.dataset empty)
        self.image_sets = image_sets  # the users' own sets (config.dataset names one)
        # other data sets the app offers by name (CIFAR-100), each loaded on first use
        self.builtin = {key: LazyData(provider) for key, provider in (builtin or {}).items()}
        self.measurements = measurements or Measurements()
        self.max_active = max_active
        self.rules = rules
        self.worker_args = worker_args
        self.isolate = isolate
        # runs train as chains of GPU calls on ZeroGPU, or wherever a chunk length is given
        self.chunked = gpu_chunk_s is not None or on_zero_gpu()
        self.gpu_chunk_s = gpu_chunk_s or float(os.environ.get(GPU_CHUNK_ENV_VAR, DEFAULT_GPU_CHUNK_S))
        # made once, when the app is built: ZeroGPU wraps the functions it is given then
        self.gpu_chunk = gpu_decorator(self.gpu_chunk_s)(self._train_chunk)
        self._lock = threading.Lock()
        self._live: dict[str, _LiveRun] = {}
        self._jobs: dict[object, str] = {}  # other work holding a trainer slot (an lr range test): what it is

    def active_runs(self) -> int:
        """How many runs (and other training work) are using the trainer now."""
        with self._lock:
            return sum(1 for r in self._live.values() if r.ended is None) + len(self._jobs)

    def launcher_for(self, config: TrainConfig) -> str:
        """How a run of `config` trains here (see the module docstring); RunError if it cannot."""
        if self.chunked:
            if config.nproc > 1:
                raise RunError("a ZeroGPU Space lends one GPU per call; train with 1 process here")
            if config.compile:
                raise RunError("torch.compile is not available on ZeroGPU; turn the compile setting off")
            return "gpu chunks"
        if config.nproc > 1 or self.isolate:
            if self.worker_args is None:
                raise RunError("this app cannot start runs in processes of their own (it was not told where its "
                               "data comes from); train with 1 process")
            return "processes"
        return "thread"

    def start(self, config: TrainConfig | dict | None, owner: str, resume_run_id: str | None = None,
              nproc: int | None = None) -> str:
        """Validate and start a run for the identity `owner`; return its id. A resumed run may
        train with another process count (`nproc`). Raises ConfigError for bad settings and
        BusyError when the trainer limit is reached."""
        if resume_run_id is not None:
            run_dir = self.store.run_dir(resume_run_id)
            if not self.owns(resume_run_id, owner):
                raise RunError(f"run {resume_run_id} belongs to someone else; only its owner can resume it")
            if not run_dir.checkpoint.is_file():
                raise RunError(f"run {resume_run_id} has no checkpoint to resume from")
            config = run_dir.read_config()
            if nproc is not None and nproc != config.nproc:
                config = dataclasses.replace(config, nproc=nproc).validate()
        else:
            config = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
            config.validate()
        launcher = self.launcher_for(config)
        with self._lock:
            busy = [r for r in self._live.values() if r.ended is None]
            if len(busy) + len(self._jobs) >= self.max_active:
                raise BusyError(self._busy_message(busy))
            if resume_run_id is None:
                run_dir = self.store.run_dir(new_run_id(config.model))
            live = _LiveRun(run_dir, config, owner_key(owner), launcher)
            self._live[run_dir.run_id] = live
        resume = resume_run_id is not None
        try:
            data = self.training_data(config.dataset, owner_key(owner))
            check_fit(config, data)
            if resume:
                run_dir.write_config(config)
            else:
                run_dir.create(config)
            if live.in_files:
                run_dir.write_status(status="starting", owner_key=live.owner_key, started=time.time(),
                                     message="starting", nproc=config.nproc, pid=os.getpid())
                live.events_read = run_dir.read_new_events(0)[1] if resume else 0
            if launcher == "processes":
                self._launch_processes(live, resume)
        except BaseException:
            with self._lock:
                del self._live[run_dir.run_id]
            raise
        if launcher == "processes":
            target, args = self._watch, (live,)
        elif launcher == "gpu chunks":
            target, args = self._run_chunks, (live, data, resume)
        else:
            target, args = self._run, (live, data, resume)
        # the thread sees this request's context: ZeroGPU counts GPU time against the user who started the run
        context = contextvars.copy_context()
        live.thread = threading.Thread(target=context.run, args=(target, *args), name=f"train-{run_dir.run_id}",
                                       daemon=True)
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
        parts += list(self._jobs.values())
        return ("Busy: the trainer is training " + ", ".join(parts) +
                f". At most {self.max_active} run(s) train at once; try again when it ends.")

    @contextlib.contextmanager
    def trainer_slot(self, what: str) -> Iterator[None]:
        """Hold a trainer slot for other training work (`what` says what it is, for the busy message)."""
        with self._lock:
            busy = [r for r in self._live.values() if r.ended is None]
            if len(busy) + len(self._jobs) >= self.max_active:
                raise BusyError(self._busy_message(busy))
            token = object()
            self._jobs[token] = what
        try:
            yield
        finally:
            with self._lock:
                del self._jobs[token]

    def _event_handler(self, live: _LiveRun) -> Callable[[Event], None]:
        """What a run in a thread of this process does with its events: keep them for snapshots
        and apply the app's rules."""
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
            self._apply_rules(live)

        return on_event

    def _apply_rules(self, live: _LiveRun) -> None:
        reason = self.rules.stop_reason(live.started, live.last_seen, time.time())
        if reason and not live.stop.is_set():
            live.message = reason
            live.stop.set()
            if live.in_files:
                live.run_dir.request_stop()

    def _run(self, live: _LiveRun, data: ImageData, resume: bool) -> None:
        if resume:
            earlier = live.run_dir.read_events()  # the curves continue from where the run stopped
            live.steps.extend(e for e in earlier if e.get("kind") == "step")
            live.epochs.extend(e for e in earlier if e.get("kind") == "epoch")
        execute_run(live.run_dir, live.config, data, on_event=self._event_handler(live), stop=live.stop,
                    resume=resume, owner=live.owner_key, measurements=self.measurements)
        self._finish(live)

    def _finish(self, live: _LiveRun) -> None:
        """Record the end of a run (its status is on disk)."""
        status = live.run_dir.read_status()
        calibrated = [line for line in live.run_dir.read_log().splitlines() if line.startswith("calibrated")][-1:]
        with self._lock:
            if live.in_files:
                live.catch_up()
            else:
                live.log.extend(calibrated)
            live.status = status.get("status", "failed")
            live.message = live.message if live.status == "stopped" and live.message else status.get("message", "")
            live.log.append(f"{live.status}: {live.message}")
            live.ended = time.time()
            live.version += 1

    def _launch_processes(self, live: _LiveRun, resume: bool) -> None:
        """Start the run's own processes with torch.distributed.run (their output goes to the
        run folder's processes.log)."""
        args = ["worker", live.run_dir.run_id, "--runs-dir", str(self.store.root), "--owner-key", live.owner_key,
                *(self.worker_args or []), *(["--resume"] if resume else [])]
        with open(live.run_dir.path / "processes.log", "ab") as output:
            live.process = launch(live.config.nproc, args, stdout=output, stderr=subprocess.STDOUT)

    def _watch(self, live: _LiveRun) -> None:
        """Follow a run that trains in processes of its own until they exit: pass stop requests
        on, apply the rules, and end the run as failed if the processes die without saying why."""
        process = live.process
        group = GroupStop(process)
        while process.poll() is None:
            time.sleep(WATCH_INTERVAL_S)
            with self._lock:
                live.catch_up()
            self._apply_rules(live)
            if live.stop.is_set() and group.asked_at is None:
                live.run_dir.request_stop()
                group.ask()
            group.enforce()
        log_path = live.run_dir.path / "processes.log"
        tail = log_path.read_bytes()[-16_384:].decode("utf-8", "replace") if log_path.is_file() else ""
        settle_after_exit(live.run_dir, process.returncode, tail)
        self._finish(live)

    def _run_chunks(self, live: _LiveRun, data: ImageData, resume: bool) -> None:
        """Train a run as a chain of GPU calls (ZeroGPU; elsewhere the calls run here in turn),
        each continuing from the checkpoint the one before it left."""
        status = self.gpu_chunk(live.run_dir.run_id, resume)
        while status == "paused" and not live.stop.is_set():
            with self._lock:
                live.catch_up()
            self._apply_rules(live)
            status = self.gpu_chunk(live.run_dir.run_id, True)
        if status == "paused":  # stopped between two chunks: the last checkpoint is where it stands
            live.run_dir.write_status(**{**live.run_dir.read_status(), "status": "stopped", "ended": time.time(),
                                         "message": live.message or "stopped by its owner"})
        self._finish(live)

    def _train_chunk(self, run_id: str, resume: bool) -> str:
        """One GPU call of a chained run: train from the latest checkpoint until the call's time
        is nearly up; return how it ended ("paused": more to do). On ZeroGPU this runs in a
        forked process, so it reports through the run folder only."""
        deadline = time.monotonic() + self.gpu_chunk_s
        live = self._live[run_id]
        data = self.training_data(live.config.dataset, None)
        result = execute_run(live.run_dir, live.config, data, stop=live.stop, resume=resume,
                             owner=live.owner_key, measurements=self.measurements, deadline=deadline)
        return result.status if result is not None else "failed"

    def latest_run_of(self, owner: str) -> str | None:
        """The id of the owner's most recently started run in this process, if any."""
        key = owner_key(owner)
        with self._lock:
            mine = [r for r in self._live.values() if r.owner_key == key]
        return max(mine, key=lambda r: r.started).run_dir.run_id if mine else None

    def stop(self, run_id: str, owner: str) -> bool:
        """Ask the owner's run to stop at its next step. Returns False if it is not theirs or not
        running. A run whose processes outlived an earlier app (they are their own process group)
        is asked through its folder too."""
        with self._lock:
            live = self._live.get(run_id)
            if live is None:
                return self._stop_outside(run_id, owner)
            if live.owner_key != owner_key(owner) or live.ended is not None:
                return False
            live.stop.set()
            live.message = "stopped by its owner"
            if live.in_files:
                live.run_dir.request_stop()
            return True

    def _stop_outside(self, run_id: str, owner: str) -> bool:
        try:
            run_dir = self.store.run_dir(run_id)
        except RunError:
            return False
        status = self.store.status(run_dir)
        if status.get("status") not in ACTIVE_STATUSES or stored_owner(status) != owner_key(owner):
            return False
        run_dir.request_stop()
        return True

    def wait(self, run_id: str, timeout: float | None = None) -> RunSnapshot:
        """Block until the run ends (for the CLI and tests), then return its snapshot."""
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
                if live.in_files and live.ended is None:
                    live.catch_up()
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
