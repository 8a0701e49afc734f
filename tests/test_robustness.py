"""Hostile or odd input: uploads, settings and faults give a clean message, never a crash."""

import io
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cifarapp import checkpoints
from cifarapp.config import ConfigError, TrainConfig
from cifarapp.images import MAX_PIXELS, ImageError, preprocess
from cifarapp.manager import RunManager


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_decompression_bomb_is_refused_quickly():
    side = int(math.sqrt(MAX_PIXELS * 2)) + 100  # above Pillow's hard limit (twice MAX_PIXELS)
    bomb = _encode(Image.new("1", (side, side)), "PNG")  # a few kB that would decode to GBs
    assert len(bomb) < 1_000_000
    with pytest.raises(ImageError, match="too large"):
        preprocess(bomb)


def test_cmyk_jpeg_and_animated_gif():
    cmyk = Image.new("CMYK", (40, 40), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    out = preprocess(_encode(cmyk, "JPEG"))
    assert out[16, 16, 0] > 200 and out[16, 16, 1] < 60
    frames = [Image.new("RGB", (40, 40), c) for c in ((0, 0, 255), (255, 0, 0))]
    gif = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    out = preprocess(gif)
    assert out[16, 16, 2] > 200 and out[16, 16, 0] < 60  # the first frame (blue)


def test_text_file_named_png_and_truncated_jpeg():
    with pytest.raises(ImageError):
        preprocess(b"hello, I am text\n" * 20)
    jpeg = _encode(Image.new("RGB", (200, 200), (9, 9, 9)), "JPEG")
    with pytest.raises(ImageError, match="damaged or truncated"):
        preprocess(jpeg[: len(jpeg) // 2])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.integers(1, 70), w=st.integers(1, 70), channels=st.sampled_from([None, 1, 3, 4]),
       dtype=st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64, np.bool_]),
       seed=st.integers(0, 2**31 - 1))
def test_fuzz_any_array_gives_an_image_or_a_clean_error(h, w, channels, dtype, seed):
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels is None else (h, w, channels)
    array = (rng.standard_normal(shape) * 300).astype(dtype)
    try:
        out = preprocess(array)
    except ImageError:
        return
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 500), st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"]))
def test_fuzz_corrupted_image_bytes_give_an_image_or_a_clean_error(cut, fmt):
    data = bytearray(_encode(Image.new("RGB", (33, 21), (120, 40, 200)), fmt))
    if cut < len(data):
        data[cut] ^= 0xFF
    try:
        out = preprocess(bytes(data[: max(cut, 1) * 3]))
    except ImageError:
        return
    assert out.shape == (32, 32, 3)


_values = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=8), st.lists(st.text(max_size=6), max_size=3))
_keys = st.sampled_from(list(TrainConfig().to_dict()) + ["bogus"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=8))
def test_fuzz_config_dicts_give_a_config_or_a_clean_error(values):
    try:
        config = TrainConfig.from_dict(values).validate(n_train_available=50_000)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        return
    assert isinstance(config, TrainConfig)


def test_unwritable_run_folder_fails_the_run_with_a_message(small_data, tmp_path, monkeypatch):
    def disk_full(payload, path):
        raise OSError(28, "No space left on device", str(path))

    manager = RunManager(tmp_path / "runs", lambda: small_data)
    monkeypatch.setattr(checkpoints, "save_atomic", disk_full)
    run_id = manager.start(TrainConfig(model="lenet", epochs=2, val_size=200), owner="a")
    snap = manager.wait(run_id, timeout=60)
    monkeypatch.undo()
    assert snap.status == "failed" and "No space left on device" in snap.message
    assert "Free disk space" in snap.message
    second = manager.start(TrainConfig(model="lenet", epochs=1, val_size=200), owner="a")
    assert manager.wait(second, timeout=60).status == "finished"
