"""Grad-CAM saliency maps: which part of an image made the model choose a class.

Grad-CAM (Selvaraju et al., 2017) takes the activation A [C, h, w] of one convolutional layer and
the gradient of the class's logit with respect to it; each channel is weighted by its mean
gradient, the weighted channels are summed and passed through a ReLU (only evidence *for* the
class counts), and the h x w map is upsampled bilinearly to the input and scaled to [0, 1].

The LoadedModel is shared by concurrent requests, so the map is taken without disturbing it:
- a forward hook on the chosen layer captures the activation of this thread's forward pass only
  (it compares `threading.get_ident()`, so passes that other threads run on the model at the same
  time go through untouched), and is removed in a `finally`; a hook costs no memory, where a
  private copy of the model per request would double its memory on the device;
- gradients come from `torch.autograd.grad` with respect to that activation alone, so no
  parameter's `.grad` is written and no `requires_grad` flag is changed (the input, a fresh
  tensor of this call, is what requires a gradient, so a graph exists even for frozen weights);
- grad mode is switched on for this thread only (grad mode is thread-local), so other threads'
  `torch.no_grad` passes stay as they are; the model stays in eval mode, on its device and in its
  memory layout, and runs in fp32 (no autocast: half-precision gradients are too coarse here).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from .calibration import scaled_probabilities
from .checkpoints import LoadedModel
from .data import hwc_to_tensor, to_model_input
from .files import atomic_write
from .images import centre_square, preprocess, upright_rgb


@dataclass(frozen=True)
class CamLayer:
    """The layer whose activation Grad-CAM weighs for one architecture."""

    module: str  # path for nn.Module.get_submodule
    why: str


# Grad-CAM's map has the resolution of its layer, so the last layer before global pooling (the
# usual choice) shows nothing at 32x32 input: fastnet's last group is 3x3, resnet18's layer4 4x4,
# LeNet's pooled output 5x5. Each entry is the deepest layer with at least ~7x7 at 32x32 input
# (deeper layers see whole objects; shallower ones respond to edges and colours everywhere).
CAM_LAYERS: dict[str, CamLayer] = {
    "lenet": CamLayer("features.6", "the second conv block's activation before its pool: 10x10 at 32x32"),
    "lenet_k4": CamLayer("features.6", "the second conv block's activation before its pool: 11x11 at 32x32"),
    "lenet_bn": CamLayer("features.6", "the second conv block's activation before its pool: 10x10 at 32x32"),
    "cnn6": CamLayer("features.17", "the last conv's activation before the final pool: 8x8 at 32x32"),
    "resnet18": CamLayer("layer3", "8x8 at 32x32 and 16x16 at 64x64; layer4 is only 4x4 at 32x32"),
    "fastnet": CamLayer("groups.1", "the second conv group: 7x7 at 32x32 and 15x15 at 64x64; the last "
                                    "group is 3x3 and the pooled output 1x1"),
}

# perceptually uniform and ordered by lightness: the evidence is the brightest part of the overlay,
# readable in greyscale and with colour-blindness (jet's bright bands in mid-range suggest edges
# that are not there)
COLOUR_MAP = "inferno"
# the parts of an original image outside the model's centre square are shown grey at this brightness
OUTSIDE_BRIGHTNESS = 0.6
DISPLAY_MAX_SIDE = 512  # long side of the original image in a heat-map picture
MODEL_INPUT_DISPLAY_SIDE = 256  # the model input is enlarged by a whole factor to at most this side
HEATMAP_SUFFIX = "_gradcam.png"
_UNSAFE_NAME_CHARACTERS = re.compile(r"[^\w-]+")
_NAME_STEM_LIMIT = 80

ImageSource = str | Path | bytes | Image.Image  # what images.open_image opens


def cam_layer(model_name: str) -> CamLayer:
    """The layer Grad-CAM uses for a registered architecture."""
    if model_name not in CAM_LAYERS:
        raise ValueError(f"no Grad-CAM layer is chosen for model {model_name!r}; add it to explain.CAM_LAYERS "
                         f"(known: {', '.join(CAM_LAYERS)})")
    return CAM_LAYERS[model_name]


@dataclass(frozen=True)
class CamResult:
    """Grad-CAM maps of N images and the predictions they explain."""

    maps: np.ndarray  # float32 [N, S, S] in [0, 1]; 1 is the strongest evidence in that image
    targets: np.ndarray  # int64 [N]: the class each map explains
    probabilities: np.ndarray  # float32 [N, classes]: softmax of logits / the model's temperature
    empty: np.ndarray  # bool [N]: no positive evidence at the layer, the map is all zero
    layer: str  # the module path the maps were taken at


def grad_cam(loaded: LoadedModel, pixels: np.ndarray, target: int | Sequence[int] | None = None, *,
             batch_size: int = 64) -> CamResult:
    """Grad-CAM maps for preprocessed uint8 images [N, S, S, 3] (S = loaded.image_size, see
    `images.preprocess`), explaining `target` for every image (a class, or one class per image),
    or each image's top class when it is None. Safe to call while other threads use the same
    model (see the module docstring)."""
    side, num_classes = loaded.image_size, len(loaded.classes)
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (side, side, 3):
        raise ValueError(f"grad_cam takes preprocessed uint8 images of shape [N, {side}, {side}, 3] "
                         f"(images.preprocess with side={side}); got {pixels.dtype} {pixels.shape}")
    targets = None
    if target is not None:
        targets = torch.as_tensor(np.broadcast_to(np.asarray(target, dtype=np.int64), (len(pixels),)).copy())
        outside = targets[(targets < 0) | (targets >= num_classes)]
        if len(outside):
            raise ValueError(f"target class {int(outside[0])} is out of range: this model has {num_classes} "
                             f"classes (0 to {num_classes - 1})")
    if loaded.model.training:
        raise ValueError("the model is in training mode; Grad-CAM explains a model in eval mode "
                         "(load it with checkpoints.load_model)")
    layer = cam_layer(loaded.model_name)
    module = loaded.model.get_submodule(layer.module)
    images = hwc_to_tensor(pixels)
    parts = [_cam_batch(loaded, module, images[start:start + batch_size],
                        None if targets is None else targets[start:start + batch_size])
             for start in range(0, len(images), batch_size)]
    if not parts:
        return CamResult(np.zeros((0, side, side), np.float32), np.zeros(0, np.int64),
                         np.zeros((0, num_classes), np.float32), np.zeros(0, bool), layer.module)
    cams, targets, logits = (torch.cat(column) for column in zip(*parts))
    peaks = cams.amax(dim=(1, 2))
    empty = peaks <= 0
    maps = torch.where(empty[:, None, None], torch.zeros_like(cams),
                       cams / torch.where(empty, 1.0, peaks)[:, None, None]).clamp_(0, 1)
    probabilities = scaled_probabilities(logits, loaded.temperature)
    return CamResult(maps.numpy().astype(np.float32), targets.numpy().astype(np.int64),
                     probabilities.numpy().astype(np.float32), empty.numpy(), layer.module)


def _cam_batch(loaded: LoadedModel, module: torch.nn.Module, images: torch.Tensor,
               targets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unnormalised maps [B, S, S], targets [B] and fp32 logits [B, classes] of one batch, on the CPU."""
    captured: list[torch.Tensor] = []
    this_thread = threading.get_ident()

    def capture(_module, _inputs, output):
        if threading.get_ident() == this_thread:
            captured.append(output)

    handle = module.register_forward_hook(capture)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            x = to_model_input(images.to(loaded.compute.device), loaded.normalization,
                               loaded.compute.memory_format).requires_grad_(True)
            logits = loaded.model(x).float()
            if len(captured) != 1:
                raise RuntimeError(f"layer {type(module).__name__} ran {len(captured)} times in one forward pass; "
                                   "Grad-CAM needs a layer that runs once")
            activation = captured[0]
            targets = logits.argmax(1) if targets is None else targets.to(logits.device)
            # each image's logit depends on its own activation only (eval mode), so one gradient of
            # the sum gives every image's gradient
            (gradient,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), activation)
    finally:
        handle.remove()
    weights = gradient.float().mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * activation.detach().float()).sum(1, keepdim=True))
    side = images.shape[-1]
    return _upsample(cam, (side, side))[:, 0].cpu(), targets.cpu(), logits.detach().cpu()


