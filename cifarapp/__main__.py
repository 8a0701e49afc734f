"""Command line: `python -m cifarapp train|resume|lr-find|evaluate|predict|calibrate|export|runs|data ...`
on the app's engine."""

from __future__ import annotations

import argparse
import codecs
import dataclasses
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from . import checkpoints
from .calibration import CalibrationError, calibrate_checkpoint
from .config import ConfigError, TrainConfig, cli_command, settings
from .data import DataUnavailableError, ImageData
from .distributed import (
    SINGLE,
    DistributedError,
    GroupStop,
    World,
    join_world,
    launch,
    launched_by_torchrun,
    leave_world,
)
from .estimate import BUDGETS, duration_on, format_duration, plan_for_budget, remaining_seconds
from .evaluate import evaluate
from .export import FORMATS, ExportError
from .files import atomic_write_text
from .hardware import Measurements
from .images import ImageError
from .imagesets import ImageSetError, load_image_set
from .inference import TTA_MODES
from .library import ImageSetLibrary
from .lr_finder import DEFAULT_LR_MAX, DEFAULT_LR_MIN, DEFAULT_STEPS, find_lr
from .predict import predict, top_k, verdict
from .presets import BUDGET_BASE, PRESETS
from .runs import (
    RunDir,
    RunError,
    RunStore,
    execute_run,
    new_run_id,
    settle_after_exit,
    starting_checkpoint,
    starting_weights,
)
from .sources import CIFAR100_KEY, DataSource, add_data_options, add_image_set_options
from .train import EndEvent, EpochEvent, StartEvent, StepEvent, TrainingError, check_fit
from .weights import calibrate_shipped, default_checkpoint, export_shipped, shipped_models

EXIT_INTERRUPTED = 130  # the shell's convention for a program ended by Ctrl-C (SIGINT)


