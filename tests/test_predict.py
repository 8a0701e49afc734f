import io

import numpy as np
import pytest
from PIL import Image

from cifarapp.images import ImageError, array_to_image, preprocess
from cifarapp.predict import predict_pixels


def _png(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def _red_left_blue_right(w, h, mode="RGB"):
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (255, 0, 0)
    a[:, w // 2:] = (0, 0, 255)
    return Image.fromarray(a).convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "CMYK", "LA", "1", "I", "F"])
def test_any_mode_becomes_32x32_rgb(mode):
    out = preprocess(_red_left_blue_right(64, 48, mode))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_centre_crop_then_area_resize():
    # 96x32: the centre square is the middle third, split red|blue at its centre
    out = preprocess(_red_left_blue_right(96, 32))
    assert out.shape == (32, 32, 3)
    assert tuple(out[16, 0]) == (255, 0, 0) and tuple(out[16, 31]) == (0, 0, 255)


def test_sixteen_bit_png_is_scaled_not_clipped():
    a = np.full((40, 40), 32768, np.uint16)
    img = Image.fromarray(a)  # mode I;16
    out = preprocess(_png(img))
    assert 120 <= out[0, 0, 0] <= 135


def test_transparency_is_composited_on_white():
    img = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    assert tuple(preprocess(img)[5, 5]) == (255, 255, 255)
    pal = Image.new("P", (40, 40), 0)
    pal.putpalette([0, 0, 0] * 256)
    pal.info["transparency"] = 0
    assert tuple(preprocess(_png(pal, transparency=0))[5, 5]) == (255, 255, 255)


def test_exif_rotated_photo_is_made_upright():
    img = _red_left_blue_right(64, 64)
    # stored rotated 90 degrees: red is at the top; orientation 6 says "rotate 90 cw to view"
    stored = img.rotate(90, expand=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = preprocess(_png(stored, format="JPEG", exif=exif, quality=95))
    assert out[16, 2, 0] > 200 and out[16, 29, 2] > 200  # red left, blue right again


@pytest.mark.parametrize("w,h", [(1, 1), (10000, 10), (10, 10000), (3000, 2000)])
def test_extreme_sizes(w, h):
    out = preprocess(Image.new("RGB", (w, h), (10, 200, 30)))
    assert out.shape == (32, 32, 3) and tuple(out[0, 0]) == (10, 200, 30)


@pytest.mark.parametrize("array", [
    np.zeros((20, 30), np.uint8), np.ones((20, 30, 1), np.float32), np.zeros((5, 5, 4), np.uint16),
    np.ones((8, 8, 3), bool), np.full((8, 8, 3), np.nan),
])
def test_numpy_arrays(array):
    assert preprocess(array).shape == (32, 32, 3)


@pytest.mark.parametrize("payload", [b"", b"not an image at all", _png(Image.new("RGB", (50, 50)))[:60]])
def test_bad_bytes_give_a_clear_error(payload):
    with pytest.raises(ImageError):
        preprocess(payload)


def test_bad_array_shape():
    with pytest.raises(ImageError, match="shape"):
        array_to_image(np.zeros((4, 4, 7)))


def test_evaluate_and_predict_use_the_model_where_it_was_loaded_and_never_move_it(tmp_path):
    """One LoadedModel serves Evaluate and Predict at once; neither may move it to another device
    or memory layout under the other (here the measured layout is contiguous)."""
    from fakes import FakeMeasurements

    from cifarapp.checkpoints import LoadedModel, read
    from cifarapp.evaluate import evaluate
    from cifarapp.weights import default_checkpoint, load_sample

    contiguous_wins = FakeMeasurements(lambda work, precision, channels_last: 100.0 if channels_last else 300.0)
    loaded = LoadedModel.from_payload(read(default_checkpoint()), "cpu", "fp32", contiguous_wins)
    assert not loaded.compute.channels_last

    def placement():
        return {(p.device.type, p.is_contiguous()) for p in loaded.model.parameters() if p.ndim == 4}

    before = placement()
    images, labels = load_sample()
    evaluate(loaded, images[:64], labels[:64])
    predict_pixels(loaded, images[:8].permute(0, 2, 3, 1).numpy())
    assert placement() == before == {("cpu", True)}
