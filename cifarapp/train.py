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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoints
from .config import TrainConfig
from .data import CifarData, Normalization, alternating_flip_mask, augment_batch, downscale, split_train_val
from .hardware import Compute, Measurements, Workload, choose, detect, resolve_device
from .inference import autocast, batched_logits
from .models import build_model

# A windowed mean loss this many times chance-level loss means the run has blown up.
DIVERGENCE_FACTOR = 25.0


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
