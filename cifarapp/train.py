"""Training: the loop and the events it reports (the configuration is `config.TrainConfig`).

`fit` trains one model on data already in memory and reports through a callback:
StepEvent every few steps (loss, lr, images/s), EpochEvent after each epoch (train_loss,
val_loss, val_acc: the report's epoch line). It ends as finished, stopped or diverged;
exceptions propagate to the caller (`runs.execute_run`), which records them as failed.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoints
from .checkpoints import DEFAULT_IMAGE_SIZE
from .config import TrainConfig
from .data import ImageData, Normalization, alternating_flip_mask, augment_batch, downscale, split_train_val
from .hardware import Compute, Measurements, Workload, choose, detect, resolve_device
from .inference import autocast, batched_logits
from .models import MODELS, SeededDropout, build_model

# A windowed mean loss this many times chance-level loss means the run has blown up.
DIVERGENCE_FACTOR = 25.0
# images whose 2x2 patch statistics set fastnet's whitening stem
WHITENING_SAMPLE = 5000
# step events (loss, lr, images/s) per epoch: the resolution of the live loss plot
REPORTS_PER_EPOCH = 50
# dropout masks come from the epoch's seed mixed with this, so they differ from its augmentation
DROPOUT_SEED_SALT = 0x5EED
# the global torch generator is borrowed only to draw initial weights (see seeded_model)
_GLOBAL_RNG = threading.Lock()


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
        validation = (f"val_loss: {self.val_loss:.4f}, val_acc: {self.val_acc:.4f}" if math.isfinite(self.val_loss)
                      else "no validation (validation size 0)")
        return f"Epoch [{self.epoch}/{epochs}], train_loss: {self.train_loss:.4f}, {validation} ({self.epoch_s:.1f}s)"


@dataclass(frozen=True)
class EndEvent:
    run_id: str
    status: str  # finished | stopped | diverged | failed | interrupted
    message: str
    elapsed_s: float = 0.0
    kind: str = "end"


Event = StartEvent | StepEvent | EpochEvent | EndEvent


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
    triangle is onecycle from 0.2 to 0.07."""
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
               device: torch.device, amp_dtype: torch.dtype | None,
               class_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on a batch (`model` may be a compiled module); returns the detached
    loss and logits."""
    with autocast(device, amp_dtype):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y, weight=class_weight, label_smoothing=label_smoothing)
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


def seeded_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """The model of `config` with its initial weights drawn from the run's seed. The global torch
    generator is borrowed under a lock and restored, so runs in other threads are not disturbed
    (they draw from their own generators)."""
    with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return build_model(config.model, num_classes=num_classes, width=config.width)


def transfer_weights(model: nn.Module, payload: dict, model_name: str, width: float) -> list[str]:
    """Load a checkpoint's weights into `model` wherever names and shapes match (the body), and
    return the names left as initialised (the head, when the classes differ)."""
    if payload.get("model") != model_name or float(payload.get("width", 1.0)) != float(width):
        raise TrainingError(f"cannot start a {model_name} (width {width:g}) from a {payload.get('model')} "
                            f"(width {float(payload.get('width', 1.0)):g}); choose the same architecture and width")
    state = model.state_dict()
    matching = {k: v for k, v in payload["state_dict"].items() if k in state and state[k].shape == v.shape}
    model.load_state_dict(matching, strict=False)
    return [k for k in state if k not in matching]


def body_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters that fine-tuning may freeze: all but the head (the last linear
    layer) and the norm layers (fastai's choice: frozen bodies keep their norms trainable)."""
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    keep = {id(p) for p in head.parameters()}
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):
            keep |= {id(p) for p in module.parameters()}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in keep]


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency loss weights (mean 1 over the images): each class counts as much in total."""
    counts = torch.bincount(labels.cpu(), minlength=num_classes).float().clamp_min(1)
    return len(labels) / (num_classes * counts)


class TrainingError(ValueError):
    """A run cannot start with this data or starting model; the message says what to change."""


class _Training:
    """One run's training state: set up from the config and data (or a checkpoint to resume, or
    one to start from), the per-batch pipeline, one epoch at a time, and checkpoints."""

    def __init__(self, config: TrainConfig, data: ImageData, compute: Compute, resume_from: dict | None,
                 init_weights: dict | None):
        self.config, self.compute, self.normalization = config, compute, data.normalization
        self.classes, self.dataset = data.classes, data.summary()
        device = compute.device
        split = split_train_val(len(data.train_images), config.val_size, config.seed, config.train_size)
        self.train_x = data.train_images[split.train].to(device)
        self.train_y = data.train_labels[split.train].to(device)
        if data.has_validation:
            self.val_x, self.val_y = data.val_images, data.val_labels
        else:
            self.val_x, self.val_y = data.train_images[split.val], data.train_labels[split.val]
        self.class_weight = class_weights(self.train_y, len(self.classes)).to(device) if config.class_weighted else None

        self.model = seeded_model(config, len(data.classes)).to(device, memory_format=compute.memory_format)
        if init_weights is not None and resume_from is None:
            transfer_weights(self.model, init_weights, config.model, config.width)
        self.body = body_parameters(self.model)
        if hasattr(self.model, "init_whitening") and resume_from is None and init_weights is None:
            sample = self.train_x[:WHITENING_SAMPLE].float().div(255)
            self.model.init_whitening(self.normalization.apply(sample))
        self.optimizer = make_optimizer(config, self.model)
        self.scaler = torch.amp.GradScaler(device.type, enabled=compute.dtype == torch.float16)
        # the compiled module shares the model's parameters; checkpoints, validation and lookahead use the model
        self.step_model = torch.compile(self.model) if config.compile else self.model
        self.dropout = torch.Generator(device=device)  # the run's own dropout masks (models.SeededDropout)
        for module in self.model.modules():
            if isinstance(module, SeededDropout):
                module.generator = self.dropout

        n = len(self.train_x)
        # alt_flip's per-image choice is fixed for the whole run (drawn from the seed, so a resumed
        # run draws the same one)
        self.first_epoch_flips = torch.rand(n, device=device, generator=torch.Generator(device=device).manual_seed(
            config.seed)) < 0.5
        self.epoch_steps = steps_per_epoch(n, config.batch_size)
        self.total_steps = self.epoch_steps * config.epochs
        self.warmup_steps = round(config.warmup_epochs * self.epoch_steps)
        self.report_every = max(1, self.epoch_steps // REPORTS_PER_EPOCH)

        self.history: list[dict] = []
        self.start_epoch = 0
        if resume_from is not None:
            self.model.load_state_dict(resume_from["state_dict"])
            self.optimizer.load_state_dict(resume_from["optimizer"])
            if "scaler" in resume_from:
                self.scaler.load_state_dict(resume_from["scaler"])
            self.start_epoch = int(resume_from["epochs_done"])
            self.history = list(resume_from.get("metrics", []))
        self.lookahead = None
        if config.lookahead:
            self.lookahead = Lookahead(self.model, resume_from.get("lookahead") if resume_from is not None else None)

    def save(self, path: str | Path | None, epochs_done: int, run_id: str) -> None:
        """A checkpoint of the run after `epochs_done` epochs (nothing without a path)."""
        if path is None:
            return
        extra = {"epochs_done": epochs_done, "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict(), "run_id": run_id}
        if self.lookahead is not None:
            extra["lookahead"] = self.lookahead.average
        payload = checkpoints.make_payload(
            self.model, model_name=self.config.model, width=self.config.width, classes=self.classes,
            normalization=self.normalization, config=self.config.to_dict(), metrics=self.history,
            dataset=self.dataset, extra=extra)
        checkpoints.save_atomic(payload, path)

    def batch(self, indices: torch.Tensor, epoch: int, gen: torch.Generator) -> torch.Tensor:
        """The model input for the training images `indices`: scaled to [0, 1], augmented,
        shrunk in low-res epochs, normalised, in the compute's memory layout."""
        config = self.config
        x = self.train_x[indices].float().div_(255)
        if config.augment:
            flips = (alternating_flip_mask(self.first_epoch_flips, indices, epoch)
                     if "alt_flip" in config.augment else None)
            x = augment_batch(x, config.augment, gen, fill=self.normalization.mean, flip_mask=flips)
        if epoch < config.low_res_epochs:
            x = downscale(x, config.low_res_size)
        return self.normalization.apply(x).contiguous(memory_format=self.compute.memory_format)

    def epoch(self, epoch: int, run_id: str, emit: Callable[[Event], None], stop: threading.Event,
              elapsed: Callable[[], float]) -> tuple[str, str] | EpochEvent:
        """Train one epoch: its EpochEvent, or (status, message) when it was stopped or diverged."""
        config, model, device = self.config, self.model, self.compute.device
        for parameter in self.body:
            parameter.requires_grad_(epoch >= config.freeze_epochs)
        if config.stem_bias_epochs and epoch >= config.stem_bias_epochs:
            model.freeze_stem()
        gen = torch.Generator(device=device).manual_seed(_epoch_seed(config.seed, epoch))
        self.dropout.manual_seed(_epoch_seed(config.seed, epoch) ^ DROPOUT_SEED_SALT)
        order = torch.randperm(len(self.train_x), device=device, generator=gen)
        model.train()
        t_epoch = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        window = _Window(device)
        chance_loss = math.log(len(self.classes))
        for step in range(self.epoch_steps):
            if stop.is_set():
                return "stopped", f"stopped during epoch {epoch + 1} of {config.epochs}"
            global_step = epoch * self.epoch_steps + step
            lr = config.lr * lr_factor(config.schedule, global_step, self.total_steps, self.warmup_steps,
                                       config.lr_start_fraction, config.lr_end_fraction)
            for group, scale in zip(self.optimizer.param_groups, group_lr_scales(config)):
                group["lr"] = lr * scale
            indices = order[step * config.batch_size:(step + 1) * config.batch_size]
            y = self.train_y[indices]
            loss, logits = train_step(self.step_model, self.optimizer, self.scaler, self.batch(indices, epoch, gen),
                                      y, config.label_smoothing, device, self.compute.dtype, self.class_weight)
            if self.lookahead is not None:
                self.lookahead.after_step(model, global_step + 1, self.total_steps)
            loss_sum += loss * len(indices)
            correct += (logits.argmax(1) == y).sum()
            seen += len(indices)
            window.add(loss, len(indices))
            if (step + 1) % self.report_every == 0 or step + 1 == self.epoch_steps:
                mean_loss, images_per_s = window.take()
                emit(StepEvent(run_id, epoch + 1, global_step + 1, self.total_steps, mean_loss, lr, images_per_s,
                               elapsed()))
                if not math.isfinite(mean_loss) or mean_loss > DIVERGENCE_FACTOR * chance_loss:
                    kept = f"the checkpoint of epoch {epoch} is kept" if epoch else "no epoch had finished"
                    return "diverged", (f"training diverged at step {global_step + 1}: loss {mean_loss:.4g}. The "
                                        f"learning rate {config.lr:g} is probably too high; try 3-10x lower. ({kept})")
        if self.lookahead is not None and epoch + 1 == config.epochs:
            self.lookahead.finish(model)
        val_loss, val_acc = _validate(model, self.val_x, self.val_y, self.normalization, self.compute)
        return EpochEvent(run_id, epoch + 1, loss_sum.item() / max(seen, 1), correct.item() / max(seen, 1),
                          val_loss, val_acc, time.perf_counter() - t_epoch, elapsed())


