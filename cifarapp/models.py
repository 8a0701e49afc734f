"""The model registry: name -> constructor, one-line description and parameter count."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


class LeNet(nn.Module):
    """LeNet-5 for 3x32x32 input: conv(k) 6 -> pool -> conv(k) 16 -> pool -> FC 120 -> 84 -> classes."""

    def __init__(self, num_classes: int = 10, kernel_size: int = 5, batchnorm: bool = False,
                 leaky: bool = False):
        super().__init__()

        def act() -> nn.Module:
            return nn.LeakyReLU(0.01) if leaky else nn.ReLU()

        def norm(channels: int) -> nn.Module:
            return nn.BatchNorm2d(channels) if batchnorm else nn.Identity()

        side = ((32 - kernel_size + 1) // 2 - kernel_size + 1) // 2
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, kernel_size), norm(6), act(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size), norm(16), act(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * side * side, 120), act(), nn.Linear(120, 84), act(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SeededDropout(nn.Module):
    """Dropout of single values, or of whole channels (`channels`, as nn.Dropout2d), that draws
    its masks from `generator` when one is set: training gives each run its own, so that runs in
    parallel threads never share a random stream."""

    def __init__(self, p: float, channels: bool = False):
        super().__init__()
        self.p, self.channels = p, channels
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        shape = (*x.shape[:2], *[1] * (x.dim() - 2)) if self.channels else x.shape
        keep = torch.rand(shape, device=x.device, generator=self.generator) >= self.p
        return x * keep.to(x.dtype) / (1 - self.p)


def _conv(cin: int, cout: int, batchnorm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(cout))
    return layers + [nn.ReLU()]


class CNN6(nn.Module):
    """The report's 6-conv network: (32 BN, 64) pool (128 BN, 128) pool Dropout2d 0.05
    (256 BN, 256) pool Dropout 0.1, FC 4096 -> 1024 -> 512 -> Dropout 0.1 -> classes."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            *_conv(3, 32, True), *_conv(32, 64, False), nn.MaxPool2d(2),
            *_conv(64, 128, True), *_conv(128, 128, False), nn.MaxPool2d(2), SeededDropout(0.05, channels=True),
            *_conv(128, 256, True), *_conv(256, 256, False), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            SeededDropout(0.1), nn.Flatten(), nn.Linear(4096, 1024), nn.ReLU(), nn.Linear(1024, 512),
            nn.ReLU(), SeededDropout(0.1), nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def cifar_resnet18(num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 with a 3x3 stride-1 stem and no stem max-pool, for 32x32 input."""
    from torchvision.models import resnet18

    model = resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


class FastBatchNorm(nn.BatchNorm2d):
    """BatchNorm with a fixed unit scale (only the shift is learned) and fast-moving statistics."""

    def __init__(self, channels: int, momentum: float = 0.4, eps: float = 1e-12):
        super().__init__(channels, momentum=momentum, eps=eps)
        self.weight.requires_grad_(False)


class ConvGroup(nn.Module):
    """conv -> max-pool -> BN -> GELU -> conv -> BN -> GELU (airbench-style block)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding="same", bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = FastBatchNorm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding="same", bias=False)
        self.norm2 = FastBatchNorm(cout)
        self.act = nn.GELU()
        for conv in (self.conv1, self.conv2):  # identity init of the first channels eases early training
            w = conv.weight.data
            nn.init.dirac_(w[: w.size(1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class FastNet(nn.Module):
    """Speed-oriented net: a 2x2 patch-whitening stem, three conv groups, global max-pool, linear.

    `width` scales the channel counts (1.0 gives 64/256/256, as in airbench94).
    """

    def __init__(self, num_classes: int = 10, width: float = 1.0, logit_scale: float = 1 / 9):
        super().__init__()
        # multiples of 8 keep the CPU and GPU convolution kernels on their fast paths
        widths = [max(8, round(c * width / 8) * 8) for c in (64, 256, 256)]
        self.whiten = nn.Conv2d(3, 24, 2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)  # set from the data by init_whitening; only the bias learns
        self.act = nn.GELU()
        self.groups = nn.Sequential(ConvGroup(24, widths[0]), ConvGroup(widths[0], widths[1]),
                                    ConvGroup(widths[1], widths[2]))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        self.logit_scale = logit_scale

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the stem to the eigenvectors of the 2x2 patch covariance of `images` (normalised
        float [N, 3, 32, 32]), scaled to unit variance, as the positive and negated filter."""
        patches = images.float().unfold(2, 2, 1).unfold(3, 2, 1)  # [N, C, 31, 31, 2, 2]
        patches = patches.transpose(1, 3).reshape(-1, 3 * 2 * 2)  # rows flattened as (c, kh, kw)
        patches = patches - patches.mean(0)
        cov = patches.T @ patches / patches.shape[0]
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]).reshape(12, 3, 2, 2)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).to(self.whiten.weight.dtype))
        self.whiten.bias.zero_()

    def freeze_stem(self) -> None:
        """Stop training the stem's bias. Nothing before the first conv group then needs a
        gradient, so backward skips the stem's GELU and the first conv's input gradient."""
        self.whiten.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(self.act(self.whiten(x)))
        return self.head(self.pool(x).flatten(1)) * self.logit_scale


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture."""

    name: str
    description: str
    build: Callable[..., nn.Module]
    accepts_width: bool = False
    whitening_stem: bool = False
    any_input_size: bool = False  # global pooling before the head: trains on smaller images too


_SPECS = [
    ModelSpec("lenet", "LeNet-5 (report baseline): conv5x5 6, pool, conv5x5 16, pool, FC 120-84-10",
              lambda num_classes=10: LeNet(num_classes)),
    ModelSpec("lenet_k4", "LeNet-5 with 4x4 filters (report 2.2.2)",
              lambda num_classes=10: LeNet(num_classes, kernel_size=4)),
    ModelSpec("lenet_bn", "LeNet-5 with BatchNorm and LeakyReLU (report 2.2.3)",
              lambda num_classes=10: LeNet(num_classes, batchnorm=True, leaky=True)),
    ModelSpec("cnn6", "The report's 6-conv network with BatchNorm and dropout (78.54% in the report)",
              lambda num_classes=10: CNN6(num_classes)),
    ModelSpec("resnet18", "CIFAR-style ResNet-18 (3x3 stem, no stem max-pool), from torchvision",
              lambda num_classes=10: cifar_resnet18(num_classes), any_input_size=True),
    ModelSpec("fastnet", "Speed-oriented airbench-style net: whitening stem, 3 conv groups, width knob",
              lambda num_classes=10, width=1.0: FastNet(num_classes, width), accepts_width=True,
              whitening_stem=True, any_input_size=True),
]
MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}


def build_model(name: str, num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """Instantiate a registered model; `width` applies to models that accept it."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    spec = MODELS[name]
    return spec.build(num_classes, width) if spec.accepts_width else spec.build(num_classes)


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def registered_parameter_count(name: str, width: float = 1.0) -> int:
    """Trainable parameters of a registered model, built on the meta device (no memory, instant)."""
    with torch.device("meta"):
        return parameter_count(build_model(name, width=width))
