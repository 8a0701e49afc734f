"""Training: the validated configuration, the loop, and the events it reports.

`fit` trains one model on data already in memory and reports through a callback:
StepEvent every few steps (loss, lr, images/s), EpochEvent after each epoch (train_loss,
val_loss, val_acc: the report's epoch line). It ends as finished, stopped or diverged;
exceptions propagate to the caller (`runs.execute_run`), which records them as failed.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoints
from .data import (AUGMENTATIONS, CifarData, Normalization, alternating_flip_mask, augment_batch, downscale,
                   split_train_val)
from .hardware import DEVICES, PRECISIONS, Compute, Measurements, Workload, choose, detect, resolve_device
from .inference import autocast, batched_logits
from .models import MODELS, build_model

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "onecycle", "cosine")
# A windowed mean loss this many times chance-level loss means the run has blown up.
DIVERGENCE_FACTOR = 25.0


class ConfigError(ValueError):
    """One or more settings are invalid; `problems` lists each in plain words."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Build with `TrainConfig.from_dict` or the
    constructor, then call `validate()` before use."""

    model: str = "lenet"
    width: float = 1.0
    optimizer: str = "adam"
    lr: float = 0.001
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    epochs: int = 15
    batch_size: int = 128
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    lr_start_fraction: float = 0.0
    lr_end_fraction: float = 0.0
    label_smoothing: float = 0.0
    bias_lr_scale: float = 1.0
    lookahead: bool = False
    stem_bias_epochs: int = 0
    low_res_epochs: int = 0
    low_res_size: int = 24
    augment: tuple[str, ...] = ()
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    train_size: int | None = None
    val_size: int = 5000

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["augment"] = list(self.augment)
        return d

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Build from a dict of any origin (JSON file, form, API call): unknown keys and values of
        the wrong type raise ConfigError naming each problem."""
        if not isinstance(values, dict):
            raise ConfigError([f"a configuration must be a mapping of settings, got {type(values).__name__}"])
        problems, kwargs = [], {}
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        for key, value in values.items():
            if key not in types:
                problems.append(f"unknown setting {key!r}; known settings: {', '.join(types)}")
                continue
            try:
                kwargs[key] = _coerce(key, types[key], value)
            except (TypeError, ValueError) as exc:
                problems.append(str(exc))
        if problems:
            raise ConfigError(problems)
        return cls(**kwargs)

    def validate(self, n_train_available: int | None = None) -> "TrainConfig":
        """Return self if every value is usable, else raise ConfigError listing every problem.
        `n_train_available` (the training set size) enables the size checks."""
        p: list[str] = []
        if self.model not in MODELS:
            p.append(f"unknown model {self.model!r}; choose from {', '.join(MODELS)}")
        if not (0.05 <= self.width <= 8):
            p.append(f"width must be between 0.05 and 8, got {self.width}")
        if self.optimizer not in OPTIMIZERS:
            p.append(f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
        if not (0 < self.lr <= 100):
            p.append(f"learning rate must be greater than 0 and at most 100, got {self.lr}")
        if not (0 <= self.momentum < 1):
            p.append(f"momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            p.append("nesterov needs the sgd optimizer with momentum above 0")
        if not (0 <= self.weight_decay <= 1):
            p.append(f"weight decay must be in [0, 1], got {self.weight_decay}")
        if not (1 <= self.epochs <= 1000):
            p.append(f"epochs must be between 1 and 1000, got {self.epochs}")
        if not (2 <= self.batch_size <= 65536):
            p.append(f"batch size must be between 2 and 65536, got {self.batch_size}")
        if self.schedule not in SCHEDULES:
            p.append(f"unknown lr schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}")
        if not (0 <= self.warmup_epochs <= self.epochs):
            p.append(f"warm-up epochs must be between 0 and the number of epochs, got {self.warmup_epochs}")
        for name in ("lr_start_fraction", "lr_end_fraction"):
            if not (0 <= getattr(self, name) <= 1):
                p.append(f"{name.replace('_', ' ')} must be in [0, 1] (a fraction of the peak lr), "
                         f"got {getattr(self, name)}")
        if not (0 <= self.label_smoothing < 1):
            p.append(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if not (0 < self.bias_lr_scale <= 1000):
            p.append(f"bias lr scale must be greater than 0 and at most 1000, got {self.bias_lr_scale}")
        # epoch counts of features only some models have: (field, words, ModelSpec flag, what it needs)
        for name, words, flag, needs in (("stem_bias_epochs", "stem bias epochs", "whitening_stem", "a whitening stem"),
                                         ("low_res_epochs", "low-res epochs", "any_input_size",
                                          "global pooling, so that it takes any image size")):
            value = getattr(self, name)
            if not (0 <= value <= self.epochs):
                p.append(f"{words} must be between 0 and the number of epochs, got {value}")
            elif value and self.model in MODELS and not getattr(MODELS[self.model], flag):
                able = ", ".join(m for m, spec in MODELS.items() if getattr(spec, flag))
                p.append(f"{words} needs a model with {needs} ({able}); set it to 0 for {self.model}")
        if not (8 <= self.low_res_size <= 32):
            p.append(f"low-res size must be between 8 and 32 pixels, got {self.low_res_size}")
        unknown = [a for a in self.augment if a not in AUGMENTATIONS]
        if unknown:
            p.append(f"unknown augmentation(s) {unknown}; choose from {', '.join(AUGMENTATIONS)}")
        if not (0 <= self.seed < 2**31):
            p.append(f"seed must be between 0 and 2147483647, got {self.seed}")
        if self.device not in DEVICES:
            p.append(f"unknown device {self.device!r}; choose from {', '.join(DEVICES)}")
        if self.precision not in PRECISIONS:
            p.append(f"unknown precision {self.precision!r}; choose from {', '.join(PRECISIONS)}")
        if self.train_size is not None and self.train_size < 2:
            p.append(f"training subset size must be at least 2 images, got {self.train_size}")
        if self.val_size < 0:
            p.append(f"validation size must be 0 or more, got {self.val_size}")
        if n_train_available is not None and not p:
            room = n_train_available - self.val_size
            if room < 2:
                p.append(f"validation size {self.val_size} leaves no training images out of {n_train_available}")
            elif self.train_size is not None and self.train_size > room:
                p.append(f"training subset size {self.train_size} is more than the {room} images left "
                         f"after holding out {self.val_size} for validation")
            elif self.batch_size > min(room, self.train_size or room):
                p.append(f"batch size {self.batch_size} is larger than the {min(room, self.train_size or room)} "
                         "training images; lower the batch size")
        if p:
            raise ConfigError(p)
        return self


def cli_command(config: TrainConfig, data_flag: str | None = None) -> str:
    """The `python -m cifarapp train ...` command equivalent to a config."""
    default = TrainConfig()
    parts = ["python", "-m", "cifarapp", "train"]
    for f in dataclasses.fields(TrainConfig):
        value = getattr(config, f.name)
        if value == getattr(default, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, tuple):
            parts += [flag, ",".join(value)]
        else:
            parts += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    if data_flag:
        parts += ["--data", data_flag]
    return " ".join(shlex.quote(p) for p in parts)


def _coerce(key: str, annotation, value):
    """Check and convert one value against its field annotation (given as a string)."""
    ann = str(annotation)
    if value is None and "None" in ann:
        return None
    if ann.startswith("tuple"):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"{key} must be a list of names, got {value!r}")
        return tuple(value)
    if ann == "bool":
        if not isinstance(value, bool):
            raise TypeError(f"{key} must be true or false, got {value!r}")
        return value
    if ann.startswith("int"):
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{key} must be a whole number, got {value!r}")
        return value
    if ann == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if ann == "str":
        if not isinstance(value, str):
            raise TypeError(f"{key} must be text, got {value!r}")
        return value
    raise TypeError(f"{key}: unsupported setting type {ann}")


@dataclass(frozen=True)
class StartEvent:
    """Where and how the run computes: the hardware, and the precision and layout chosen."""

    run_id: str
    hardware: str
    compute: dict  # Compute.to_dict()
    message: str  # Compute.describe()
    kind: str = "start"


@dataclass(frozen=True)
class StepEvent:
    run_id: str
    epoch: int
    step: int
    total_steps: int
    loss: float
    lr: float
    images_per_s: float
    elapsed_s: float
    kind: str = "step"


@dataclass(frozen=True)
class EpochEvent:
    run_id: str
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    epoch_s: float
    elapsed_s: float
    kind: str = "epoch"

    def report_line(self, epochs: int) -> str:
        """The report's printout: `Epoch [n], train_loss: …, val_loss: …, val_acc: …`."""
        return (f"Epoch [{self.epoch}/{epochs}], train_loss: {self.train_loss:.4f}, "
                f"val_loss: {self.val_loss:.4f}, val_acc: {self.val_acc:.4f} ({self.epoch_s:.1f}s)")


@dataclass(frozen=True)
class EndEvent:
    run_id: str
    status: str  # finished | stopped | diverged | failed | interrupted
    message: str
    elapsed_s: float = 0.0
    kind: str = "end"


Event = Union[StartEvent, StepEvent, EpochEvent, EndEvent]


@dataclass
class FitResult:
    """How `fit` ended, with the model as it is at the end (usable after a stop)."""

    status: str
    message: str
    model: nn.Module
    epochs_done: int
    history: list[dict] = field(default_factory=list)


def lr_factor(schedule: str, step: int, total_steps: int, warmup_steps: int,
              start_fraction: float = 0.0, end_fraction: float = 0.0) -> float:
    """Multiplier of the base lr at `step` (0-based): linear warm-up from `start_fraction`, then
    constant, linear decay (onecycle) or cosine decay down to `end_fraction`. airbench's
    triangle is onecycle from 0.2 to 0.07; on fastnet it beat 0-to-0 by 0.66 points in our
    5-epoch ablation (benchmarks/results/ablation_airbench_details.txt)."""
    if step < warmup_steps:
        return start_fraction + (1 - start_fraction) * (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    decay = 1.0 - progress if schedule == "onecycle" else 0.5 * (1 + math.cos(math.pi * progress))
    return end_fraction + (1 - end_fraction) * decay


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer the config names: group 0 holds the weights, group 1 the biases and norm
    shifts. Group 1's lr is scaled by `group_lr_scales` and its weight decay divided by the same
    factor, so both groups shrink by the same fraction per step (as in airbench)."""
    weights = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    biases = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": weights, "weight_decay": config.weight_decay},
              {"params": biases, "weight_decay": config.weight_decay / config.bias_lr_scale}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.Adam(groups, lr=config.lr)


def group_lr_scales(config: TrainConfig) -> tuple[float, float]:
    """lr multipliers of make_optimizer's two groups. airbench found that BatchNorm shifts under a
    fixed unit scale want a far larger lr (64x) than the conv weights."""
    return 1.0, config.bias_lr_scale


class Lookahead:
    """Lookahead of the weights (as in airbench): every `every` steps an average copy moves toward
    the model by 1 - decay and the model is put back on it. The decay grows from 0 to 0.95^5 as
    the cube of training progress, so it smooths the noisy late steps; at the end the model
    becomes the average."""

    every = 5
    max_decay = 0.95 ** 5

    def __init__(self, model: nn.Module, state: dict[str, torch.Tensor] | None = None):
        current = model.state_dict()
        source = state if state is not None else current
        self.average = {k: v.detach().to(current[k].device, copy=True) for k, v in source.items()
                        if v.is_floating_point()}

    @torch.no_grad()
    def after_step(self, model: nn.Module, steps_done: int, total_steps: int) -> None:
        if steps_done % self.every == 0:
            self._pull(model, self.max_decay * (steps_done / total_steps) ** 3)

    @torch.no_grad()
    def finish(self, model: nn.Module) -> None:
        self._pull(model, 1.0)

    def _pull(self, model: nn.Module, decay: float) -> None:
        state = model.state_dict()
        for key, average in self.average.items():
            average.lerp_(state[key], 1 - decay)
            state[key].copy_(average)


def train_step(model: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, x: torch.Tensor, y: torch.Tensor, label_smoothing: float,
               device: torch.device, amp_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on a batch (`model` may be a compiled module); returns the detached
    loss and logits."""
    with autocast(device, amp_dtype):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), logits.detach()


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    """Steps of one epoch over `n_images`: every image once, except that a last batch of a single
    image is dropped (it breaks BatchNorm)."""
    steps = math.ceil(n_images / batch_size)
    return steps - 1 if n_images % batch_size == 1 else steps


def _epoch_seed(seed: int, epoch: int) -> int:
    # Every epoch draws its order, augmentation and dropout from its own seed, so a run resumed
    # at an epoch boundary continues exactly as if it had never stopped.
    return (seed * 1_000_003 + epoch) % (2**63)


def training_compute(config: TrainConfig, num_classes: int = 10,
                     measurements: Measurements | None = None) -> Compute:
    """The device, precision and layout a run of `config` trains in (see `hardware.choose`)."""
    work = Workload(config.model, config.width, num_classes, config.batch_size, train=True)
    return choose(work, resolve_device(config.device), config.precision, measurements)


def fit(config: TrainConfig, data: CifarData, *, run_id: str = "",
        on_event: Callable[[Event], None] | None = None, stop: threading.Event | None = None,
        checkpoint_path: str | Path | None = None, resume_from: dict | None = None,
        normalization: Normalization = Normalization(),
        on_epoch_end: Callable[[int, nn.Module], None] | None = None,
        measurements: Measurements | None = None) -> FitResult:
    """Train as `config` says on `data`, reporting events; save a checkpoint after every epoch
    (and when stopped) to `checkpoint_path`; continue a run from a checkpoint dict `resume_from`.
    `on_epoch_end(epoch, model)` lets benchmarks measure the model after each epoch."""
    config = config.validate(len(data.train_images))
    emit = on_event or (lambda event: None)
    stop = stop or threading.Event()
    compute = training_compute(config, len(data.classes), measurements)
    device, amp_dtype, memory_format = compute.device, compute.dtype, compute.memory_format
    emit(StartEvent(run_id, detect(device).describe(), compute.to_dict(), compute.describe()))

    torch.manual_seed(config.seed)
    split = split_train_val(len(data.train_images), config.val_size, config.seed, config.train_size)
    train_x = data.train_images[split.train].to(device)
    train_y = data.train_labels[split.train].to(device)
    val_x, val_y = data.train_images[split.val], data.train_labels[split.val]

    model = build_model(config.model, num_classes=len(data.classes), width=config.width)
    model = model.to(device, memory_format=memory_format)
    if hasattr(model, "init_whitening") and resume_from is None:
        sample = train_x[:5000].float().div(255)
        model.init_whitening(normalization.apply(sample))
    optimizer = make_optimizer(config, model)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    # the compiled module shares `model`'s parameters; checkpoints, validation and lookahead use `model`
    step_model = torch.compile(model) if config.compile else model

    n = len(train_x)
    # alt_flip's per-image choice is fixed for the whole run (drawn from the seed, so a resumed
    # run draws the same one)
    first_epoch_flips = torch.rand(n, device=device, generator=torch.Generator(device=device).manual_seed(
        config.seed)) < 0.5
    epoch_steps = steps_per_epoch(n, config.batch_size)
    total_steps = epoch_steps * config.epochs
    warmup_steps = round(config.warmup_epochs * epoch_steps)
    report_every = max(1, epoch_steps // 50)

    history: list[dict] = []
    start_epoch = 0
    if resume_from is not None:
        model.load_state_dict(resume_from["state_dict"])
        optimizer.load_state_dict(resume_from["optimizer"])
        if "scaler" in resume_from:
            scaler.load_state_dict(resume_from["scaler"])
        start_epoch = int(resume_from["epochs_done"])
        history = list(resume_from.get("metrics", []))
    lookahead = None
    if config.lookahead:
        lookahead = Lookahead(model, resume_from.get("lookahead") if resume_from is not None else None)

    def save(epochs_done: int) -> None:
        if checkpoint_path is None:
            return
        payload = checkpoints.make_payload(
            model, model_name=config.model, width=config.width, classes=data.classes,
            normalization=normalization, config=config.to_dict(), metrics=history,
            extra={"epochs_done": epochs_done, "optimizer": optimizer.state_dict(),
                   "scaler": scaler.state_dict(), "run_id": run_id,
                   **({"lookahead": lookahead.average} if lookahead is not None else {})})
        checkpoints.save_atomic(payload, checkpoint_path)

    chance_loss = math.log(len(data.classes))
    t_start = time.perf_counter()
    elapsed_before = float(history[-1]["elapsed_s"]) if history else 0.0

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - t_start

    for epoch in range(start_epoch, config.epochs):
        if config.stem_bias_epochs and epoch >= config.stem_bias_epochs:
            model.freeze_stem()
        torch.manual_seed(_epoch_seed(config.seed, epoch))
        gen = torch.Generator(device=device).manual_seed(_epoch_seed(config.seed, epoch))
        order = torch.randperm(n, device=device, generator=gen)
        model.train()
        t_epoch = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        window_loss, window_steps, window_images, t_window = torch.zeros((), device=device), 0, 0, time.perf_counter()
        for step in range(epoch_steps):
            if stop.is_set():
                save(epoch)
                return FitResult("stopped", f"stopped during epoch {epoch + 1} of {config.epochs}",
                                 model, epoch, history)
            global_step = epoch * epoch_steps + step
            lr = config.lr * lr_factor(config.schedule, global_step, total_steps, warmup_steps,
                                       config.lr_start_fraction, config.lr_end_fraction)
            for group, scale in zip(optimizer.param_groups, group_lr_scales(config)):
                group["lr"] = lr * scale
            idx = order[step * config.batch_size:(step + 1) * config.batch_size]
            x = train_x[idx].float().div_(255)
            if config.augment:
                x = augment_batch(x, config.augment, gen, fill=normalization.mean,
                                  flip_mask=alternating_flip_mask(first_epoch_flips, idx, epoch)
                                  if "alt_flip" in config.augment else None)
            if epoch < config.low_res_epochs:
                x = downscale(x, config.low_res_size)
            x = normalization.apply(x).contiguous(memory_format=memory_format)
            y = train_y[idx]
            detached, logits = train_step(step_model, optimizer, scaler, x, y, config.label_smoothing, device,
                                          amp_dtype)
            if lookahead is not None:
                lookahead.after_step(model, global_step + 1, total_steps)

            loss_sum += detached * len(idx)
            correct += (logits.argmax(1) == y).sum()
            seen += len(idx)
            window_loss += detached
            window_steps += 1
            window_images += len(idx)
            if (step + 1) % report_every == 0 or step + 1 == epoch_steps:
                mean_loss = window_loss.item() / window_steps
                now = time.perf_counter()
                emit(StepEvent(run_id, epoch + 1, global_step + 1, total_steps, mean_loss, lr,
                               window_images / max(now - t_window, 1e-9), elapsed()))
                if not math.isfinite(mean_loss) or mean_loss > DIVERGENCE_FACTOR * chance_loss:
                    kept = f"the checkpoint of epoch {epoch} is kept" if epoch else "no epoch had finished"
                    return FitResult(
                        "diverged",
                        f"training diverged at step {global_step + 1}: loss {mean_loss:.4g}. The learning "
                        f"rate {config.lr:g} is probably too high; try 3-10x lower. ({kept})",
                        model, epoch, history)
                window_loss, window_steps, window_images, t_window = torch.zeros((), device=device), 0, 0, now

        if lookahead is not None and epoch + 1 == config.epochs:
            lookahead.finish(model)
        train_loss = loss_sum.item() / max(seen, 1)
        val_loss, val_acc = _validate(model, val_x, val_y, normalization, compute)
        event = EpochEvent(run_id, epoch + 1, train_loss, correct.item() / max(seen, 1), val_loss, val_acc,
                           time.perf_counter() - t_epoch, elapsed())
        history.append(dataclasses.asdict(event))
        emit(event)
        save(epoch + 1)
        if on_epoch_end is not None:
            t_callback = time.perf_counter()
            on_epoch_end(epoch + 1, model)
            t_start += time.perf_counter() - t_callback  # a benchmark's measuring is not training time
    return FitResult("finished", f"finished {config.epochs} epochs", model, config.epochs, history)


def _validate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, normalization: Normalization,
              compute: Compute) -> tuple[float, float]:
    """Mean loss and accuracy on held-out images (NaN, NaN when there are none)."""
    if len(images) == 0:
        return math.nan, math.nan
    logits = batched_logits(model, images, normalization, compute)
    loss = F.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(1) == labels).float().mean().item()
