"""Named training setups: one per experiment of the CIFAR-10 report, plus fast recipes.

Each preset is a full TrainConfig and says what the report found, so a user can compare.
Figures on this project's data are ~2-3 points lower: it was decoded from JPEG quality 75.
"""

from __future__ import annotations

from dataclasses import dataclass

from .train import TrainConfig


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    report_finding: str
    config: TrainConfig


_REPORT = dict(optimizer="adam", lr=0.001, epochs=15, batch_size=128)

PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("report_lenet", "LeNet-5 + Adam (report baseline)",
           "Report: val_acc 0.6050 after 15 epochs.",
           TrainConfig(model="lenet", **_REPORT)),
    Preset("report_sgd", "LeNet-5 + SGD with momentum",
           "Report: SGD reached 55.46% overall accuracy, below Adam.",
           TrainConfig(model="lenet", **{**_REPORT, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9})),
    Preset("report_k4", "LeNet-5 with 4x4 filters",
           "Report: val_acc 0.5874, 63.64% overall.",
           TrainConfig(model="lenet_k4", **_REPORT)),
    Preset("report_bn", "LeNet-5 + BatchNorm + LeakyReLU",
           "Report: val_acc 0.5997.",
           TrainConfig(model="lenet_bn", **_REPORT)),
    Preset("report_cnn6", "6-conv CNN + Adam (report's best)",
           "Report: 78.54% test accuracy.",
           TrainConfig(model="cnn6", **_REPORT)),
    Preset("report_high_lr", "LeNet-5 + Adam with a far too high learning rate",
           "Report: train_loss exploded to 211266 and accuracy collapsed to 10% (chance).",
           TrainConfig(model="lenet", **{**_REPORT, "lr": 0.1})),
    Preset("fast", "fastnet, fast recipe (best accuracy in a few CPU minutes)",
           "Not in the report: airbench-style net and recipe; beats the report's best in far less time.",
           TrainConfig(model="fastnet", width=0.5, optimizer="sgd", lr=0.2, momentum=0.9, nesterov=True,
                       weight_decay=5e-4, epochs=8, batch_size=512, schedule="onecycle", warmup_epochs=1.5,
                       label_smoothing=0.2, augment=("crop", "flip"))),
]}
