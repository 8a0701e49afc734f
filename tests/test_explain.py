import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image

from cifarapp.calibration import Calibration
from cifarapp.checkpoints import LoadedModel
from cifarapp.data import Normalization, hwc_to_tensor, to_model_input
from cifarapp.explain import (
    CAM_LAYERS,
    COLOUR_MAP,
    HEATMAP_SUFFIX,
    OUTSIDE_BRIGHTNESS,
    cam_layer,
    grad_cam,
    heatmap_file_name,
    model_input_overlay,
    original_overlay,
    overlay,
    save_heatmaps,
)
from cifarapp.hardware import Compute
from cifarapp.images import ImageError
from cifarapp.inference import batched_logits
from cifarapp.models import MODELS, build_model

PATCH_COLOURS = np.array([(230, 40, 40), (40, 220, 40), (40, 40, 230), (230, 230, 40)])
PATCH = 10
NOISE_NORMALIZATION = Normalization((0.5, 0.5, 0.5), (0.29, 0.29, 0.29))
CPU_CHANNELS_LAST = Compute(torch.device("cpu"), "fp32", True, "fixed for the tests")


def patch_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Uniform noise with one 10x10 patch whose colour is the class, centred in the top-left or
    the bottom-right quadrant (drawn per image): uint8 images [n, 32, 32, 3], labels, quadrants."""
    labels, quadrants = rng.integers(0, len(PATCH_COLOURS), n), rng.integers(0, 2, n)
    images = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.int16)
    for image, label, quadrant in zip(images, labels, quadrants):
        start = quadrant * 16 + (16 - PATCH) // 2
        patch = PATCH_COLOURS[label] + rng.integers(-25, 25, (PATCH, PATCH, 3))
        image[start:start + PATCH, start:start + PATCH] = patch
    return np.clip(images, 0, 255).astype(np.uint8), labels, quadrants


def loaded_model(model: torch.nn.Module, name: str, image_size: int = 32, meta: dict | None = None,
                 classes: int = len(PATCH_COLOURS)) -> LoadedModel:
    model = model.eval().to(memory_format=torch.channels_last)
    return LoadedModel(model, name, tuple(f"class{i}" for i in range(classes)), NOISE_NORMALIZATION,
                       {"dataset": {"image_size": image_size}, **(meta or {})}, CPU_CHANNELS_LAST)


@pytest.fixture(scope="module")
def patch_model() -> LoadedModel:
    """fastnet (width 0.25) trained for one short epoch on patch_images: the patch's colour is all
    that decides the class, wherever the patch is."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    pixels, labels, _ = patch_images(400, rng)
    images, targets = hwc_to_tensor(pixels), torch.as_tensor(labels)
    model = build_model("fastnet", num_classes=len(PATCH_COLOURS), width=0.25).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    for batch in torch.randperm(len(images), generator=torch.Generator().manual_seed(0)).split(50):
        loss = F.cross_entropy(model(to_model_input(images[batch], NOISE_NORMALIZATION)), targets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    optimizer.zero_grad()  # as a loaded checkpoint: no gradients
    return loaded_model(model, "fastnet")


@pytest.fixture(scope="module")
def test_images():
    return patch_images(64, np.random.default_rng(1))


def quadrant_mass(maps: np.ndarray, quadrant: int) -> np.ndarray:
    """Each map's share of its total in the top-left (0) or bottom-right (1) 16x16 quadrant."""
    part = maps[:, quadrant * 16:quadrant * 16 + 16, quadrant * 16:quadrant * 16 + 16]
    return part.sum((1, 2)) / np.maximum(maps.sum((1, 2)), 1e-12)


def test_the_map_highlights_the_region_that_decides_the_class(patch_model, test_images):
    pixels, labels, quadrants = test_images
    cam = grad_cam(patch_model, pixels)
    correct = cam.targets == labels
    assert correct.mean() > 0.8
    for quadrant in (0, 1):  # opposite corners: not a fixed preference of the layer
        chosen = correct & (quadrants == quadrant)
        assert chosen.sum() >= 15
        mass = quadrant_mass(cam.maps[chosen], quadrant)
        assert mass.mean() > 0.6, f"quadrant {quadrant}: only {mass.mean():.0%} of the map is on the patch"
        assert np.median(mass) > 0.6


def test_maps_targets_and_probabilities(patch_model, test_images):
    pixels = test_images[0][:8]
    cam = grad_cam(patch_model, pixels)
    assert cam.maps.shape == (8, 32, 32) and cam.maps.dtype == np.float32
    assert cam.maps.min() >= 0 and np.allclose(cam.maps.max((1, 2)), 1.0)
    assert not cam.empty.any() and cam.layer == CAM_LAYERS["fastnet"].module
    logits = batched_logits(patch_model.model, hwc_to_tensor(pixels), NOISE_NORMALIZATION, CPU_CHANNELS_LAST)
    assert np.array_equal(cam.targets, logits.argmax(1).numpy())
    assert np.allclose(cam.probabilities, logits.softmax(1).numpy(), atol=1e-5)

    other = int((cam.targets[0] + 1) % len(PATCH_COLOURS))
    explicit = grad_cam(patch_model, pixels, target=other)
    assert (explicit.targets == other).all()
    assert np.allclose(explicit.probabilities, cam.probabilities)
    assert np.abs(explicit.maps[0] - cam.maps[0]).max() > 0.1 or explicit.empty[0]
    per_image = (cam.targets + np.arange(8)) % len(PATCH_COLOURS)  # one class per image
    mixed = grad_cam(patch_model, pixels, target=per_image)
    assert np.array_equal(mixed.targets, per_image)
    assert np.allclose(mixed.maps[0], cam.maps[0], atol=1e-5)  # image 0 keeps its own top class
    with pytest.raises(ValueError, match="out of range"):
        grad_cam(patch_model, pixels, target=len(PATCH_COLOURS))
    with pytest.raises(ValueError, match="out of range"):
        grad_cam(patch_model, pixels, target=[0] * 7 + [-1])
    with pytest.raises(ValueError, match="preprocessed uint8"):
        grad_cam(patch_model, pixels.astype(np.float32))


def test_probabilities_use_the_calibration_temperature(patch_model, test_images):
    pixels = test_images[0][:4]
    record = Calibration(2.5, "test images", 1, 0.0, 0.0, 0.0, 0.0).to_dict()
    calibrated = LoadedModel(patch_model.model, "fastnet", patch_model.classes, patch_model.normalization,
                             {**patch_model.meta, "calibration": record}, patch_model.compute)
    plain, scaled = grad_cam(patch_model, pixels), grad_cam(calibrated, pixels)
    logits = batched_logits(patch_model.model, hwc_to_tensor(pixels), NOISE_NORMALIZATION, CPU_CHANNELS_LAST)
    assert np.allclose(scaled.probabilities, (logits / 2.5).softmax(1).numpy(), atol=1e-5)
    assert np.array_equal(plain.maps, scaled.maps) and np.array_equal(plain.targets, scaled.targets)


def activation_side(name: str, side: int) -> int:
    """The side of the Grad-CAM layer's activation for a side x side input (shapes only: on the meta device)."""
    with torch.device("meta"):
        model = build_model(name).eval()
        shapes = []
        model.get_submodule(cam_layer(name).module).register_forward_hook(
            lambda module, inputs, output: shapes.append(output.shape))
        model(torch.zeros(1, 3, side, side))
    assert len(shapes) == 1 and shapes[0][-1] == shapes[0][-2]
    return shapes[0][-1]


def test_every_model_has_a_layer_with_enough_resolution():
    assert set(CAM_LAYERS) == set(MODELS)
    sides = {name: activation_side(name, 32) for name in MODELS}
    assert sides == {"lenet": 10, "lenet_k4": 11, "lenet_bn": 10, "cnn6": 8, "resnet18": 8, "fastnet": 7}
    assert activation_side("fastnet", 64) == 15 and activation_side("resnet18", 64) == 16
    with pytest.raises(ValueError, match="CAM_LAYERS"):
        cam_layer("vgg99")


@pytest.mark.parametrize("name,side", [(name, 32) for name in MODELS] + [("fastnet", 64), ("resnet18", 64)])
def test_every_model_gives_a_map_of_its_input_size(name, side):
    torch.manual_seed(0)
    loaded = loaded_model(build_model(name), name, image_size=side, classes=10)
    pixels = np.random.default_rng(0).integers(0, 256, (2, side, side, 3), dtype=np.uint8)
    cam = grad_cam(loaded, pixels, batch_size=1)
    assert cam.maps.shape == (2, side, side) and cam.probabilities.shape == (2, 10)
    assert 0 <= cam.maps.min() and cam.maps.max() <= 1
    assert all(m.max() == 1 for m, e in zip(cam.maps, cam.empty) if not e)
    assert np.allclose(cam.probabilities.sum(1), 1, atol=1e-5)
    assert cam.layer == CAM_LAYERS[name].module


def hooks_of(model: torch.nn.Module) -> int:
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
             "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")
    return sum(len(getattr(module, name)) for module in model.modules() for name in names)


