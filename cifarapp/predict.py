"""Class probabilities for arbitrary images.

How any picture becomes the 32x32 RGB image the model sees:
1. the EXIF orientation is applied, so a phone photo is upright;
2. JPEGs are decoded at reduced size where the decoder allows (`draft`), so a 24-megapixel photo
   costs milliseconds, not a full decode;
3. the mode is made RGB: transparency is composited on white, 16-bit and float images are
   scaled to 8 bits, CMYK, palette and greyscale images are converted;
4. the centre square is cropped (CIFAR-10 images are square; squashing would distort shapes);
5. the square is resized to 32x32 with area averaging (Pillow's BOX filter), which keeps fine
   detail from aliasing.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .checkpoints import LoadedModel
from .inference import batched_logits

SIDE = 32
# Pillow refuses images above twice this many pixels (decompression bombs) and warns above it.
MAX_PIXELS = 40_000_000


class ImageError(ValueError):
    """An input could not be read as an image; the message says why in plain words."""


def open_image(source: str | Path | bytes | Image.Image) -> Image.Image:
    """Open a file path or bytes as a PIL image (first frame of an animation), with checks."""
    if isinstance(source, Image.Image):
        return source
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    name = Path(source).name if isinstance(source, (str, Path)) else "upload"
    try:
        fh = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    except OSError as exc:
        raise ImageError(f"{name}: cannot be opened ({exc.strerror or exc})") from exc
    with fh:
        try:
            image = Image.open(fh)
            image.seek(0)
            if image.format == "JPEG":
                image.draft("RGB", (SIDE * 4, SIDE * 4))
            image.load()
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{name}: image is too large ({exc}); the limit is {MAX_PIXELS:,} pixels") from exc
        except UnidentifiedImageError as exc:
            raise ImageError(f"{name}: not an image file Pillow can read (PNG, JPEG, GIF, BMP, WebP, TIFF ...)") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"{name}: the image data is damaged or truncated ({exc})") from exc
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB, compositing transparency over white and scaling deep images."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        if image.mode == "F":
            top = max(values.max(initial=0), 1e-12) if values.max(initial=0) > 1 else 1.0
        image = Image.fromarray(np.clip(values / top * 255 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def array_to_image(array: np.ndarray) -> Image.Image:
    """A numpy image (HxW, HxWx1, HxWx3 or HxWx4; uint8, uint16, bool or float in [0, 1]) -> PIL."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or 0 in a.shape:
        raise ImageError(f"an image array must be HxW, HxWx1, HxWx3 or HxWx4, got shape {a.shape}")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        a = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
    elif a.dtype == np.uint16:
        a = (a.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.integer):
        a = np.clip(a, 0, 255).astype(np.uint8)
    else:
        raise ImageError(f"unsupported image array type {a.dtype}")
    return Image.fromarray(a, "L" if a.ndim == 2 else ("RGB" if a.shape[2] == 3 else "RGBA"))


def preprocess(source) -> np.ndarray:
    """Any supported input (path, bytes, PIL image, numpy array) -> uint8 [32, 32, 3], upright,
    centre-cropped and area-resized as the module docstring describes."""
    image = array_to_image(source) if isinstance(source, np.ndarray) else open_image(source)
    try:
        image = ImageOps.exif_transpose(image) or image
    except (OSError, ValueError, SyntaxError, KeyError, TypeError):
        pass  # a broken EXIF block only loses the orientation hint
    image = _to_rgb(image)
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side > 4 * SIDE:  # shrink by an integer factor first: fast and still area-averaging
        image = image.reduce(side // (2 * SIDE))
    image = image.resize((SIDE, SIDE), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.uint8)


def predict(loaded: LoadedModel, sources: list, *, batch_size: int = 256, tta: str = "none") -> np.ndarray:
    """Probabilities [len(sources), classes] for images given as anything `preprocess` accepts."""
    if not sources:
        return np.zeros((0, len(loaded.classes)), dtype=np.float32)
    pixels = np.stack([preprocess(s) for s in sources])
    return predict_pixels(loaded, pixels, batch_size=batch_size, tta=tta)


def predict_pixels(loaded: LoadedModel, pixels: np.ndarray, *, batch_size: int = 256,
                   tta: str = "none") -> np.ndarray:
    """Probabilities for already preprocessed uint8 images [N, 32, 32, 3]."""
    images = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2)
    logits = batched_logits(loaded.model, images, loaded.normalization, loaded.compute,
                            batch_size=batch_size, tta=tta)
    return logits.softmax(1).numpy()


def top_k(probabilities: np.ndarray, classes, k: int = 3) -> list[tuple[str, float]]:
    """The k most probable (class, probability) pairs of one image, most probable first."""
    order = np.argsort(-probabilities)[:k]
    return [(classes[i], float(probabilities[i])) for i in order]