def print_progress(done: int, total: int, what: str = "preparing images") -> None:
    """A one-line progress counter on stderr."""
    sys.stderr.write(f"\r{what} {done:,}/{total:,}" + ("\n" if done == total else ""))
    sys.stderr.flush()


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """--preset, one option per setting of config.py, and --config: what describes a training."""
    parser.add_argument("--preset", choices=sorted(PRESETS), help="start from a named setup (options override it)")
    defaults = TrainConfig()
    for f, spec in settings():
        if not spec.cli:
            continue
        flag = "--" + f.name.replace("_", "-")
        text = spec.help + (f"; one of {', '.join(spec.choices)}" if spec.choices else "")
        if spec.low is not None or spec.high is not None:
            text += f"; {spec.range_text()}"
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, default=None, help=f"{text} (default {getattr(defaults, f.name)})")
    parser.add_argument("--config", help="a JSON config file (as saved by the app); options override it")
    add_data_options(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cifarapp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    runs_dir = argparse.ArgumentParser(add_help=False)  # the option every command on runs shares
    runs_dir.add_argument("--runs-dir", default="runs", help="the folder of run folders (default: runs)")

    def on_runs(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[runs_dir], **kwargs)

    train = on_runs("train", help="train a model; prints the report's epoch lines",
                    description="Train a model. --nproc N trains with N processes (torch.distributed.run; "
                                "one per GPU, or gloo on the CPU); `torchrun ... -m cifarapp train` works too.")
    add_train_options(train)
    train.add_argument("--budget", type=float, metavar="SECONDS",
                       help="size the fast recipe to about this many seconds on this machine (measured): "
                            "picks fastnet's width, epochs and low-res epochs; other options still override "
                            f"(the app offers {', '.join(str(s) for s in BUDGETS.values())})")

    resume = on_runs("resume", help="continue a stopped or interrupted run from its checkpoint")
    resume.add_argument("run_id")
    resume.add_argument("--nproc", type=int, help="continue with this many processes (default: as it ran)")
    add_data_options(resume)

    worker = on_runs("worker", help="train a run folder's config as one of its processes (what --nproc "
                                    "and the app start through torch.distributed.run)")
    worker.add_argument("run_id")
    worker.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    worker.add_argument("--owner-key", help="the owner key the app recorded for the run")
    add_data_options(worker)

    lr = on_runs("lr-find", help="learning-rate range test: suggests a learning rate for a training setup",
                 description="Train a copy of the model for a few steps while the learning rate grows "
                             "exponentially; prints `suggested lr: X` (the steepest fall of the smoothed "
                             "loss). The options describe the training, as for `train`.")
    add_train_options(lr)
    lr.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"steps of the test (default {DEFAULT_STEPS})")
    lr.add_argument("--lr-min", type=float, default=DEFAULT_LR_MIN, help=f"first lr (default {DEFAULT_LR_MIN:g})")
    lr.add_argument("--lr-max", type=float, default=DEFAULT_LR_MAX, help=f"last lr (default {DEFAULT_LR_MAX:g})")
    lr.add_argument("--plot", help="save the loss-against-lr plot to this PNG file")

    ev = on_runs("evaluate", help="accuracy, per-class precision, recall and F1, calibration (ECE) and the "
                                  "confusion matrix on the test set")
    ev.add_argument("model", nargs="?", help="checkpoint file, shipped model name or run id (default: the best "
                                             "shipped weights)")
    ev.add_argument("--tta", choices=list(TTA_MODES), default="none",
                    help="test-time augmentation: " + "; ".join(f"{k}: {v}" for k, v in TTA_MODES.items()))
    ev.add_argument("--json", help="also write the result to this JSON file")
    add_data_options(ev)

    pr = on_runs("predict", help="class probabilities for image files")
    pr.add_argument("images", nargs="+", help="image files (any size or mode)")
    pr.add_argument("--model", help="checkpoint file, shipped model name or run id (default: the best shipped "
                                    "weights)")
    pr.add_argument("--top", type=int, default=3, help="how many classes to show per image")
    pr.add_argument("--explain", metavar="OUT_DIR", help="also write a Grad-CAM heat map PNG per image here")

    cal = on_runs("calibrate", help="fit a model's temperature on the images it did not train on (its "
                                    "validation split), so its probabilities are honest")
    cal.add_argument("model", help="shipped model name, run id or checkpoint file")
    add_data_options(cal)

    ex = on_runs("export", help="export a model to ONNX or TorchScript, or ship a run's weights in weights/",
                 description="--format onnx|torchscript --output FILE writes a self-contained model that "
                             "takes float32 RGB images N x 3 x H x W in [0, 1] and returns class "
                             "probabilities, checked against torch on real images. --name NAME ships a "
                             "run's weights as weights/NAME.pt with a model card.")
    ex.add_argument("model", help="shipped model name, run id or checkpoint file (--name: a run id)")
    ex.add_argument("--format", choices=["onnx", "torchscript", "weights"], default=None,
                    help="onnx or torchscript (with --output), weights (with --name; the default when --name is given)")
    ex.add_argument("--output", help="the file to write (onnx, torchscript)")
    ex.add_argument("--name", help="file name in weights/ (without .pt) for --format weights")
    add_data_options(ex)

    on_runs("runs", help="list past runs")

    data = sub.add_parser("data", help="look at an image set before training on it")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    inspect = data_sub.add_parser("inspect", help="classes, counts per split, image sizes and problems found")
    inspect.add_argument("path", help="a folder of class folders or a .zip of one")
    add_image_set_options(inspect)
    return parser


def config_from_args(args, base: TrainConfig | None = None) -> TrainConfig:
    """The config that --preset (or `base`), --config and the options describe, in that order."""
    values = (base or PRESETS[args.preset].config).to_dict() if (base or args.preset) else {}
    if args.config:
        values.update(json.loads(Path(args.config).read_text()))
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    for name, kind in types.items():
        raw = getattr(args, name, None)
        if raw is None:
            continue
        values[name] = raw if kind in ("bool", "str") or name == "augment" else _number(name, raw)
    return TrainConfig.from_dict(values)


def _number(name: str, raw: str) -> float:
    """A number option as a float; TrainConfig.from_dict turns whole floats into whole-number settings."""
    try:
        return float(raw)
    except ValueError:
        raise ConfigError([f"--{name.replace('_', '-')} must be a number, got {raw!r}"]) from None