def test_the_shared_model_is_left_exactly_as_it_was(patch_model, test_images):
    model = patch_model.model
    params = list(model.parameters())
    marker = torch.full_like(params[-1], 0.5)
    params[-1].grad = marker.clone()  # a gradient someone else holds must stay as it is
    assert all(p.grad is None for p in params[:-1])
    flags = [p.requires_grad for p in params]
    layout = [(p.device, p.is_contiguous(memory_format=torch.channels_last)) for p in params]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():  # as a request handler may call it; grad mode is this thread's own
            cam = grad_cam(patch_model, test_images[0][:4])
            assert not torch.is_grad_enabled()
        assert not cam.empty.any()
        assert [p.requires_grad for p in params] == flags
        assert all(p.grad is None for p in params[:-1]) and torch.equal(params[-1].grad, marker)
        assert [(p.device, p.is_contiguous(memory_format=torch.channels_last)) for p in params] == layout
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
        assert hooks_of(model) == 0 and not model.training
    finally:
        params[-1].grad = None


def test_other_threads_using_the_model_meanwhile_are_untouched(patch_model, test_images):
    """In the middle of grad_cam's forward pass (its hook is on the model), another thread runs a
    no_grad forward pass and a grad_cam of its own to completion: all three give what they give alone."""
    pixels = test_images[0][:6]
    x = to_model_input(hwc_to_tensor(pixels[3:]), NOISE_NORMALIZATION)
    with torch.no_grad():
        alone_logits = patch_model.model(x)
    alone, alone_other = grad_cam(patch_model, pixels[:3]), grad_cam(patch_model, pixels[3:])
    owner, seen = threading.get_ident(), {}

    def meanwhile():
        with torch.no_grad():
            seen["logits"] = patch_model.model(x)
        seen["cam"] = grad_cam(patch_model, pixels[3:])

    def interleave(module, inputs):
        if threading.get_ident() == owner and "cam" not in seen:
            seen["hooks during"] = hooks_of(patch_model.model)
            other = threading.Thread(target=meanwhile)
            other.start()
            other.join()

    handle = patch_model.model.register_forward_pre_hook(interleave)
    try:
        during = grad_cam(patch_model, pixels[:3])
    finally:
        handle.remove()
    assert seen["hooks during"] == 2  # grad_cam's own and this test's
    assert torch.equal(seen["logits"], alone_logits) and not seen["logits"].requires_grad
    for result, reference in ((during, alone), (seen["cam"], alone_other)):
        assert np.array_equal(result.targets, reference.targets)
        assert np.allclose(result.maps, reference.maps, atol=1e-6)
    assert hooks_of(patch_model.model) == 0