class _Window:
    """Mean loss and images/s of the steps since the last report (the loss stays on the device
    until a report, so steps do not wait for it)."""

    def __init__(self, device: torch.device):
        self.device = device
        self._reset(time.perf_counter())

    def _reset(self, now: float) -> None:
        self.loss, self.steps, self.images, self.since = torch.zeros((), device=self.device), 0, 0, now

    def add(self, loss: torch.Tensor, images: int) -> None:
        self.loss += loss
        self.steps += 1
        self.images += images

    def take(self) -> tuple[float, float]:
        now = time.perf_counter()
        result = self.loss.item() / self.steps, self.images / max(now - self.since, 1e-9)
        self._reset(now)
        return result


def fit(config: TrainConfig, data: ImageData, *, run_id: str = "",
        on_event: Callable[[Event], None] | None = None, stop: threading.Event | None = None,
        checkpoint_path: str | Path | None = None, resume_from: dict | None = None,
        init_weights: dict | None = None,
        on_epoch_end: Callable[[int, nn.Module], None] | None = None,
        measurements: Measurements | None = None) -> FitResult:
    """Train as `config` says on `data` (normalised by its training images' statistics),
    reporting events; save a checkpoint after every epoch (and when stopped) to `checkpoint_path`;
    continue a run from a checkpoint dict `resume_from`, or start from the body of `init_weights`
    (the checkpoint `config.init_from` names). Data with a validation split of its own validates
    on it (`val_size` is then 0). `on_epoch_end(epoch, model)` lets benchmarks measure the model
    after each epoch (its time is not counted as training time)."""
    config = check_fit(config, data)
    emit = on_event or (lambda event: None)
    stop = stop or threading.Event()
    compute = training_compute(config, len(data.classes), measurements)
    emit(StartEvent(run_id, detect(compute.device).describe(), compute.to_dict(), compute.describe()))
    run = _Training(config, data, compute, resume_from, init_weights)
    t_start = time.perf_counter()
    elapsed_before = float(run.history[-1]["elapsed_s"]) if run.history else 0.0

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - t_start

    for epoch in range(run.start_epoch, config.epochs):
        outcome = run.epoch(epoch, run_id, emit, stop, elapsed)
        if not isinstance(outcome, EpochEvent):
            status, message = outcome
            if status == "stopped":
                run.save(checkpoint_path, epoch, run_id)
            return FitResult(status, message, run.model, epoch, run.history)
        run.history.append(dataclasses.asdict(outcome))
        emit(outcome)
        run.save(checkpoint_path, epoch + 1, run_id)
        if on_epoch_end is not None:
            t_callback = time.perf_counter()
            on_epoch_end(epoch + 1, run.model)
            t_start += time.perf_counter() - t_callback
    return FitResult("finished", f"finished {config.epochs} epochs", run.model, config.epochs, run.history)


