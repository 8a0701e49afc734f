"""How long a run takes here: expected duration before it starts (from measured throughput),
remaining time while it trains (from its own steps), and the fast recipe sized to a time budget.

Durations are never written for one machine: they come from `hardware.Measurements`, a few
steps of the model measured on this machine, and are refined by the run's own steps.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace

from .config import TrainConfig
from .data import ImageData
from .hardware import Compute, Measurements, Workload
from .train import steps_per_epoch, training_compute

# validation runs at this batch size (inference.batched_logits' default)
VALIDATION_BATCH = 500
# What a training step costs beyond the model's forward, backward and optimizer step (batch
# indexing, augmentation, normalisation, lookahead, loss bookkeeping), as a factor on the
# measured model step; see benchmarks/time_budget.py, which prints estimates against actual runs.
PIPELINE_OVERHEAD = 1.0
# model building and whitening statistics once per run; a checkpoint write per epoch
SETUP_S = 1.0
PER_EPOCH_S = 0.05


@dataclass(frozen=True)
class Estimate:
    """Expected wall time of a run of one configuration on this machine."""

    seconds: float
    compute: Compute
    images_per_s: float  # measured training throughput at full size
    epochs: int
    train_images: int

    def describe(self) -> str:
        return (f"about {format_duration(self.seconds)} here: {self.epochs} epoch(s) of {self.train_images:,} "
                f"images at {self.images_per_s:,.0f} img/s measured ({self.compute.precision}, "
                f"{'channels-last' if self.compute.channels_last else 'contiguous layout'})")


def train_image_count(config: TrainConfig, n_available: int) -> int:
    """How many images one epoch of `config` trains on, out of `n_available` training images."""
    room = max(n_available - config.val_size, 0)
    return min(room, config.train_size) if config.train_size else room


def expected_duration(config: TrainConfig, n_available: int, num_classes: int = 10,
                      measurements: Measurements | None = None, image_size: int = 32,
                      own_validation: int | None = None) -> Estimate:
    """Wall time of a run of `config` on `n_available` training images of side `image_size`
    (validating on `own_validation` images where the data has its own validation split), from
    measured throughput of its model in the precision and layout it will train in."""
    measurements = measurements or Measurements()
    if own_validation is not None:
        config = replace(config, val_size=0)
    compute = training_compute(config, num_classes, measurements)
    n = train_image_count(config, n_available)
    images = min(steps_per_epoch(n, config.batch_size) * config.batch_size, n)

    def throughput(size: int = image_size, train: bool = True, frozen: bool = False,
                   batch: int = config.batch_size) -> float:
        work = Workload(config.model, config.width, num_classes, batch, size, train, frozen)
        return measurements.images_per_s(work, compute.precision, compute.channels_last, compute.device)

    # epochs differ by image size (low-res epochs come first) and by whether the stem is frozen
    kinds = Counter((config.low_res_size if epoch < config.low_res_epochs else image_size,
                     0 < config.stem_bias_epochs <= epoch) for epoch in range(config.epochs))
    train_s = sum(count * images / throughput(size, frozen=frozen) for (size, frozen), count in kinds.items())
    n_val = config.val_size if own_validation is None else own_validation
    val_s = n_val / throughput(train=False, batch=VALIDATION_BATCH) if n_val else 0.0
    seconds = SETUP_S + train_s * PIPELINE_OVERHEAD + config.epochs * (val_s + PER_EPOCH_S)
    return Estimate(seconds, compute, throughput(), config.epochs, n)


def duration_on(config: TrainConfig, data: ImageData, measurements: Measurements | None = None) -> Estimate:
    """`expected_duration` of `config` on the data set `data`."""
    return expected_duration(config, len(data.train_images), len(data.classes), measurements, data.image_size,
                             len(data.val_labels) if data.has_validation else None)


def remaining_seconds(step: int, total_steps: int, elapsed_s: float) -> float | None:
    """Time left in a run that has done `step` of `total_steps` steps in `elapsed_s` seconds."""
    if not step or not total_steps or elapsed_s is None:
        return None
    return elapsed_s / step * max(total_steps - step, 0)


def format_duration(seconds: float | None) -> str:
    """1h02m03s, 4m05s or 12s; a dash for an unknown duration."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


