"""Exported ONNX and TorchScript models compute what the torch model computes, for every registered
architecture, and carry what a user needs to run them (classes, image size, normalisation)."""

import ast
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from cifarapp import checkpoints, export  # noqa: E402
from cifarapp.calibration import Calibration  # noqa: E402
from cifarapp.data import Normalization  # noqa: E402
from cifarapp.models import MODELS, build_model  # noqa: E402

CLASSES = ("cat", "dog", "café", 'sea "lion"')  # non-ASCII and quotes: the metadata is JSON
NORMALIZATION = Normalization((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
CHECK_IMAGES = 16  # fewer than the default keeps the file fast; the tolerance is the same
SLOW_EXPORTS = {"resnet18"}  # 11M parameters: exporting and checking it takes 10-20 s on 2 cores


def calibration_record(temperature: float) -> dict:
    """A checkpoint's calibration record with this temperature (the other figures do not matter here)."""
    return Calibration(temperature, "test images", 1, 0.0, 0.0, 0.0, 0.0).to_dict()


def make_payload(name: str, image_size: int = 32, temperature: float | None = None) -> dict:
    """A freshly initialised model with a fixed seed; fastnet narrow, with a whitened stem."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=len(CLASSES), width=0.25)
    if MODELS[name].whitening_stem:
        model.init_whitening(NORMALIZATION.apply(torch.rand(64, 3, image_size, image_size)))
    dataset = {"name": "pets", "image_size": image_size, "classes": list(CLASSES)}
    extra = {"calibration": calibration_record(temperature)} if temperature is not None else None
    return checkpoints.make_payload(model.eval(), model_name=name, width=0.25, classes=CLASSES,
                                    normalization=NORMALIZATION, config={}, metrics=[], dataset=dataset, extra=extra)


def onnx_probabilities(path, pixels: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {export.INPUT_NAME: pixels.numpy()})[0]


def torch_probabilities(payload: dict, pixels: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return export.probability_model(payload)(pixels).numpy()


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_EXPORTS else name
                                  for name in MODELS])
def test_onnx_export_matches_torch_for_every_model(name, tmp_path):
    payload = make_payload(name)
    path = tmp_path / f"{name}.onnx"
    report = export.export_onnx(payload, path, check_images=CHECK_IMAGES)
    assert report.max_abs_diff < 1e-4 and report.images_checked == CHECK_IMAGES
    assert report.path == path and report.bytes == path.stat().st_size and report.format == "onnx"
    assert not list(tmp_path.glob("*.data"))  # the weights are inside the one file

    pixels = export.sample_pixels(32, 7)
    expected = torch_probabilities(payload, pixels)
    assert expected.max() - expected.min() > 1e-3  # not uniform: the comparison below can fail
    for batch in (pixels[:1], pixels):  # dynamic batch axis
        probabilities = onnx_probabilities(path, batch)
        assert probabilities.shape == (len(batch), len(CLASSES))
        np.testing.assert_allclose(probabilities, expected[:len(batch)], atol=1e-4, rtol=0)
        np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)

    info = export.read_onnx_info(path)
    assert info.classes == CLASSES and info.image_size == 32 and info.model_name == name
    assert info.normalization == NORMALIZATION and info.temperature == 1.0 and info.dataset == "pets"


def test_a_64_pixel_model_takes_64_pixel_images(tmp_path):
    payload = make_payload("fastnet", image_size=64)
    path = tmp_path / "fastnet64.onnx"
    report = export.export_onnx(payload, path, check_images=CHECK_IMAGES)
    assert report.max_abs_diff < 1e-4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    assert model_input.shape[1:] == [3, 64, 64] and isinstance(model_input.shape[0], str)
    assert export.ModelInfo.from_metadata_props(session.get_modelmeta().custom_metadata_map).image_size == 64
    pixels = export.sample_pixels(64, 3)
    assert pixels.shape == (3, 3, 64, 64)
    np.testing.assert_allclose(onnx_probabilities(path, pixels), torch_probabilities(payload, pixels), atol=1e-4)


def test_the_temperature_divides_the_logits(tmp_path):
    temperature = 2.5
    payload = make_payload("lenet", temperature=temperature)
    path = tmp_path / "lenet.onnx"
    export.export_onnx(payload, path, check_images=CHECK_IMAGES)
    assert export.read_onnx_info(path).temperature == temperature

    pixels = export.sample_pixels(32, 16)
    network = build_model("lenet", num_classes=len(CLASSES))
    network.load_state_dict(payload["state_dict"])
    with torch.no_grad():
        logits = network.eval()(NORMALIZATION.apply(pixels))
    probabilities = onnx_probabilities(path, pixels)
    np.testing.assert_allclose(probabilities, torch.softmax(logits / temperature, 1).numpy(), atol=1e-6, rtol=0)
    assert np.abs(probabilities - torch.softmax(logits, 1).numpy()).max() > 1e-3


def test_a_bad_temperature_is_refused(tmp_path):
    with pytest.raises(checkpoints.CheckpointError, match="not a positive number"):
        export.export_onnx(make_payload("lenet", temperature=0.0), tmp_path / "m.onnx")


@pytest.mark.parametrize("name", ["lenet", "fastnet"])
def test_torchscript_round_trip(name, tmp_path):
    payload = make_payload(name)
    path = tmp_path / f"{name}{export.FORMATS['torchscript'].suffix}"
    report = export.FORMATS["torchscript"].export(payload, path, check_images=CHECK_IMAGES)
    assert report.format == "torchscript" and report.max_abs_diff < 1e-4 and report.top_class_agrees
    module, info = export.load_torchscript(path)
    assert info.classes == CLASSES and info.model_name == name and info.image_size == 32
    pixels = export.sample_pixels(32, 7)
    expected = torch_probabilities(payload, pixels)
    with torch.no_grad():
        for batch in (pixels[:1], pixels):
            np.testing.assert_allclose(module(batch).numpy(), expected[:len(batch)], atol=1e-5, rtol=0)


def test_a_mismatch_is_an_error_and_writes_nothing(tmp_path, monkeypatch):
    def wrong(self, outputs, feeds):
        (pixels,) = feeds.values()
        return [np.full((len(pixels), len(CLASSES)), 1 / len(CLASSES), dtype=np.float32)]

    monkeypatch.setattr(ort.InferenceSession, "run", wrong)
    path = tmp_path / "lenet.onnx"
    with pytest.raises(export.ExportVerificationError, match=r"max \|difference\| of probabilities .* > tolerance"):
        export.export_onnx(make_payload("lenet"), path, check_images=CHECK_IMAGES)
    assert not path.exists()


def test_files_that_are_not_cifarapp_exports_are_refused(tmp_path):
    import onnx

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not a model")
    with pytest.raises(ValueError, match="not an ONNX file"):
        export.read_onnx_info(garbage)
    identity = onnx.helper.make_node("Identity", ["x"], ["y"])
    value = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph([identity], "g", [value("x", onnx.TensorProto.FLOAT, [1])],
                                   [value("y", onnx.TensorProto.FLOAT, [1])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(onnx.helper.make_model(graph), foreign)
    with pytest.raises(ValueError, match="not a cifarapp export"):
        export.read_onnx_info(foreign)
    with pytest.raises(ValueError, match="not a TorchScript file"):
        export.load_torchscript(garbage)


def test_missing_packages_say_how_to_install_them(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails
    path = tmp_path / "lenet.onnx"
    with pytest.raises(export.ExportUnavailableError) as error:
        export.export_onnx(make_payload("lenet"), path)
    assert 'pip install "cifarapp[export]"' in str(error.value)
    assert "pip install onnx onnxruntime onnxscript" in str(error.value)
    assert "onnxruntime is missing" in str(error.value) and not path.exists()
    with pytest.raises(export.ExportUnavailableError, match="cifarapp\\[export\\]"):
        export.read_onnx_info(path)

    # the module imports them only inside the functions that need them
    tree = ast.parse(open(export.__file__, encoding="utf-8").read())
    imported = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    assert "torch" in imported and not imported & {"onnx", "onnxruntime", "onnxscript"}


def test_the_readme_snippet_runs_an_export_with_onnxruntime_alone(tmp_path):
    """The README's ten lines, run as written (in a fresh interpreter) on an exported model and a photo."""
    import re
    import subprocess

    from conftest import ROOT
    from PIL import Image

    snippet = re.search(r"```python\n(import json, numpy as np, onnxruntime as ort\n.*?)```",
                        (ROOT / "README.md").read_text(), re.DOTALL).group(1)
    assert len(snippet.strip().splitlines()) <= 10
    export.export_onnx(make_payload("lenet"), tmp_path / "model.onnx", check_images=16)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(
        tmp_path / "photo.jpg")
    done = subprocess.run([sys.executable, "-c", "import sys; sys.modules['torch'] = None\n" + snippet],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    name, percent = done.stdout.strip().rsplit(" ", 1)
    assert name in CLASSES and percent.endswith("%")