def _upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of maps [B, 1, h, w] to `size` (height, width)."""
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def overlay(image_hwc: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 RGB [H, W, 3]: `image_hwc` (uint8 RGB) blended with the colour-mapped `heat` (float
    [h, w] in [0, 1], resized to H x W bilinearly); `alpha` is the weight of the colours."""
    image = np.asarray(image_hwc)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"overlay takes a uint8 RGB image [H, W, 3], got {image.dtype} {image.shape}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    heat = np.asarray(heat, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"heat must be a map [h, w], got shape {heat.shape}")
    resized = _upsample(torch.from_numpy(np.ascontiguousarray(heat))[None, None], image.shape[:2])[0, 0]
    colours = colormaps[COLOUR_MAP](resized.clamp(0, 1).numpy())[..., :3]
    blended = (1 - alpha) * image / 255.0 + alpha * colours
    return (np.clip(blended, 0, 1) * 255 + 0.5).astype(np.uint8)


def model_input_overlay(pixels_hwc: np.ndarray, heat: np.ndarray, display_side: int = MODEL_INPUT_DISPLAY_SIDE,
                        alpha: float = 0.45) -> np.ndarray:
    """The S x S model input enlarged by a whole factor (nearest neighbour: the pixels the model
    saw) to at most `display_side` (at least 1x), with `heat` over it."""
    pixels = np.asarray(pixels_hwc)
    factor = max(1, display_side // max(pixels.shape[:2]))
    return overlay(pixels.repeat(factor, axis=0).repeat(factor, axis=1), heat, alpha)


def original_overlay(source: ImageSource, heat: np.ndarray, max_side: int = DISPLAY_MAX_SIDE,
                     alpha: float = 0.45) -> np.ndarray:
    """uint8 RGB: the original image (a path, bytes or PIL image; upright, shrunk so its long
    side is at most `max_side`) with `heat`, the map of its preprocessed version, over the centre
    square that preprocess cropped; the rest, which the model never saw, is grey and dimmed."""
    image = upright_rgb(source, side=-(-max_side // 4))  # a JPEG keeps at least max_side pixels per side
    width, height = image.size
    scale = min(1.0, max_side / max(width, height))
    if scale < 1:
        image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))),
                             Image.Resampling.LANCZOS, reducing_gap=3.0)
    display = np.asarray(image, dtype=np.uint8)
    grey = np.asarray(image.convert("L"), dtype=np.float32) * OUTSIDE_BRIGHTNESS
    left, top, square = centre_square(width, height)
    left, top = round(left * scale), round(top * scale)
    side = max(1, min(round(square * scale), display.shape[1] - left, display.shape[0] - top))
    out = np.repeat((grey + 0.5).astype(np.uint8)[:, :, None], 3, axis=2)
    out[top:top + side, left:left + side] = overlay(display[top:top + side, left:left + side], heat, alpha)
    return out