def check_fit(config: TrainConfig, data: ImageData) -> TrainConfig:
    """`config` as it trains on `data` (val_size 0 where the data has its own validation split),
    validated; ConfigError or TrainingError say what does not fit."""
    if data.has_validation:
        config = dataclasses.replace(config, val_size=0)
    config = config.validate(len(data.train_images))
    check_image_size(config.model, data.image_size)
    return config


def check_image_size(model_name: str, image_size: int) -> None:
    """Raise TrainingError when `model_name` cannot take square images of side `image_size`."""
    if image_size != DEFAULT_IMAGE_SIZE and not MODELS[model_name].any_input_size:
        able = ", ".join(name for name, spec in MODELS.items() if spec.any_input_size)
        raise TrainingError(f"{model_name} takes {DEFAULT_IMAGE_SIZE}x{DEFAULT_IMAGE_SIZE} images only; this data is "
                            f"{image_size}x{image_size}. Prepare it at {DEFAULT_IMAGE_SIZE}, or choose {able}")


def _validate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, normalization: Normalization,
              compute: Compute) -> tuple[float, float]:
    """Mean loss and accuracy on held-out images (NaN, NaN when there are none)."""
    if len(images) == 0:
        return math.nan, math.nan
    logits = batched_logits(model, images, normalization, compute)
    loss = F.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(1) == labels).float().mean().item()
