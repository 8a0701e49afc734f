"""Command line: `python -m cifarapp train|resume|evaluate|predict|runs ...` on the app's engine."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

from . import checkpoints
from .config import ConfigError, TrainConfig, cli_command, settings
from .data import DataUnavailableError
from .estimate import BUDGETS, duration_on, format_duration, plan_for_budget, remaining_seconds
from .evaluate import evaluate
from .files import atomic_write_text
from .hardware import Measurements
from .images import ImageError
from .imagesets import ImageSetError, load_image_set
from .inference import TTA_MODES
from .library import ImageSetLibrary
from .predict import predict, top_k
from .presets import BUDGET_BASE, PRESETS
from .runs import RunDir, RunError, RunStore, execute_run, new_run_id, starting_checkpoint
from .sources import DataSource, add_data_options, add_image_set_options
from .train import EndEvent, EpochEvent, StartEvent, StepEvent, TrainingError, check_fit
from .weights import default_checkpoint, export_shipped


def print_progress(done: int, total: int, what: str = "preparing images") -> None:
    """A one-line progress counter on stderr."""
    sys.stderr.write(f"\r{what} {done:,}/{total:,}" + ("\n" if done == total else ""))
    sys.stderr.flush()



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cifarapp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model; prints the report's epoch lines")
    train.add_argument("--preset", choices=sorted(PRESETS), help="start from a named setup (options override it)")
    defaults = TrainConfig()
    for f, spec in settings():
        if not spec.cli:
            continue
        flag = "--" + f.name.replace("_", "-")
        text = spec.help + (f"; one of {', '.join(spec.choices)}" if spec.choices else "")
        if spec.low is not None or spec.high is not None:
            text += f"; {spec.range_text()}"
        if f.type == "bool":
            train.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            train.add_argument(flag, default=None, help=f"{text} (default {getattr(defaults, f.name)})")
    train.add_argument("--config", help="a JSON config file (as saved by the app); options override it")
    train.add_argument("--budget", type=float, metavar="SECONDS",
                       help="size the fast recipe to about this many seconds on this machine (measured): "
                            "picks fastnet's width, epochs and low-res epochs; other options still override "
                            f"(the app offers {', '.join(str(s) for s in BUDGETS.values())})")
    train.add_argument("--runs-dir", default="runs", help="where run folders are written")
    add_data_options(train)

    resume = sub.add_parser("resume", help="continue a stopped or interrupted run from its checkpoint")
    resume.add_argument("run_id")
    resume.add_argument("--runs-dir", default="runs")
    add_data_options(resume)

    ev = sub.add_parser("evaluate", help="accuracy, per-class accuracy and confusion matrix on the test set")
    ev.add_argument("model", nargs="?", help="checkpoint file, shipped model name or run id (default: the best "
                                             "shipped weights)")
    ev.add_argument("--tta", choices=list(TTA_MODES), default="none",
                    help="test-time augmentation: " + "; ".join(f"{k}: {v}" for k, v in TTA_MODES.items()))
    ev.add_argument("--runs-dir", default="runs")
    ev.add_argument("--json", help="also write the result to this JSON file")
    add_data_options(ev)

    pr = sub.add_parser("predict", help="class probabilities for image files")
    pr.add_argument("images", nargs="+", help="image files (any size or mode)")
    pr.add_argument("--model", help="checkpoint file, shipped model name or run id (default: the best shipped "
                                    "weights)")
    pr.add_argument("--top", type=int, default=3, help="how many classes to show per image")
    pr.add_argument("--runs-dir", default="runs")

    ex = sub.add_parser("export", help="ship a run's weights in weights/ with a model card (test accuracy etc.)")
    ex.add_argument("run_id")
    ex.add_argument("--name", required=True, help="file name in weights/ (without .pt)")
    ex.add_argument("--runs-dir", default="runs")
    add_data_options(ex)

    ls = sub.add_parser("runs", help="list past runs")
    ls.add_argument("--runs-dir", default="runs")

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
    if spec is None:
        return default_checkpoint()
    path = Path(spec)
    if path.is_file():
        return path
    try:
        return starting_checkpoint(spec, runs_dir)
    except RunError as exc:
        raise checkpoints.CheckpointError(f"{spec} is not a checkpoint file; {exc}") from None


EXIT_INTERRUPTED = 130  # the shell's convention for a program ended by Ctrl-C (SIGINT)


def _train(args, config: TrainConfig, run_dir: RunDir, resume: bool) -> int:
    if config.dataset:  # a run started in the app on an image set it keeps
        library = ImageSetLibrary(args.datasets_dir, args.image_size, args.val_fraction)
        data = library.load(config.dataset, None, progress=print_progress).data
    else:
        data = DataSource.from_args(args).load(progress=print_progress)
    for warning in data.warnings:
        print(f"data: {warning}", file=sys.stderr, flush=True)
    measurements = Measurements()
    if getattr(args, "budget", None):
        plan = plan_for_budget(args.budget, PRESETS[BUDGET_BASE].config, len(data.train_images), len(data.classes),
                               measurements)
        print(f"budget plan: {plan.describe()}", flush=True)
        config = config_from_args(args, base=plan.config).validate()
        run_dir = RunDir(args.runs_dir, new_run_id(config.model))
    config = check_fit(config, data)
    if not resume:
        run_dir.create(config)
    print(f"run {run_dir.run_id} in {run_dir.path} on {data.source}", flush=True)
    if data.note:
        print(f"note: {data.note}", flush=True)
    estimate = duration_on(config, data, measurements)
    print(f"expected duration: {estimate.describe()}", flush=True)
    # training runs in a worker thread so that Ctrl-C (which Python delivers to the main thread)
    # can ask it to stop at the next step, write its checkpoint and end the run as stopped. The
    # worker says when it is done through an event: a join interrupted by Ctrl-C can report a
    # live thread as finished.
    stop, done = threading.Event(), threading.Event()

    def work() -> None:
        try:
            execute_run(run_dir, config, data, on_event=ProgressPrinter(config.epochs), stop=stop, resume=resume,
                        measurements=measurements)
        finally:
            done.set()

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    interrupted = False
    while not done.is_set():
        try:
            done.wait(0.5)
        except KeyboardInterrupt:
            interrupted = True
            stop.set()
            print("\nstopping at the next step (the checkpoint is being written)…", file=sys.stderr, flush=True)
    if interrupted:
        print(f"resume it with: python -m cifarapp resume {run_dir.run_id}", file=sys.stderr)
        return EXIT_INTERRUPTED
    status = run_dir.read_status()
    return 0 if status.get("status") in ("finished", "stopped") else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            if args.budget and args.preset:
                raise ConfigError(["--budget plans the fast recipe itself; leave out --preset"])
            config = config_from_args(args).validate()
            return _train(args, config, RunDir(args.runs_dir, new_run_id(config.model)), resume=False)
        if args.command == "resume":
            run_dir = RunDir(args.runs_dir, args.run_id)
            return _train(args, run_dir.read_config(), run_dir, resume=True)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "predict":
            return _predict(args)
        if args.command == "export":
            return _export(args)
        if args.command == "data":
            image_set = load_image_set(args.path, args.datasets_dir, args.image_size, args.val_fraction,
                                       progress=print_progress)
            print(image_set.report())
            return 0
        return _list_runs(args)
    except (ConfigError, DataUnavailableError, checkpoints.CheckpointError, RunError, ImageError, ImageSetError,
            TrainingError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _evaluate(args) -> int:
    path = _resolve_model_path(args.model, args.runs_dir)
    loaded = checkpoints.load_model(path)
    data = DataSource.from_args(args).load(progress=print_progress)
    if tuple(data.classes) != loaded.classes or data.image_size != loaded.image_size:
        raise checkpoints.CheckpointError(
            f"the model knows {len(loaded.classes)} classes of {loaded.dataset_name} ({', '.join(loaded.classes[:5])}"
            f"{', ...' if len(loaded.classes) > 5 else ''}) at {loaded.image_size}x{loaded.image_size}; the data "
            f"has {len(data.classes)} classes at {data.image_size}x{data.image_size}. Pass --data with the image "
            "set it was trained on")
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
        atomic_write_text(args.json, json.dumps({
            "model": args.model or path.name, "accuracy": result.accuracy, "loss": result.loss, "tta": args.tta,
            "per_class_accuracy": dict(zip(result.classes, np.round(result.per_class_accuracy, 4).tolist())),
            "confusion": result.confusion.tolist(), "classes": list(result.classes)}, indent=2))
    return 0


def _predict(args) -> int:
    loaded = checkpoints.load_model(_resolve_model_path(args.model, args.runs_dir))
    status = 0
    for image in args.images:
        try:
            probs = predict(loaded, [image])[0]
        except ImageError as exc:
            print(f"{image}: error: {exc}", file=sys.stderr)
            status = 1
            continue
        ranked = ", ".join(f"{name} {p:.1%}" for name, p in top_k(probs, loaded.classes, args.top))
        print(f"{image}: {ranked}")
    return status


def _export(args) -> int:
    run_dir = RunDir(args.runs_dir, args.run_id)
    data = DataSource.from_args(args).load()
    command = cli_command(run_dir.read_config(), "PATH")  # the card names no path of this machine
    card = export_shipped(run_dir.checkpoint, args.name, data.test_images, data.test_labels, command=command,
                          data_note=data.note)
    print(json.dumps(card, indent=2))
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