def heatmap_file_name(image_path: str | Path, taken: set[str] | None = None) -> str:
    """A safe PNG name for the heat map of `image_path`: its base name's stem with anything but
    letters, digits, '_' and '-' replaced, plus HEATMAP_SUFFIX. Names already in `taken` (lower
    case; the new name is added) are not reused: a repeated stem gets -2, -3, ..."""
    stem = Path(str(image_path).replace("\\", "/")).stem
    stem = _UNSAFE_NAME_CHARACTERS.sub("_", stem).strip("_")[:_NAME_STEM_LIMIT] or "image"
    taken = set() if taken is None else taken
    name, copy = stem + HEATMAP_SUFFIX, 1
    while name.lower() in taken:
        copy += 1
        name = f"{stem}-{copy}{HEATMAP_SUFFIX}"
    taken.add(name.lower())
    return name


def heatmap_picture(source: ImageSource, pixels_hwc: np.ndarray, heat: np.ndarray, caption: str) -> Image.Image:
    """The original image with its heat map beside the enlarged model input with the same map,
    above a caption strip."""
    panels = [Image.fromarray(original_overlay(source, heat)), Image.fromarray(model_input_overlay(pixels_hwc, heat))]
    font = ImageFont.load_default()
    if not isinstance(font, ImageFont.FreeTypeFont):  # Pillow's bitmap font knows Latin-1 only
        caption = caption.encode("latin-1", "replace").decode("latin-1")
    gap, margin, strip = 8, 6, 24
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = max(sum(p.width for p in panels) + gap, round(probe.textlength(caption, font=font)) + 2 * margin)
    height = max(p.height for p in panels)
    picture = Image.new("RGB", (width, height + strip), (255, 255, 255))
    picture.paste(panels[0], (0, 0))
    picture.paste(panels[1], (panels[0].width + gap, 0))
    ImageDraw.Draw(picture).text((margin, height + margin), caption, fill=(0, 0, 0), font=font)
    return picture


@dataclass(frozen=True)
class SavedHeatmaps:
    """The heat-map PNGs written for a list of images (in their order) and the maps behind them."""

    paths: list[Path]
    cam: CamResult


def save_heatmaps(loaded: LoadedModel, image_paths: list[str | Path], out_dir: str | Path,
                  target: int | None = None) -> SavedHeatmaps:
    """Write one heat-map PNG per image into `out_dir` (created if missing; names from
    heatmap_file_name, so nothing is written outside it): the original with its Grad-CAM map
    beside the model's input, captioned with the class explained and its probability. Every image
    is read before anything is written, so an unreadable one (images.ImageError) writes nothing."""
    side = loaded.image_size
    pixels = np.array([preprocess(p, side=side) for p in image_paths], np.uint8).reshape(-1, side, side, 3)
    cam = grad_cam(loaded, pixels, target)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    written = []
    for i, image_path in enumerate(image_paths):
        class_index = int(cam.targets[i])
        caption = (f"{loaded.classes[class_index]} {cam.probabilities[i, class_index]:.1%}"
                   f" | Grad-CAM at {cam.layer}{' (no evidence found)' if cam.empty[i] else ''}"
                   f" | right: the {side}x{side} input")
        picture = heatmap_picture(image_path, pixels[i], cam.maps[i], caption)
        path = out_dir / heatmap_file_name(image_path, taken)
        atomic_write(path, lambda fh, picture=picture: picture.save(fh, format="PNG"))
        written.append(path)
    return SavedHeatmaps(written, cam)