# Time budgets offered in the Train tab, in seconds.
BUDGETS = {"about 2 minutes here": 120, "about 5 minutes here": 300, "about 15 minutes here": 900}
# fastnet widths of the budget recipe, narrowest first, each with the epochs it needs before it
# beats the narrower width given the same time (airbench's lesson: at a fixed budget, a wider net
# pays only once the narrower one has had enough epochs)
WIDTH_LADDER = ((0.25, 0.0), (0.5, 2.0), (0.75, 10.0), (1.0, 14.0))
# at most this share of the epochs run on shrunk images (fast_medium runs 3 of 5 at 24x24)
MAX_LOW_RES_SHARE = 0.6


@dataclass(frozen=True)
class BudgetPlan:
    config: TrainConfig
    estimate: Estimate
    budget_s: float

    def describe(self) -> str:
        c = self.config
        low = f", the first {c.low_res_epochs} at {c.low_res_size}x{c.low_res_size}" if c.low_res_epochs else ""
        subset = f" on {c.train_size:,} images" if c.train_size else ""
        return (f"fastnet width {c.width:g}, {c.epochs} epoch(s){low}{subset}: expected "
                f"{format_duration(self.estimate.seconds)} of the {format_duration(self.budget_s)} budget")


def budget_recipe(base: TrainConfig, width: float, epochs: int, low_res_epochs: int,
                  train_size: int | None = None) -> TrainConfig:
    """The fast recipe `base` scaled to `epochs`: the warm-up is a fifth of the run, the stem bias
    trains for up to 3 epochs (half the run when shorter), and runs of 1-2 epochs take twice as
    many steps of half the batch (as the `fast` preset does)."""
    short = epochs <= 2
    return replace(base, width=width, epochs=epochs, low_res_epochs=low_res_epochs, train_size=train_size,
                   warmup_epochs=round(0.2 * epochs, 2), stem_bias_epochs=min(3, math.ceil(epochs / 2)),
                   batch_size=base.batch_size // 2 if short else base.batch_size,
                   lr=base.lr / 2 if short else base.lr)


def plan_for_budget(budget_s: float, base: TrainConfig, n_available: int, num_classes: int = 10,
                    measurements: Measurements | None = None) -> BudgetPlan:
    """The fast recipe whose expected duration here fills `budget_s` best: the widest fastnet
    that gets the epochs it needs (WIDTH_LADDER), as many epochs as fit, and shrunk low-res
    epochs to use the time an epoch too many would overrun."""
    measurements = measurements or Measurements()

    def estimate(config: TrainConfig) -> Estimate:
        return expected_duration(config, n_available, num_classes, measurements)

    chosen: BudgetPlan | None = None
    for width, min_epochs in WIDTH_LADDER:
        plan = _fill(budget_s, base, width, estimate)
        if chosen is not None and plan.config.epochs < min_epochs:
            break
        chosen = plan
    assert chosen is not None
    return chosen


def _fill(budget_s: float, base: TrainConfig, width: float, estimate) -> BudgetPlan:
    """At one width: the most epochs (then the fewest low-res ones) whose estimate fits the
    budget; a training subset when not even one epoch fits."""
    one = estimate(budget_recipe(base, width, 1, 0))
    if one.seconds > budget_s:  # train and validate on a share of the images
        fixed = SETUP_S + PER_EPOCH_S
        share = max(0.05, (budget_s - fixed) / max(one.seconds - fixed, 1e-9))
        config = replace(budget_recipe(base, width, 1, 0,
                                       train_size=max(base.batch_size, int(one.train_images * share))),
                         val_size=int(base.val_size * share))
        return BudgetPlan(config, estimate(config), budget_s)
    best = BudgetPlan(budget_recipe(base, width, 1, 0), one, budget_s)
    epochs = 2
    while True:
        fits = None
        for low in range(0, math.floor(MAX_LOW_RES_SHARE * epochs) + 1):
            config = budget_recipe(base, width, epochs, low)
            guess = estimate(config)
            if guess.seconds <= budget_s:
                fits = BudgetPlan(config, guess, budget_s)
                break
        if fits is None:
            return best
        best = fits
        epochs += 1
