"""Named training setups: one per experiment of the CIFAR-10 report, plus fast recipes.

Each preset is a full TrainConfig and says what the report found, so a user can compare.
Accuracies of the fast recipes were measured on a JPEG-decoded (quality 75) copy of CIFAR-10,
~2-3 points below what the original pixels give. How long a preset takes depends on the machine:
the Train tab measures it (`estimate.expected_duration`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import TrainConfig


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    report_finding: str
    config: TrainConfig


_REPORT = dict(optimizer="adam", lr=0.001, epochs=15, batch_size=128)
# airbench-style recipe for fastnet (its BatchNorm has no learned scale, its logits are scaled by
# 1/9): Nesterov SGD at a high lr with a 64x lr for BatchNorm shifts, airbench's triangle schedule
# (warm-up from 0.2 of the peak over the first 20%, then linear decay to 0.07 of it), label
# smoothing 0.2, lookahead weight averaging, the whitening stem's bias frozen after 3 epochs, and
# only light augmentation (2-pixel translations and alternating flips, on the training device)
# because runs are short. Per image, lr and weight decay match airbench94's (lr 1.5 per 1024
# images, decay 0.002 of the weights per 1024-image step).
_FAST = dict(model="fastnet", width=0.5, optimizer="sgd", lr=0.75, momentum=0.85, nesterov=True,
             weight_decay=0.00133, epochs=5, batch_size=512, schedule="onecycle", warmup_epochs=1.0,
             lr_start_fraction=0.2, lr_end_fraction=0.07, label_smoothing=0.2, bias_lr_scale=64.0,
             lookahead=True, stem_bias_epochs=3, augment=("translate", "alt_flip"))

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
    Preset("fast", "fastnet width 0.5, fast recipe: 2 epochs",
           "Not in the report. 80.5 ± 0.4% test accuracy (81.6 ± 0.2% with flip + translate TTA) when trained "
           "on all 50,000 training images, 3 seeds; the report's best net needs 14 epochs for 78%.",
           TrainConfig(**{**_FAST, "epochs": 2, "batch_size": 256, "lr": 0.375, "warmup_epochs": 0.4,
                            "stem_bias_epochs": 1})),
    Preset("fast_medium", "fastnet width 0.5, fast recipe: 5 epochs, the first 3 on 24x24 images",
           "Not in the report. 84.7 ± 0.2% test accuracy (85.8 ± 0.2% with flip + translate TTA) when trained "
           "on all 50,000 training images, 3 seeds.",
           TrainConfig(**{**_FAST, "low_res_epochs": 3})),
    Preset("fast_long", "fastnet width 0.75, fast recipe: 12 epochs",
           "Not in the report. 89.4% test accuracy (90.4% with flip + translate TTA) when trained on all "
           "50,000 training images, one run; 88.9% (90.2%) on 45,000 with 5,000 held out for validation, "
           "one run (weights/fastnet_w075.pt).",
           TrainConfig(**{**_FAST, "width": 0.75, "epochs": 12, "warmup_epochs": 2.4})),
]}
# the recipe that time budgets (Train tab, `train --budget`) scale to the machine
BUDGET_BASE = "fast_medium"
