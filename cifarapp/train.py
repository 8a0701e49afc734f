"""Training: the loop and the events it reports (the configuration is `config.TrainConfig`).

`fit` trains one model on data already in memory and reports through a callback:
StepEvent every few steps (loss, lr, images/s), EpochEvent after each epoch (train_loss,
val_loss, val_acc: the report's epoch line). It ends as finished, stopped or diverged, or
paused when a deadline comes (a chunk of a longer run); exceptions propagate to the caller
(`runs.execute_run`), which records them as failed.

A checkpoint written at a stop or a pause records the position inside the epoch (its step,
the state of the epoch's random generator and the epoch's running sums), so a resumed run
continues exactly as if it had never stopped. In a process group (`distributed`), the same
`fit` runs on every process: each trains on its share of every global batch.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoints
from .checkpoints import DEFAULT_IMAGE_SIZE
from .config import TrainConfig
from .data import ImageData, alternating_flip_mask, augment_batch, downscale, split_train_val
from .distributed import World, current_world, process_device, synchronise_batchnorm
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
# a run with a deadline pauses this long before it, on top of the time its next step, an epoch's
# validation and a checkpoint are expected to take
DEADLINE_SAFETY_S = 1.0
# what a resumed run's compute reason says (see resumed_compute)
RESUMED_COMPUTE = " (kept from before the run was resumed)"
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


class StopSignal(Protocol):
    """What asks a run to stop at its next step: a threading.Event, or anything with is_set()."""

    def is_set(self) -> bool: ...


@dataclass
class FitResult:
    """How `fit` ended, with the model as it is at the end (usable after a stop; the best epoch's
    weights when the config keeps the best epoch)."""

    status: str  # finished | stopped | diverged | paused
    message: str
    model: nn.Module
    epochs_done: int
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None  # 1-based, when the config watches for the best epoch


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


def set_lr(optimizer: torch.optim.Optimizer, config: TrainConfig, lr: float) -> None:
    """Give the optimizer's groups the base lr `lr`, each with its group's multiplier."""
    for group, scale in zip(optimizer.param_groups, group_lr_scales(config)):
        group["lr"] = lr * scale


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
               class_weight: torch.Tensor | None = None, denominator: float | torch.Tensor | None = None,
               world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on a batch (`model` may be a compiled or DistributedDataParallel
    module); returns the detached loss and logits. The loss is the batch's summed loss divided by
    `denominator` (default: its image count, or its class-weight sum with `class_weight`): a
    process of a multi-process run passes the whole global batch's, so its loss is its share of
    the global batch loss, and scales the gradient by `world_size` because DistributedDataParallel
    averages the processes' gradients."""
    with autocast(device, amp_dtype):
        logits = model(x)
    total = F.cross_entropy(logits.float(), y, weight=class_weight, label_smoothing=label_smoothing, reduction="sum")
    if denominator is None:
        denominator = class_weight[y].sum() if class_weight is not None else len(y)
    loss = total / denominator
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss * world_size if world_size > 1 else loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), logits.detach()


def steps_per_epoch(n_images: int, batch_size: int, world_size: int = 1) -> int:
    """Steps of one epoch over `n_images`: every image once, except that a last batch too small to
    give each process two images is dropped (BatchNorm needs more than one value)."""
    steps = math.ceil(n_images / batch_size)
    last = n_images % batch_size
    return steps - 1 if 0 < last < 2 * world_size else steps


def _epoch_seed(seed: int, epoch: int) -> int:
    # Every epoch draws its order, augmentation and dropout from its own seed, so a run resumed
    # at an epoch boundary continues exactly as if it had never stopped.
    return (seed * 1_000_003 + epoch) % (2**63)


def training_compute(config: TrainConfig, num_classes: int = 10,
                     measurements: Measurements | None = None) -> Compute:
    """The device, precision and layout a run of `config` trains in (see `hardware.choose`)."""
    work = Workload(config.model, config.width, num_classes, config.batch_size, train=True)
    return choose(work, resolve_device(config.device), config.precision, measurements)