class ProgressPrinter:
    """A one-line progress bar on stderr plus the report's epoch lines on stdout."""

    def __init__(self, epochs: int, stream=sys.stderr, min_interval_s: float = 0.25):
        self.epochs = epochs
        self.stream = stream
        self.min_interval_s = min_interval_s
        self._last_write = 0.0

    def __call__(self, event) -> None:
        if isinstance(event, StepEvent):
            if time.monotonic() - self._last_write < self.min_interval_s and event.step < event.total_steps:
                return
            self._last_write = time.monotonic()
            frac = event.step / event.total_steps
            bar = "#" * int(frac * 30)
            eta = remaining_seconds(event.step, event.total_steps, event.elapsed_s)
            self.stream.write(f"\repoch {event.epoch}/{self.epochs} [{bar:<30}] {frac:6.1%} "
                              f"loss {event.loss:.4f} lr {event.lr:.3g} {event.images_per_s:,.0f} img/s "
                              f"remaining {format_duration(eta)} ")
            self.stream.flush()
        elif isinstance(event, StartEvent):
            print(f"hardware: {event.hardware}\ncompute: {event.message}", flush=True)
        elif isinstance(event, EpochEvent):
            self.stream.write("\r" + " " * 110 + "\r")
            print(event.report_line(self.epochs), flush=True)
        elif isinstance(event, EndEvent):
            self.stream.write("\n")
            print(f"{event.status}: {event.message} ({event.elapsed_s:.1f}s)", flush=True)


def _resolve_model_path(spec: str | None, runs_dir: str) -> Path:
    """The checkpoint a model argument names: a file, a shipped model's name or a run id (its
    best epoch's weights where it kept them); default: the best shipped model."""
    if spec is None:
        return default_checkpoint()
    path = Path(spec)
    if path.is_file():
        return path
    try:
        return starting_checkpoint(spec, runs_dir)
    except RunError as exc:
        raise checkpoints.CheckpointError(f"{spec} is not a checkpoint file; {exc}") from None


def _training_data(args, config: TrainConfig, world: World) -> ImageData:
    """The data a run of `config` trains on: the options' data, or the set its `dataset` names
    (one the app keeps, or CIFAR-100). In a process group, process 0 gets it first (a download or
    an extraction happens once; the others wait for it up to CIFARAPP_DIST_TIMEOUT) and alone
    shows preparation progress."""
    if world.distributed and not world.is_main:
        world.broadcast(None)  # wait until process 0 has the data (downloaded, extracted, cached) once
    progress = print_progress if world.is_main else None
    if config.dataset and config.dataset != CIFAR100_KEY:  # a run started in the app on an image set it keeps
        library = ImageSetLibrary(args.datasets_dir, args.image_size, args.val_fraction)
        data = library.load(config.dataset, None, progress=progress).data
    else:
        data = DataSource.from_args(args).for_dataset(config.dataset).load(progress=progress)
    if world.distributed and world.is_main:
        world.broadcast(None)
    return data


def _train(args, config: TrainConfig, run_dir: RunDir | None, resume: bool) -> int:
    """Train a new run (`run_dir` None) or resume one: here, or with config.nproc processes
    launched through torch.distributed.run, or as this process's part of a process group."""
    world = join_world(config.device)
    if world.distributed:
        config = dataclasses.replace(config, nproc=world.size)
    elif config.nproc > 1:
        return _launch_processes(args, config, run_dir, resume)
    data = _training_data(args, config, world)
    if world.is_main:
        for warning in data.warnings:
            print(f"data: {warning}", file=sys.stderr, flush=True)
    measurements = Measurements()
    if getattr(args, "budget", None):
        plan = plan_for_budget(args.budget, PRESETS[BUDGET_BASE].config, len(data.train_images), len(data.classes),
                               measurements)
        print(f"budget plan: {plan.describe()}", flush=True)
        config = config_from_args(args, base=plan.config).validate()
    config = check_fit(config, data)
    if run_dir is None:
        run_dir = RunDir(args.runs_dir, world.broadcast(new_run_id(config.model)))
        if world.is_main:
            run_dir.create(config)
    elif world.is_main and run_dir.read_config().nproc != config.nproc:  # resumed with another process count
        run_dir.write_config(dataclasses.replace(run_dir.read_config(), nproc=config.nproc))
    if world.is_main:
        print(f"run {run_dir.run_id} in {run_dir.path} on {data.source}", flush=True)
        if data.note:
            print(f"note: {data.note}", flush=True)
        if not world.distributed:
            print(f"expected duration: {duration_on(config, data, measurements).describe()}", flush=True)
    return _run_here(run_dir, config, data, resume, world, measurements)


