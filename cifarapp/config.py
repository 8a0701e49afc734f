"""The training configuration: every setting declared once, with its bounds, choices, label and
help, which validation, the CLI's options and the Train tab's widgets all read from here."""

from __future__ import annotations

import dataclasses
import math
import shlex
from dataclasses import dataclass, field
from typing import Any

from .data import AUGMENTATIONS
from .hardware import DEVICES, PRECISIONS
from .models import MODELS

OPTIMIZERS = ("adam", "adamw", "sgd")
# what early stopping watches for an improvement
MONITORS = ("val_acc", "val_loss")
SCHEDULES = ("constant", "onecycle", "cosine")
# quoted values in messages are cut to this many characters (a value may come from any client)
QUOTE_CHARS = 40


class ConfigError(ValueError):
    """One or more settings are invalid; `problems` lists each in plain words."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class Setting:
    """How one setting is checked and shown: a label (also the messages' name for it), help,
    closed bounds `low`/`high` (or open ones where `low_open`/`high_open`), and the choices of a
    text or list setting."""

    label: str
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    advanced: bool = False  # shown under "More settings" in the Train tab
    cli: bool = True  # an option of `cifarapp train` (the CLI names data by --data instead)
    name: str = ""  # what messages call it; default: the field name in words

    def range_text(self) -> str:
        low = "greater than" if self.low_open else "at least"
        high = "less than" if self.high_open else "at most"
        if self.low is not None and self.high is not None:
            if not self.low_open and not self.high_open:
                return f"between {number(self.low)} and {number(self.high)}"
            return f"{low} {number(self.low)} and {high} {number(self.high)}"
        return f"{low} {number(self.low)}" if self.low is not None else f"{high} {number(self.high)}"

    def in_range(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or not (value >= self.high if self.high_open else value > self.high)


def setting(default: Any, label: str, help: str, **bounds) -> Any:
    """A TrainConfig field with its Setting in the field's metadata."""
    return field(default=default, metadata={"setting": Setting(label, help, **bounds)})


def number(value: float) -> str:
    """A bound or value as people write it: 2147483648, 0.05, 1e+09."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


def quote(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS] + "…"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Build with `TrainConfig.from_dict` or the
    constructor, then call `validate()` before use."""

    dataset: str = setting("", "Data set", "an image set kept by the app (its key in the Data panel; empty: the app's "
                           "default data)", cli=False)
    model: str = setting("lenet", "Model", "architecture", choices=tuple(MODELS))
    width: float = setting(1.0, "Width multiplier (fastnet)", "channel width multiplier (fastnet only)",
                           low=0.05, high=8, advanced=True)
    optimizer: str = setting("adam", "Optimizer", "optimizer", choices=OPTIMIZERS)
    lr: float = setting(0.001, "Learning rate", "peak learning rate", low=0, high=100, low_open=True,
                        name="learning rate")
    momentum: float = setting(0.9, "Momentum (sgd)", "SGD momentum", low=0, high=1, high_open=True, advanced=True)
    nesterov: bool = setting(False, "Nesterov (sgd)", "use Nesterov momentum (sgd)", advanced=True)
    weight_decay: float = setting(0.0, "Weight decay",
                                  "L2 weight decay (biases and norm shifts get it divided by the bias lr scale)",
                                  low=0, high=1)
    epochs: int = setting(15, "Epochs", "passes over the training set", low=1, high=1000)
    batch_size: int = setting(128, "Batch size", "images per step", low=2, high=65536)
    schedule: str = setting("constant", "LR schedule",
                            "learning-rate schedule after warm-up (onecycle: linear decay, cosine: cosine decay, "
                            "both to the end fraction of the peak)", choices=SCHEDULES, name="lr schedule")
    warmup_epochs: float = setting(0.0, "Warm-up epochs", "epochs of linear warm-up to the peak lr", low=0,
                                   name="warm-up epochs")
    lr_start_fraction: float = setting(0.0, "Warm-up starts at this fraction of the peak lr",
                                       "lr at the start of the warm-up, as a fraction of the peak (airbench: 0.2)",
                                       low=0, high=1, advanced=True)
    lr_end_fraction: float = setting(0.0, "Decay ends at this fraction of the peak lr",
                                     "lr at the end of the decay (onecycle, cosine), as a fraction of the peak "
                                     "(airbench: 0.07)", low=0, high=1, advanced=True)
    label_smoothing: float = setting(0.0, "Label smoothing", "label smoothing of the cross-entropy loss",
                                     low=0, high=1, high_open=True)
    bias_lr_scale: float = setting(1.0, "LR multiplier for biases and norm shifts",
                                   "lr multiplier for biases and norm shifts (airbench uses 64 with fastnet)",
                                   low=0, high=1000, low_open=True, advanced=True)
    lookahead: bool = setting(False, "Lookahead weight averaging (every 5 steps)",
                              "lookahead averaging of the weights every 5 steps, growing toward the end",
                              advanced=True)
    stem_bias_epochs: int = setting(0, "Train the whitening stem's bias for this many epochs (fastnet; 0 = all)",
                                    "train fastnet's whitening-stem bias for only this many epochs, then freeze it "
                                    "(saves backward work; 0 = train it throughout)", low=0, advanced=True)
    low_res_epochs: int = setting(0, "Low-res epochs: the first epochs train on shrunk images (fastnet, resnet18)",
                                  "train the first this many epochs on images shrunk to the low-res size "
                                  "(progressive resizing: cheaper steps; fastnet and resnet18)", low=0, advanced=True,
                                  name="low-res epochs")
    low_res_size: int = setting(24, "Low-res image side (pixels)",
                                "side in pixels of the shrunk images of the low-res epochs", low=8, high=32,
                                advanced=True, name="low-res size")
    augment: tuple[str, ...] = setting((), "Augmentation (on the training device, per image)",
                                       "augmentations (comma-separated on the command line)",
                                       choices=tuple(AUGMENTATIONS), name="augmentation")
    seed: int = setting(0, "Seed", "random seed (the same seed on the same device gives the same numbers)",
                        low=0, high=2**31, high_open=True, advanced=True)
    device: str = setting("auto", "Device", "training device", choices=DEVICES, advanced=True)
    precision: str = setting("auto", "Precision",
                             "numeric precision (auto: bf16 where the CPU computes it natively and it measures "
                             "faster, else fp32; bf16 on GPUs that support it, else fp16)", choices=PRECISIONS,
                             advanced=True)
    compile: bool = setting(False, "torch.compile the training step",
                            "torch.compile the training step (compiling takes a while first; see "
                            "benchmarks/compile_cost.py for whether it pays here)", advanced=True)
    train_size: int | None = setting(None, "Training subset size (0 = all)",
                                     "train on only this many images (quick runs); default all", low=2,
                                     advanced=True, name="training subset size")
    val_size: int = setting(5000, "Validation images",
                            "images held out of the training set for validation (data with a validation split "
                            "of its own uses that instead)", low=0, advanced=True, name="validation size")
    class_weighted: bool = setting(False, "Class-weighted loss",
                                   "weight each class's loss by the inverse of its share of the training images, "
                                   "so that small classes count as much as large ones", advanced=True)
    init_from: str = setting("", "Start from", "start from the weights of a shipped model (its name) or a finished "
                             "run (its id) of the same architecture: the body is loaded, the head is new for this "
                             "data's classes (empty: random initial weights)", name="start from")
    freeze_epochs: int = setting(0, "Train only the head for the first epochs (with Start from)",
                                 "train only the new head (and norm layers) for this many first epochs, then "
                                 "everything (needs Start from)", low=0, name="frozen-body epochs")

    patience: int = setting(0, "Early stopping: patience (epochs; 0 = off)",
                            "stop when the watched validation metric has not improved for this many epochs "
                            "(0: train every epoch)", low=0, high=1000, advanced=True)
    monitor: str = setting("val_acc", "Early stopping watches", "the validation metric that early stopping and "
                           "'keep the best epoch' watch", choices=MONITORS, advanced=True)
    keep_best: bool = setting(False, "Keep the best epoch",
                              "keep the weights of the epoch with the best validation metric as the run's model "
                              "(best.pt, used by Evaluate and Predict); the last epoch's stay in checkpoint.pt for "
                              "resuming", advanced=True)
    nproc: int = setting(1, "Processes / GPUs",
                         "train with this many processes (torch.distributed: one per GPU, or gloo on the CPU); the "
                         "global batch stays the batch size", low=1, high=64, advanced=True, name="process count")
    sync_bn: bool = setting(False, "Synchronise BatchNorm across processes",
                            "BatchNorm statistics of the whole global batch instead of each process's share "
                            "(with several processes)", advanced=True)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["augment"] = list(self.augment)
        return d

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Build from a dict of any origin (JSON file, form, API call): unknown keys and values of
        the wrong type raise ConfigError naming each problem."""
        if not isinstance(values, dict):
            raise ConfigError([f"a configuration must be a mapping of settings, got {type(values).__name__}"])
        problems, kwargs = [], {}
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        for key, value in values.items():
            if key not in types:
                problems.append(f"unknown setting {quote(key)}; known settings: {', '.join(types)}")
                continue
            try:
                kwargs[key] = _coerce(key, types[key], value)
            except (TypeError, ValueError) as exc:
                problems.append(str(exc))
        if problems:
            raise ConfigError(problems)
        return cls(**kwargs)

    def validate(self, n_train_available: int | None = None) -> TrainConfig:
        """Return self if every value is usable, else raise ConfigError listing every problem.
        `n_train_available` (the training set size) enables the size checks."""
        p: list[str] = []
        for f, spec in settings():
            value = getattr(self, f.name)
            name = spec.name or f.name.replace("_", " ")
            if spec.choices:
                bad = [v for v in (value if isinstance(value, (tuple, list)) else (value,)) if v not in spec.choices]
                if bad:
                    p.append(f"unknown {name} {', '.join(quote(v) for v in bad)}; "
                             f"choose from {', '.join(spec.choices)}")
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and not spec.in_range(value):
                p.append(f"{name} must be {spec.range_text()}, got {number(value)}")
        p += self._relations()
        if n_train_available is not None and not p:
            p += self._size_problems(n_train_available)
        if p:
            raise ConfigError(p)
        return self

    def _relations(self) -> list[str]:
        """Checks that involve several settings or the model."""
        p = []
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            p.append("nesterov needs the sgd optimizer with momentum above 0")
        if self.freeze_epochs and not self.init_from:
            p.append("frozen-body epochs need Start from (a model whose body is already trained); set it to 0")
        elif self.freeze_epochs > self.epochs:
            p.append(f"frozen-body epochs must be between 0 and the number of epochs, got {self.freeze_epochs}")
        for name in ("init_from", "dataset"):
            if len(getattr(self, name)) > 200:
                p.append(f"{name.replace('_', ' ')} must be a name or key, not {len(getattr(self, name))} characters")
        if self.warmup_epochs > self.epochs:
            p.append(f"warm-up epochs must be between 0 and the number of epochs, got {self.warmup_epochs:g}")
        # epoch counts of features only some models have: (field, ModelSpec flag, what it needs)
        for name, flag, needs in (("stem_bias_epochs", "whitening_stem", "a whitening stem"),
                                  ("low_res_epochs", "any_input_size",
                                   "global pooling, so that it takes any image size")):
            value = getattr(self, name)
            words = TrainConfig.__dataclass_fields__[name].metadata["setting"].name or name.replace("_", " ")
            if value > self.epochs:
                p.append(f"{words} must be between 0 and the number of epochs, got {value}")
            elif value and self.model in MODELS and not getattr(MODELS[self.model], flag):
                able = ", ".join(m for m, spec in MODELS.items() if getattr(spec, flag))
                p.append(f"{words} needs a model with {needs} ({able}); set it to 0 for {self.model}")
        return p

    def _size_problems(self, n_train_available: int) -> list[str]:
        room = n_train_available - self.val_size
        if room < 2:
            return [f"validation size {self.val_size} leaves no training images out of {n_train_available}"]
        if self.train_size is not None and self.train_size > room:
            return [f"training subset size {self.train_size} is more than the {room} images left "
                    f"after holding out {self.val_size} for validation"]
        if self.batch_size > min(room, self.train_size or room):
            return [f"batch size {self.batch_size} is larger than the {min(room, self.train_size or room)} "
                    "training images; lower the batch size"]
        return []


def settings() -> list[tuple[dataclasses.Field, Setting]]:
    """Every TrainConfig field with its Setting, in declaration order."""
    return [(f, f.metadata["setting"]) for f in dataclasses.fields(TrainConfig)]


def cli_command(config: TrainConfig, data_flag: str | None = None) -> str:
    """The `python -m cifarapp train ...` command equivalent to a config."""
    default = TrainConfig()
    parts = ["python", "-m", "cifarapp", "train"]
    for f, spec in settings():
        value = getattr(config, f.name)
        if value == getattr(default, f.name) or not spec.cli:
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
            raise TypeError(f"{key} must be a list of names, got {quote(value)}")
        return tuple(value)
    if ann == "bool":
        if not isinstance(value, bool):
            raise TypeError(f"{key} must be true or false, got {quote(value)}")
        return value
    if ann.startswith("int"):
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{key} must be a whole number, got {quote(value)}")
        return value
    if ann == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{key} must be a number, got {quote(value)}")
        if not math.isfinite(value):
            raise ValueError(f"{key} must be a finite number, got {quote(value)}")
        return float(value)
    if ann == "str":
        if not isinstance(value, str):
            raise TypeError(f"{key} must be text, got {quote(value)}")
        return value
    raise TypeError(f"{key}: unsupported setting type {ann}")