def resumed_compute(config: TrainConfig, resume_from: dict | None) -> Compute | None:
    """The precision and layout a resumed run computed in before (its checkpoint records them),
    so that it goes on in the same arithmetic, whatever a new measurement would pick; None for a
    new run, or one resumed on another kind of device."""
    recorded = (resume_from or {}).get("compute")
    device = resolve_device(config.device)
    if not isinstance(recorded, dict) or torch.device(recorded.get("device", "")).type != device.type:
        return None
    reason = str(recorded["reason"])
    kept = reason if reason.endswith(RESUMED_COMPUTE) else reason + RESUMED_COMPUTE
    return Compute(device, recorded["precision"], bool(recorded["channels_last"]), kept, recorded.get("images_per_s"))


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


def best_epoch(history: list[dict], monitor: str) -> int | None:
    """The index in `history` of the epoch with the best `monitor` value (highest accuracy, lowest
    loss; the earliest of equals), or None when no epoch was validated."""
    values = [(i, h.get(monitor)) for i, h in enumerate(history)]
    values = [(i, v) for i, v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return None
    sign = 1 if monitor == "val_loss" else -1
    return min(values, key=lambda item: (sign * item[1], item[0]))[0]


def early_stop_message(history: list[dict], config: TrainConfig) -> str | None:
    """Why the run stops after its last epoch in `history`, when the watched metric has not
    improved for `config.patience` epochs (None: it goes on)."""
    best = best_epoch(history, config.monitor)
    if not config.patience or best is None or len(history) - 1 - best < config.patience:
        return None
    value = history[best][config.monitor]
    return (f"stopped early after epoch {len(history)} of {config.epochs}: {config.monitor} has not improved for "
            f"{config.patience} epoch(s) (patience {config.patience}); the best epoch was {best + 1} "
            f"({config.monitor} {value:.4f})")


class TrainingError(ValueError):
    """A run cannot start with this data or starting model; the message says what to change."""


@dataclass
class Position:
    """Where in an epoch a checkpoint was written, and what continuing exactly from there needs."""

    epoch: int  # the epoch in progress (0-based)
    step: int  # its steps already done
    device_type: str  # the generator states are those of this kind of device
    generator: torch.Tensor  # the epoch's augmentation generator after those steps
    dropout: list[torch.Tensor]  # each process's dropout generator, in rank order
    loss_sum: float  # the epoch's running training loss (summed over its images) ...
    correct: int  # ... correct predictions ...
    seen: int  # ... and images so far

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Position:
        return cls(**values)


@dataclass(frozen=True)
class _Interruption:
    """An epoch that ended before its last step: stopped, paused (a deadline) or diverged."""

    status: str
    message: str
    position: Position | None  # where to continue from (none for a diverged run)


class _Deadline:
    """When a run with a deadline must pause: before a step that, with what follows it (an
    epoch's validation after its last step, a checkpoint), would end after the deadline."""

    def __init__(self, deadline: float | None, validation_steps: float):
        self.deadline = deadline
        self.validation_steps = validation_steps  # validation costs at most this many training steps
        self.step_s = 0.0
        self.steps_done = 0  # in this call: a call always takes one step at least, so a chain always advances
        self.validate_s: float | None = None
        self.save_s = 1.0

    def must_pause(self, last_step_of_epoch: bool) -> bool:
        if self.deadline is None:
            return False
        needed = 2 * self.step_s + self.save_s + DEADLINE_SAFETY_S
        if last_step_of_epoch:
            needed += self.validate_s if self.validate_s is not None else self.step_s * self.validation_steps
        return time.monotonic() + needed > self.deadline


class Trainer:
    """One run's training state on this process: set up from the config and data (or a
    checkpoint to resume, or one to start from), the per-batch pipeline, one epoch at a time, and
    checkpoints."""

    def __init__(self, config: TrainConfig, data: ImageData, compute: Compute, resume_from: dict | None,
                 init_weights: dict | None, world: World):
        self.config, self.compute, self.normalization, self.world = config, compute, data.normalization, world
        self.classes, self.dataset = data.classes, data.summary()
        device = compute.device
        split = split_train_val(len(data.train_images), config.val_size, config.seed, config.train_size)
        self.train_x = data.train_images[split.train].to(device)
        self.train_y = data.train_labels[split.train].to(device)
        self.val_x, self.val_y = data.held_out(config.val_size, config.seed, config.train_size)
        self.class_weight = class_weights(self.train_y, len(self.classes)).to(device) if config.class_weighted else None

        self.model = seeded_model(config, len(data.classes)).to(device, memory_format=compute.memory_format)
        if config.sync_bn and world.distributed:
            synchronise_batchnorm(self.model)
        if init_weights is not None and resume_from is None:
            transfer_weights(self.model, init_weights, config.model, config.width)
        self.body = body_parameters(self.model)
        if hasattr(self.model, "init_whitening") and resume_from is None and init_weights is None:
            sample = self.train_x[:WHITENING_SAMPLE].float().div(255)
            self.model.init_whitening(self.normalization.apply(sample))
        self.optimizer = make_optimizer(config, self.model)
        self.scaler = torch.amp.GradScaler(device.type, enabled=compute.dtype == torch.float16)
        # the wrapped module (compiled, distributed) shares the model's parameters; checkpoints,
        # validation and lookahead use the model itself
        self._forward: nn.Module | None = None
        self._trainable: tuple[bool, ...] = ()
        self.dropout = torch.Generator(device=device)  # this process's dropout masks (models.SeededDropout)
        for module in self.model.modules():
            if isinstance(module, SeededDropout):
                module.generator = self.dropout

        n = len(self.train_x)
        # alt_flip's per-image choice is fixed for the whole run (drawn from the seed, so a resumed
        # run draws the same one)
        self.first_epoch_flips = torch.rand(n, device=device, generator=torch.Generator(device=device).manual_seed(
            config.seed)) < 0.5
        self.epoch_steps = steps_per_epoch(n, config.batch_size, world.size)
        self.total_steps = self.epoch_steps * config.epochs
        self.warmup_steps = round(config.warmup_epochs * self.epoch_steps)
        self.report_every = max(1, self.epoch_steps // REPORTS_PER_EPOCH)

        self.history: list[dict] = []
        self.start_epoch = 0
        self.position: Position | None = None
        if resume_from is not None:
            self.model.load_state_dict(resume_from["state_dict"])
            self.optimizer.load_state_dict(resume_from["optimizer"])
            if "scaler" in resume_from:
                self.scaler.load_state_dict(resume_from["scaler"])
            self.start_epoch = int(resume_from["epochs_done"])
            self.history = list(resume_from.get("metrics", []))
            position = resume_from.get("position")
            if position is not None and position["device_type"] == device.type:
                self.position = Position.from_dict(position)
        self.lookahead = None
        if config.lookahead:
            self.lookahead = Lookahead(self.model, resume_from.get("lookahead") if resume_from is not None else None)
        self.best_state: dict[str, torch.Tensor] | None = None

    def forward_module(self) -> nn.Module:
        """The module a training step calls: the model, compiled and/or wrapped for several
        processes. DistributedDataParallel reduces the gradients of the parameters that were
        trainable when it was built, so it is rebuilt when that set changes (frozen bodies and
        stems)."""
        trainable = tuple(p.requires_grad for p in self.model.parameters())
        if self._forward is None or trainable != self._trainable:
            module: nn.Module = self.model
            if self.world.distributed:
                device = self.compute.device
                module = nn.parallel.DistributedDataParallel(
                    self.model, device_ids=[device.index] if device.type == "cuda" else None)
            self._forward = torch.compile(module) if self.config.compile else module
            self._trainable = trainable
        return self._forward

    def payload(self, epochs_done: int, run_id: str, position: Position | None = None,
                training_state: bool = True) -> dict:
        """The checkpoint dict of the run after `epochs_done` epochs (and `position` steps into the
        next); without the training state it holds only what inference needs."""
        extra: dict = {"epochs_done": epochs_done, "run_id": run_id}
        if training_state:
            extra.update(optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(),
                         compute=self.compute.to_dict())
            if self.lookahead is not None:
                extra["lookahead"] = self.lookahead.average
            if position is not None:
                extra["position"] = position.to_dict()
        return checkpoints.make_payload(
            self.model, model_name=self.config.model, width=self.config.width, classes=self.classes,
            normalization=self.normalization, config=self.config.to_dict(), metrics=self.history,
            dataset=self.dataset, extra=extra)

    def save(self, path: str | Path | None, epochs_done: int, run_id: str, position: Position | None = None) -> None:
        """A checkpoint of the run (written by process 0; nothing without a path). Every process
        calls it: the processes' dropout generators are gathered into the position."""
        if position is not None:
            position = dataclasses.replace(position, dropout=self.world.gather(self.dropout.get_state()) or [])
        if path is None or not self.world.is_main:
            return
        checkpoints.save_atomic(self.payload(epochs_done, run_id, position), path)

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

    def prepare_epoch(self, epoch: int) -> tuple[torch.Generator, torch.Tensor]:
        """Freeze what this epoch does not train, seed its generators and draw its order."""
        config = self.config
        for parameter in self.body:
            parameter.requires_grad_(epoch >= config.freeze_epochs)
        if config.stem_bias_epochs and epoch >= config.stem_bias_epochs:
            self.model.freeze_stem()
        device = self.compute.device
        gen = torch.Generator(device=device).manual_seed(_epoch_seed(config.seed, epoch))
        self.dropout.manual_seed(_epoch_seed(config.seed, epoch) ^ DROPOUT_SEED_SALT ^ self.world.rank)
        return gen, torch.randperm(len(self.train_x), device=device, generator=gen)

    def epoch(self, epoch: int, run_id: str, emit: Callable[[Event], None], stop: StopSignal,
              elapsed: Callable[[], float], deadline: _Deadline) -> _Interruption | EpochEvent:
        """Train one epoch (from the resumed position, if it is this epoch's): its EpochEvent, or
        how it was interrupted."""
        config, model, device, world = self.config, self.model, self.compute.device, self.world
        gen, order = self.prepare_epoch(epoch)
        model.train()
        t_epoch = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen, first_step = 0, 0
        if self.position is not None and self.position.epoch == epoch:
            position, self.position = self.position, None
            gen.set_state(position.generator)
            if len(position.dropout) == world.size:
                self.dropout.set_state(position.dropout[world.rank])
            first_step, seen = position.step, position.seen
            if world.is_main:  # the sums so far are counted once, on process 0
                loss_sum += position.loss_sum
                correct += position.correct
        window = _Window(device)
        chance_loss = math.log(len(self.classes))

        def position_at(step: int) -> Position:
            totals = world.all_sum(torch.stack([loss_sum.double(), correct.double()]))
            return Position(epoch, step, device.type, gen.get_state(), [], float(totals[0]), int(totals[1]), seen)

        for step in range(first_step, self.epoch_steps):
            stopping, pausing = world.any_flags(
                [stop.is_set(), deadline.steps_done > 0 and deadline.must_pause(step + 1 == self.epoch_steps)], device)
            if stopping or pausing:
                status = "stopped" if stopping else "paused"
                return _Interruption(status, f"{status} during epoch {epoch + 1} of {config.epochs}",
                                     position_at(step))
            t_step = time.monotonic()
            global_step = epoch * self.epoch_steps + step
            lr = config.lr * lr_factor(config.schedule, global_step, self.total_steps, self.warmup_steps,
                                       config.lr_start_fraction, config.lr_end_fraction)
            set_lr(self.optimizer, config, lr)
            indices = order[step * config.batch_size:(step + 1) * config.batch_size]
            x, y = self.batch(indices, epoch, gen), self.train_y[indices]
            mine = world.share(len(indices))
            denominator = self.class_weight[y].sum() if self.class_weight is not None else len(indices)
            loss, logits = train_step(self.forward_module(), self.optimizer, self.scaler, x[mine], y[mine],
                                      config.label_smoothing, device, self.compute.dtype, self.class_weight,
                                      denominator, world.size)
            if self.lookahead is not None:
                self.lookahead.after_step(model, global_step + 1, self.total_steps)
            loss_sum += loss * len(indices)
            correct += (logits.argmax(1) == y[mine]).sum()
            seen += len(indices)
            window.add(loss, len(indices))
            if (step + 1) % self.report_every == 0 or step + 1 == self.epoch_steps:
                mean_loss, images_per_s = window.take(world)
                emit(StepEvent(run_id, epoch + 1, global_step + 1, self.total_steps, mean_loss, lr, images_per_s,
                               elapsed()))
                if not math.isfinite(mean_loss) or mean_loss > DIVERGENCE_FACTOR * chance_loss:
                    kept = f"the checkpoint of epoch {epoch} is kept" if epoch else "no epoch had finished"
                    return _Interruption("diverged", f"training diverged at step {global_step + 1}: loss "
                                         f"{mean_loss:.4g}. The learning rate {config.lr:g} is probably too high; "
                                         f"try 3-10x lower. ({kept})", None)
            deadline.step_s = max(deadline.step_s * 0.8, time.monotonic() - t_step)
            deadline.steps_done += 1
        if self.lookahead is not None and epoch + 1 == config.epochs:
            self.lookahead.finish(model)
        t_validate = time.monotonic()
        val_loss, val_acc = self.validate()
        deadline.validate_s = time.monotonic() - t_validate
        totals = world.all_sum(torch.stack([loss_sum.double(), correct.double()]))
        return EpochEvent(run_id, epoch + 1, float(totals[0]) / max(seen, 1), float(totals[1]) / max(seen, 1),
                          val_loss, val_acc, time.perf_counter() - t_epoch, elapsed())

    def validate(self) -> tuple[float, float]:
        """Mean loss and accuracy on the held-out images (NaN, NaN when there are none), each
        process taking its share, all with process 0's BatchNorm statistics."""
        if len(self.val_x) == 0:
            return math.nan, math.nan
        self.world.sync_buffers(self.model)
        mine = self.world.share(len(self.val_x))
        logits = batched_logits(self.model, self.val_x[mine], self.normalization, self.compute)
        labels = self.val_y[mine]
        sums = torch.tensor([F.cross_entropy(logits, labels, reduction="sum").item() if len(labels) else 0.0,
                             float((logits.argmax(1) == labels).sum()) if len(labels) else 0.0], dtype=torch.float64)
        totals = self.world.all_sum(sums.to(self.compute.device)).cpu()
        return float(totals[0]) / len(self.val_x), float(totals[1]) / len(self.val_x)

    def keep_if_best(self, path: str | Path | None, run_id: str) -> bool:
        """After an epoch: if it is the best so far by the watched metric, keep its weights (in
        memory, and as the checkpoint `path` without training state). Returns whether it was."""
        best = best_epoch(self.history, self.config.monitor)
        if best != len(self.history) - 1:
            return False
        self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if path is not None and self.world.is_main:
            payload = self.payload(len(self.history), run_id, training_state=False)
            payload["best_epoch"] = len(self.history)
            checkpoints.save_atomic(payload, path)
        return True


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

    def take(self, world: World) -> tuple[float, float]:
        """(mean loss of the global batches, images/s of all processes) since the last report."""
        now = time.perf_counter()
        loss = world.all_sum(self.loss.clone()).item()
        result = loss / self.steps, self.images / max(now - self.since, 1e-9)
        self._reset(now)
        return result


def _start_event(run_id: str, compute: Compute, world: World) -> StartEvent:
    message = compute.describe()
    if world.distributed:
        message += f"; {world.size} processes ({world.backend}), each training on its share of every batch"
    return StartEvent(run_id, detect(compute.device).describe(), compute.to_dict(), message)


def fit(config: TrainConfig, data: ImageData, *, run_id: str = "",
        on_event: Callable[[Event], None] | None = None, stop: StopSignal | None = None,
        checkpoint_path: str | Path | None = None, best_path: str | Path | None = None,
        resume_from: dict | None = None, init_weights: dict | None = None,
        on_epoch_end: Callable[[int, nn.Module], None] | None = None,
        measurements: Measurements | None = None, deadline: float | None = None) -> FitResult:
    """Train as `config` says on `data` (normalised by its training images' statistics),
    reporting events; save a checkpoint after every epoch (and when stopped or paused) to
    `checkpoint_path`; continue a run from a checkpoint dict `resume_from`, or start from the body
    of `init_weights` (the checkpoint `config.init_from` names). Data with a validation split of
    its own validates on it (`val_size` is then 0).

    With `config.patience` the run stops when the watched validation metric has not improved for
    that many epochs; with `config.keep_best` the best epoch's weights are written to `best_path`
    and are the returned model. With `deadline` (a time.monotonic() value) the run pauses before
    a step that would end after it, with a checkpoint to continue from. `on_epoch_end(epoch,
    model)` lets benchmarks measure the model after each epoch (its time is not counted as
    training time).

    In a process group every process calls `fit` with the same arguments; process 0 reports the
    events and writes the files."""
    config = check_fit(config, data)
    world = current_world()
    emit = (on_event or (lambda event: None)) if world.is_main else (lambda event: None)
    stop = stop or threading.Event()
    compute = resumed_compute(config, resume_from) if world.is_main else None
    if world.is_main and compute is None:
        compute = training_compute(config, len(data.classes), measurements)
    chosen = world.broadcast(compute.to_dict() if compute is not None else None)
    compute = Compute(process_device(world, torch.device(chosen["device"])), chosen["precision"],
                      chosen["channels_last"], chosen["reason"], chosen["images_per_s"])
    emit(_start_event(run_id, compute, world))
    run = Trainer(config, data, compute, resume_from, init_weights, world)
    clock = _Deadline(deadline, len(run.val_x) / config.batch_size)
    t_start = time.perf_counter()
    elapsed_before = float(run.history[-1]["elapsed_s"]) if run.history else 0.0

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - t_start

    def result(status: str, message: str, epochs_done: int) -> FitResult:
        best = best_epoch(run.history, config.monitor) if config.keep_best or config.patience else None
        if config.keep_best and run.best_state is not None and status in ("finished", "stopped"):
            run.model.load_state_dict(run.best_state)
        return FitResult(status, message, run.model, epochs_done, run.history,
                         None if best is None else best + 1)

    if config.keep_best and run.history:  # a resumed run: the best epoch so far, to compare the next ones with
        best = best_epoch(run.history, config.monitor)
        if best is not None and best_path is not None and Path(best_path).is_file():
            run.best_state = checkpoints.read(best_path)["state_dict"]
    for epoch in range(run.start_epoch, config.epochs):
        outcome = run.epoch(epoch, run_id, emit, stop, elapsed, clock)
        if isinstance(outcome, _Interruption):
            if outcome.position is not None:
                t_save = time.monotonic()
                run.save(checkpoint_path, epoch, run_id, outcome.position)
                clock.save_s = time.monotonic() - t_save
            return result(outcome.status, outcome.message, epoch)
        run.history.append(dataclasses.asdict(outcome))
        emit(outcome)
        if config.keep_best:
            run.keep_if_best(best_path, run_id)
        t_save = time.monotonic()
        run.save(checkpoint_path, epoch + 1, run_id)
        clock.save_s = time.monotonic() - t_save
        if on_epoch_end is not None:
            t_callback = time.perf_counter()
            on_epoch_end(epoch + 1, run.model)
            t_start += time.perf_counter() - t_callback
        early = early_stop_message(run.history, config)
        if early is not None and epoch + 1 < config.epochs:
            return result("finished", early + (" (its weights are the run's model)" if config.keep_best else ""),
                          epoch + 1)
    message = f"finished {config.epochs} epochs"
    best = best_epoch(run.history, config.monitor)
    if config.keep_best and best is not None:
        message += f"; the best epoch was {best + 1} ({config.monitor} {run.history[best][config.monitor]:.4f}), " \
                   "whose weights are the run's model"
    return result("finished", message, config.epochs)


def check_fit(config: TrainConfig, data: ImageData) -> TrainConfig:
    """`config` as it trains on `data` (val_size 0 where the data has its own validation split),
    validated; ConfigError or TrainingError say what does not fit."""
    if data.has_validation:
        config = dataclasses.replace(config, val_size=0)
    config = config.validate(len(data.train_images))
    check_image_size(config.model, data.image_size)
    if (config.patience or config.keep_best) and not data.has_validation and config.val_size == 0:
        raise TrainingError("early stopping and 'keep the best epoch' watch the validation images; set the "
                            "validation size above 0")
    if config.batch_size < 2 * config.nproc:
        raise TrainingError(f"batch size {config.batch_size} is too small for {config.nproc} processes (each needs at "
                            "least 2 images of every batch); raise the batch size or use fewer processes")
    return config


def check_image_size(model_name: str, image_size: int) -> None:
    """Raise TrainingError when `model_name` cannot take square images of side `image_size`."""
    if image_size != DEFAULT_IMAGE_SIZE and not MODELS[model_name].any_input_size:
        able = ", ".join(name for name, spec in MODELS.items() if spec.any_input_size)
        raise TrainingError(f"{model_name} takes {DEFAULT_IMAGE_SIZE}x{DEFAULT_IMAGE_SIZE} images only; this data is "
                            f"{image_size}x{image_size}. Prepare it at {DEFAULT_IMAGE_SIZE}, or choose {able}")