def _run_here(run_dir: RunDir, config: TrainConfig, data: ImageData, resume: bool, world: World,
              measurements: Measurements | None = None, owner: str | None = None) -> int:
    """Train the run in this process (one of a process group's, perhaps). Training runs in a
    worker thread so that Ctrl-C or SIGTERM (which Python delivers to the main thread) can ask it
    to stop at the next step (every process together), write its checkpoint and end the run as
    stopped. The worker says when it is done through an event: a join interrupted by Ctrl-C can
    report a live thread as finished."""
    stop, done = threading.Event(), threading.Event()
    printer = ProgressPrinter(config.epochs) if world.is_main else None
    failures: list[BaseException] = []

    def work() -> None:
        try:
            execute_run(run_dir, config, data, on_event=printer, stop=stop, resume=resume, owner=owner,
                        measurements=measurements)
        except Exception as exc:  # a peer process's failure (process 0 records its own in the run)
            failures.append(exc)
            print(f"process {world.rank}: {exc}", file=sys.stderr, flush=True)
        finally:
            done.set()

    def ask_to_stop(signum=None, frame=None) -> None:
        if not stop.is_set() and world.is_main:
            print("\nstopping at the next step (the checkpoint is being written)…", file=sys.stderr, flush=True)
        stop.set()

    previous = signal.signal(signal.SIGTERM, ask_to_stop)
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        while not done.is_set():
            try:
                done.wait(0.5)
            except KeyboardInterrupt:
                ask_to_stop()
    finally:
        signal.signal(signal.SIGTERM, previous)
        leave_world()
    if stop.is_set():
        if world.is_main:
            print(f"resume it with: python -m cifarapp resume {run_dir.run_id}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not world.is_main:
        return 1 if failures else 0
    return 0 if run_dir.read_status().get("status") in ("finished", "stopped") else 1


class _Tee:
    """Copies a child's output stream to `target` as it comes, keeping its last bytes."""

    def __init__(self, source, target, keep: int = 16_384):
        self.keep, self._data = keep, bytearray()
        self._thread = threading.Thread(target=self._copy, args=(source, target), daemon=True)
        self._thread.start()

    def _copy(self, source, target) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")  # a character may straddle two chunks
        for chunk in iter(lambda: source.read1(4096), b""):
            target.write(decoder.decode(chunk))
            target.flush()
            self._data = (self._data + chunk)[-self.keep:]

    def tail(self) -> str:
        self._thread.join(5)
        return self._data.decode("utf-8", "replace")


def _launch_processes(args, config: TrainConfig, run_dir: RunDir | None, resume: bool) -> int:
    """Train with config.nproc processes started by torch.distributed.run on this machine; this
    process gets the data ready for them (a download happens here, once), creates the run
    folder, passes Ctrl-C on as a stop request, and records the run as failed if the processes die
    without saying why."""
    check_fit(config, _training_data(args, config, SINGLE))
    if run_dir is None:
        run_dir = RunDir(args.runs_dir, new_run_id(config.model))
        run_dir.create(config)
    else:
        run_dir.write_config(config)
    print(f"run {run_dir.run_id} in {run_dir.path}: {config.nproc} processes through torch.distributed.run",
          flush=True)
    worker_args = ["worker", run_dir.run_id, "--runs-dir", args.runs_dir, *DataSource.from_args(args).to_args(),
                   *(["--resume"] if resume else [])]
    process = launch(config.nproc, worker_args, stderr=subprocess.PIPE)
    output = _Tee(process.stderr, sys.stderr)
    group = GroupStop(process)
    while process.poll() is None:
        try:
            process.wait(0.5)
        except subprocess.TimeoutExpired:
            pass
        except KeyboardInterrupt:
            if group.asked_at is None:
                print("\nstopping every process at the next step (the checkpoint is being written)…",
                      file=sys.stderr, flush=True)
                run_dir.request_stop()
                group.ask()
        group.enforce()
    status = settle_after_exit(run_dir, process.returncode, output.tail())
    print(f"{status.get('status')}: {status.get('message', '')}", flush=True)
    if group.asked_at is not None:
        print(f"resume it with: python -m cifarapp resume {run_dir.run_id}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0 if status.get("status") in ("finished", "stopped") else 1


def _worker(args) -> int:
    """One process of a run launched by torch.distributed.run (or the whole run with one process)."""
    run_dir = RunDir(args.runs_dir, args.run_id)
    config = run_dir.read_config()
    world = join_world(config.device)
    data = _training_data(args, config, world)
    return _run_here(run_dir, check_fit(dataclasses.replace(config, nproc=world.size), data), data, args.resume,
                     world, owner=args.owner_key)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            if args.budget and args.preset:
                raise ConfigError(["--budget plans the fast recipe itself; leave out --preset"])
            config = config_from_args(args).validate()
            if args.budget and (config.nproc > 1 or launched_by_torchrun()):
                raise ConfigError(["--budget plans for one process (it measures this one's speed); "
                                   "leave out --nproc and torchrun, or give the settings yourself"])
            return _train(args, config, None, resume=False)
        if args.command == "resume":
            run_dir = RunDir(args.runs_dir, args.run_id)
            config = run_dir.read_config()
            if args.nproc is not None and not launched_by_torchrun():
                config = dataclasses.replace(config, nproc=args.nproc).validate()
            return _train(args, config, run_dir, resume=True)
        if args.command == "worker":
            return _worker(args)
        handlers = {"lr-find": _lr_find, "evaluate": _evaluate, "predict": _predict, "calibrate": _calibrate,
                    "export": _export, "runs": _list_runs, "data": _inspect}
        return handlers[args.command](args)
    except (ConfigError, DataUnavailableError, checkpoints.CheckpointError, RunError, ImageError, ImageSetError,
            TrainingError, CalibrationError, DistributedError, ExportError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _inspect(args) -> int:
    image_set = load_image_set(args.path, args.datasets_dir, args.image_size, args.val_fraction,
                               progress=print_progress)
    print(image_set.report())
    return 0


def _lr_find(args) -> int:
    config = config_from_args(args).validate()
    data = _training_data(args, config, SINGLE)

    def progress(done: int, total: int) -> None:
        sys.stderr.write(f"\rlr range test: step {done}/{total}")
        sys.stderr.flush()

    result = find_lr(config, data, steps=args.steps, lr_min=args.lr_min, lr_max=args.lr_max,
                     init_weights=starting_weights(config, args.runs_dir), progress=progress)
    sys.stderr.write("\n")
    print(f"suggested lr: {result.suggestion:.3g}" if result.suggestion is not None else "suggested lr: none")
    print(result.describe())
    if args.plot:
        from .figures import lr_finder_figure

        lr_finder_figure(result).savefig(args.plot)
        print(f"plot: {args.plot}")
    return 0 if result.suggestion is not None else 1


def _check_data_matches(loaded: checkpoints.LoadedModel, data: ImageData) -> None:
    if tuple(data.classes) != loaded.classes or data.image_size != loaded.image_size:
        raise checkpoints.CheckpointError(
            f"the model knows {len(loaded.classes)} classes of {loaded.dataset_name} ({', '.join(loaded.classes[:5])}"
            f"{', ...' if len(loaded.classes) > 5 else ''}) at {loaded.image_size}x{loaded.image_size}; the data "
            f"has {len(data.classes)} classes at {data.image_size}x{data.image_size}. Pass --data with the image "
            "set it was trained on")


def _evaluate(args) -> int:
    path = _resolve_model_path(args.model, args.runs_dir)
    loaded = checkpoints.load_model(path)
    data = DataSource.from_args(args).load(progress=print_progress)
    _check_data_matches(loaded, data)
    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        sys.stderr.write(f"\revaluating {done}/{total}")
        sys.stderr.flush()

    print(f"compute: {loaded.compute.describe()}", file=sys.stderr, flush=True)
    result = evaluate(loaded, data.test_images, data.test_labels, tta=args.tta, progress=progress)
    sys.stderr.write("\n")
    print(f"{path.name if args.model is None else args.model} on {data.source} {data.test_name} "
          f"({time.perf_counter() - t0:.1f}s)")
    if data.note:
        print(f"note: {data.note}")
    print(result.summary())
    print(result.confusion_text())
    if args.json:
        def per_class(values) -> dict:
            return {c: (None if np.isnan(v) else round(float(v), 4)) for c, v in zip(result.classes, values)}

        atomic_write_text(args.json, json.dumps({
            "model": args.model or path.name, "accuracy": result.accuracy, "loss": result.loss, "tta": args.tta,
            "per_class_accuracy": per_class(result.per_class_accuracy), "precision": per_class(result.precision),
            "recall": per_class(result.recall), "f1": per_class(result.f1), "macro_f1": result.macro_f1,
            "ece": result.raw_ece, "ece_calibrated": result.calibrated_ece, "temperature": result.temperature,
            "confusion": result.confusion.tolist(), "classes": list(result.classes)}, indent=2))
    return 0


def _predict(args) -> int:
    loaded = checkpoints.load_model(_resolve_model_path(args.model, args.runs_dir))
    status, readable = 0, []
    for image in args.images:
        try:
            probs = predict(loaded, [image])[0]
        except ImageError as exc:
            print(f"{image}: error: {exc}", file=sys.stderr)
            status = 1
            continue
        readable.append(image)
        ranked = ", ".join(f"{name} {p:.1%}" for name, p in top_k(probs, loaded.classes, args.top))
        print(f"{image}: {ranked} → {verdict(probs, loaded.classes)}")
    if args.explain and readable:
        from .explain import save_heatmaps

        for path in save_heatmaps(loaded, readable, args.explain).paths:
            print(f"heat map: {path}")
    return status


def _calibrate(args) -> int:
    data = DataSource.from_args(args).load(progress=print_progress)
    if any(model.name == args.model for model in shipped_models()):
        fitted = calibrate_shipped(args.model, data)
    else:
        path = _resolve_model_path(args.model, args.runs_dir)
        fitted = calibrate_checkpoint(path, data)
    print(f"{args.model}: {fitted.describe()}")
    return 0


def _export(args) -> int:
    form = args.format or ("weights" if args.name else None)
    if form == "weights":
        if not args.name:
            raise ConfigError(["--format weights needs --name NAME (the file name in weights/)"])
        run_dir = RunDir(args.runs_dir, args.model)
        data = DataSource.from_args(args).load()
        command = cli_command(run_dir.read_config(), "PATH")  # the card names no path of this machine
        card = export_shipped(run_dir.model_checkpoint, args.name, data.test_images, data.test_labels,
                              command=command, data_note=data.note)
        print(json.dumps(card, indent=2))
        return 0
    if form is None or not args.output:
        raise ConfigError(["say what to export: --format onnx|torchscript --output FILE, or --name NAME to ship a "
                           "run's weights"])
    report = FORMATS[form].export(checkpoints.read(_resolve_model_path(args.model, args.runs_dir)), args.output)
    print(report.describe())
    return 0


def _list_runs(args) -> int:
    runs = RunStore(args.runs_dir).list_runs()
    for run in runs:
        best = f"best val_acc {run.best_val_acc:.4f}" if run.best_val_acc is not None else "no epoch yet"
        print(f"{run.run_id}  {run.status:<11} {run.epochs_done} epochs, {best}")
    if not runs:
        print("no runs yet")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