def test_overlay_blends_the_colour_map():
    image = np.full((20, 30, 3), 100, np.uint8)
    heat = np.zeros((4, 4), np.float32)
    heat[:, 2:] = 1.0
    out = overlay(image, heat)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert np.array_equal(overlay(image, heat, alpha=0.0), image)
    top = (np.array(colormaps[COLOUR_MAP](1.0)[:3]) * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(overlay(image, heat, alpha=1.0)[0, -1], top)
    assert out[:, -5:].mean() > out[:, :5].mean() + 50  # the evidence is the bright part
    with pytest.raises(ValueError, match="uint8 RGB"):
        overlay(image[:, :, 0], heat)


def test_model_input_overlay_enlarges_pixels_by_a_whole_factor():
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = model_input_overlay(pixels, np.full((32, 32), 0.5, np.float32), display_side=256)
    assert out.shape == (256, 256, 3)
    blocks = out.reshape(32, 8, 32, 8, 3)
    assert (blocks == blocks[:, :1, :, :1]).all()  # each model pixel is one flat 8x8 block
    assert model_input_overlay(pixels, np.zeros((7, 7)), display_side=100).shape == (96, 96, 3)


def is_grey(pixels: np.ndarray) -> np.ndarray:
    return pixels.max(-1).astype(int) - pixels.min(-1) <= 1


def test_original_overlay_keeps_the_aspect_and_colours_only_the_centre_square(tmp_path):
    ramp = np.linspace(40, 240, 1000)[None, :, None].repeat(600, 0)  # wide, grey from dark to light
    grey = Image.fromarray(ramp.repeat(3, 2).astype(np.uint8))
    heat = np.linspace(0.6, 1.0, 49, dtype=np.float32).reshape(7, 7)
    out = original_overlay(grey, heat)
    assert out.shape == (307, 512, 3)  # 1000x600 shrunk to a long side of 512
    left, side = round(200 * 0.512), round(600 * 0.512)  # the 600-pixel centre square
    assert is_grey(out[:, :left - 1]).all() and is_grey(out[:, left + side + 1:]).all()
    assert not is_grey(out[:, left + 1:left + side - 1]).any()
    shown = np.linspace(40, 240, 512)
    assert np.abs(out[0, :left - 1, 0] - shown[:left - 1] * OUTSIDE_BRIGHTNESS).max() <= 2  # dimmed
    assert np.abs(out[0, left + side + 1:, 0] - shown[left + side + 1:] * OUTSIDE_BRIGHTNESS).max() <= 2

    colourful = np.zeros((600, 1000, 3), np.uint8)
    colourful[..., 0], colourful[..., 2] = 230, np.linspace(0, 255, 600)[:, None]
    assert is_grey(original_overlay(Image.fromarray(colourful), heat)[:, :left - 1]).all()

    # a phone photo stored sideways with an EXIF orientation is shown upright, as preprocess sees it
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.jpg"
    Image.new("RGB", (300, 500), (128, 128, 128)).save(path, exif=exif, quality=95)
    upright = original_overlay(path, heat)
    assert upright.shape == (300, 500, 3)  # small enough: not enlarged
    assert is_grey(upright[:, :99]).all() and not is_grey(upright[:, 101:399]).any()


def test_heatmap_file_names_are_safe_and_distinct():
    taken: set[str] = set()
    names = [heatmap_file_name(p, taken) for p in
             ["a/cat photo (1).JPG", "b/cat photo (1).png", "../../etc/passwd", "..\\..\\win.ini", "..", "", ".png"]]
    assert names == ["cat_photo_1" + HEATMAP_SUFFIX, "cat_photo_1-2" + HEATMAP_SUFFIX, "passwd" + HEATMAP_SUFFIX,
                     "win" + HEATMAP_SUFFIX, "image" + HEATMAP_SUFFIX, "image-2" + HEATMAP_SUFFIX,
                     "png" + HEATMAP_SUFFIX]
    assert all("/" not in n and "\\" not in n and not n.startswith(".") for n in names)


def test_save_heatmaps_writes_one_png_per_image_inside_the_folder(patch_model, test_images, tmp_path):
    pixels = test_images[0]
    (tmp_path / "in" / "deep").mkdir(parents=True)
    sources = [tmp_path / "in" / "noise patch.png", tmp_path / "in" / "deep" / "noise patch.png",
               tmp_path / "in" / "..wide.png"]
    Image.fromarray(pixels[0]).save(sources[0])
    Image.fromarray(pixels[1]).save(sources[1])
    Image.fromarray(np.concatenate([pixels[2], pixels[3]], axis=1)).save(sources[2])  # 64x32
    out_dir = tmp_path / "out" / "maps"
    saved = save_heatmaps(patch_model, [str(s) for s in sources], out_dir)
    assert [p.name for p in saved.paths] == ["noise_patch" + HEATMAP_SUFFIX, "noise_patch-2" + HEATMAP_SUFFIX,
                                            "wide" + HEATMAP_SUFFIX]
    assert sorted(out_dir.iterdir()) == sorted(saved.paths)
    assert saved.cam.maps.shape == (3, 32, 32)
    assert np.array_equal(saved.cam.targets[:2], grad_cam(patch_model, pixels[:2]).targets)
    for path in saved.paths:
        with Image.open(path) as picture:
            assert picture.format == "PNG" and picture.width >= 32 + 256 and picture.height > 256

    broken = tmp_path / "in" / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(ImageError):
        save_heatmaps(patch_model, [sources[0], broken], tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()
