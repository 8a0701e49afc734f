"""The learning-rate range test (Smith, "Cyclical Learning Rates for Training Neural Networks",
2017; fastai's `lr_find`): train for a few hundred steps while the learning rate grows
exponentially from tiny to huge, smooth the loss, stop when it explodes, and suggest the learning
rate where the smoothed loss falls fastest. It trains its own copy of the run's model and
optimizer (the same pipeline as `train.fit`: augmentation, precision, lr multipliers), so nothing a
caller holds is changed.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch import nn

from .config import TrainConfig
from .data import ImageData
from .distributed import SINGLE
from .hardware import Measurements
from .train import StopSignal, Trainer, check_fit, set_lr, train_step, training_compute

DEFAULT_STEPS = 100  # fastai's default; enough points for a smooth curve in a minute or two
DEFAULT_LR_MIN = 1e-7
DEFAULT_LR_MAX = 10.0
# the loss is smoothed by an exponential moving average (with bias correction) over about this
# share of the test's steps: fastai's fixed 0.98 averages over 50 steps, which for a 100-step test
# lags the curve by four decades of lr
SMOOTHING_WINDOW = 0.05
# the test stops once the smoothed loss exceeds this many times its minimum
EXPLODE_FACTOR = 4.0
# the first steps' loss says little (the average is still forming); they are not candidates
SKIP_FRACTION = 0.1


@dataclass(frozen=True)
class LRFinderResult:
    """The range test's curve and what it suggests."""

    lrs: list[float]
    losses: list[float]  # raw loss per step
    smoothed: list[float]
    suggestion: float | None  # the lr of the steepest fall of the smoothed loss; None: no fall seen
    minimum_lr: float  # the lr where the smoothed loss is lowest
    stopped_because: str
    seconds: float

    def describe(self) -> str:
        """One line: the suggestion and how the curve went."""
        if self.suggestion is None:
            return (f"no learning rate suggested: the loss did not fall between {self.lrs[0]:.2g} and "
                    f"{self.lrs[-1]:.2g} ({self.stopped_because})")
        return (f"suggested lr: {self.suggestion:.3g} (steepest fall of the smoothed loss; lowest loss at "
                f"{self.minimum_lr:.3g}; {len(self.lrs)} steps, {self.stopped_because})")


def suggest(lrs: list[float], smoothed: list[float]) -> float | None:
    """The lr where the smoothed loss falls fastest per decade of lr, looked for between the
    first steps and the minimum (past the minimum the loss rises, and there the lr is too high)."""
    lowest = int(np.argmin(smoothed))
    start = int(len(smoothed) * SKIP_FRACTION)
    if lowest - start < 2:
        return None
    slopes = np.gradient(np.asarray(smoothed[start:lowest + 1]), np.log10(lrs[start:lowest + 1]))
    steepest = int(np.argmin(slopes))
    return float(lrs[start + steepest]) if slopes[steepest] < 0 else None


def find_lr(config: TrainConfig, data: ImageData, *, steps: int = DEFAULT_STEPS, lr_min: float = DEFAULT_LR_MIN,
            lr_max: float = DEFAULT_LR_MAX, model: nn.Module | None = None, init_weights: dict | None = None,
            measurements: Measurements | None = None, stop: StopSignal | None = None,
            progress: Callable[[int, int], None] | None = None) -> LRFinderResult:
    """Run the range test for the training that `config` describes on `data`: `steps` steps with
    the lr growing from `lr_min` to `lr_max` (its schedule, warm-up and lookahead are not used).
    It starts from a copy of `model`'s weights when given, else from the config's initial
    weights (or `init_weights`, a checkpoint its `init_from` names); neither is changed.
    `progress(step, steps)` follows it; `stop` ends it early with what it has."""
    if not 0 < lr_min < lr_max:
        raise ValueError(f"the range test needs 0 < lr_min < lr_max, got {lr_min:g} and {lr_max:g}")
    if steps < 10:
        raise ValueError(f"the range test needs at least 10 steps for a curve, got {steps}")
    config = check_fit(dataclasses.replace(config, schedule="constant", warmup_epochs=0.0, lookahead=False,
                                           keep_best=False, patience=0, compile=False), data)
    started = time.perf_counter()
    compute = training_compute(config, len(data.classes), measurements)
    run = Trainer(config, data, compute, None, init_weights, SINGLE)
    if model is not None:
        run.model.load_state_dict(model.state_dict())  # copies the values
    lrs, losses, smoothed = [], [], []
    average, best, stopped = 0.0, math.inf, f"reached lr {lr_max:g}"
    beta = 1 - 1 / max(2.0, SMOOTHING_WINDOW * steps)
    gen, order, epoch, position = None, None, -1, run.epoch_steps
    for step in range(steps):
        if stop is not None and stop.is_set():
            stopped = "stopped"
            break
        if position == run.epoch_steps:  # the test may outlast an epoch: it goes on with the next
            epoch, position = epoch + 1, 0
            gen, order = run.prepare_epoch(epoch)
            run.model.train()
        lr = lr_min * (lr_max / lr_min) ** (step / (steps - 1))
        set_lr(run.optimizer, config, lr)
        indices = order[position * config.batch_size:(position + 1) * config.batch_size]
        position += 1
        loss, _ = train_step(run.forward_module(), run.optimizer, run.scaler, run.batch(indices, epoch, gen),
                             run.train_y[indices], config.label_smoothing, compute.device, compute.dtype,
                             run.class_weight)
        value = float(loss)
        if progress is not None:
            progress(step + 1, steps)
        if not math.isfinite(value):
            stopped = f"the loss became {value} at lr {lr:.2g}"
            break
        average = beta * average + (1 - beta) * value
        lrs.append(lr)
        losses.append(value)
        smoothed.append(average / (1 - beta ** (step + 1)))
        best = min(best, smoothed[-1])
        if step > steps * SKIP_FRACTION and smoothed[-1] > EXPLODE_FACTOR * best:
            stopped = f"the loss exploded at lr {lr:.2g}"
            break
    if len(lrs) < 3:
        raise ValueError(f"the range test ended after {len(lrs)} step(s) ({stopped}); lower lr_min")
    minimum = lrs[int(np.argmin(smoothed))]
    return LRFinderResult(lrs, losses, smoothed, suggest(lrs, smoothed), minimum, stopped,
                          time.perf_counter() - started)

