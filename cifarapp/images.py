"""The safe image loader: how any picture becomes the square RGB image a model sees (32x32 for
the CIFAR-10 models), for Predict and for preparing a user's image sets:
1. the EXIF orientation is applied, so a phone photo is upright;
2. JPEGs are decoded at reduced size where the decoder allows (`draft`), so a 24-megapixel photo
   costs milliseconds, not a full decode;
3. the mode is made RGB: transparency is composited on white, 16-bit and float images are
   scaled to 8 bits, CMYK, palette and greyscale images are converted;
4. the centre square is cropped (CIFAR-10 images are square; squashing would distort shapes);
5. the square is resized to the model's side with area averaging (Pillow's BOX filter), which keeps fine
   detail from aliasing.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SIDE = 32
# Pillow refuses images above twice this many pixels (decompression bombs) and warns above it.
MAX_PIXELS = 40_000_000
# where an image opened at reduced size (`draft`) keeps its size in the file
ORIGINAL_SIZE = "cifarapp_original_size"


class ImageError(ValueError):
    """An input could not be read as an image; the message says why in plain words."""


def open_image(source: str | Path | bytes | Image.Image, side: int = SIDE, name: str | None = None) -> Image.Image:
    """Open a file path or bytes as a PIL image (first frame of an animation), with checks; a
    JPEG is decoded at a reduced size that still has 4x the pixels of a `side`-pixel square.
    `name` is what messages call it (default: the file name, or "upload")."""
    if isinstance(source, Image.Image):
        return source
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    name = name or (Path(source).name if isinstance(source, (str, Path)) else "upload")
    try:
        fh = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    except OSError as exc:
        raise ImageError(f"{name}: cannot be opened ({exc.strerror or exc})") from exc
    with fh:
        try:
            image = Image.open(fh)
            image.seek(0)
            if image.format == "JPEG":
                image.info[ORIGINAL_SIZE] = image.size
                image.draft("RGB", (side * 4, side * 4))
            image.load()
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{name}: image is too large ({exc}); the limit is {MAX_PIXELS:,} pixels") from exc
        except UnidentifiedImageError as exc:
            raise ImageError(f"{name}: not an image file Pillow can read "
                             "(PNG, JPEG, GIF, BMP, WebP, TIFF ...)") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"{name}: the image data is damaged or truncated ({exc})") from exc
    return image


def to_rgb(image: Image.Image) -> Image.Image:
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


def upright_rgb(source, side: int = SIDE, name: str | None = None) -> Image.Image:
    """Any supported input, opened as `preprocess` sees it before cropping: upright (EXIF
    orientation applied) and RGB; a JPEG is decoded at a reduced size that keeps 4x `side`."""
    image = array_to_image(source) if isinstance(source, np.ndarray) else open_image(source, side, name)
    try:
        image = ImageOps.exif_transpose(image) or image
    except (OSError, ValueError, SyntaxError, KeyError, TypeError):
        pass  # a broken EXIF block only loses the orientation hint
    return to_rgb(image)


def centre_square(width: int, height: int) -> tuple[int, int, int]:
    """(left, top, side) of the centred square that `preprocess` crops from a width x height image."""
    square = min(width, height)
    return (width - square) // 2, (height - square) // 2, square


def preprocess(source, side: int = SIDE, name: str | None = None) -> np.ndarray:
    """Any supported input (path, bytes, PIL image, numpy array) -> uint8 [side, side, 3],
    upright, centre-cropped and area-resized as the module docstring describes. `name` is what
    messages call the input."""
    image = upright_rgb(source, side, name)
    left, top, square = centre_square(*image.size)
    image = image.crop((left, top, left + square, top + square))
    if square > 4 * side:  # shrink by an integer factor first: fast and still area-averaging
        image = image.reduce(square // (2 * side))
    image = image.resize((side, side), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.uint8)


