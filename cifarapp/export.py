"""A checkpoint's network as a file that runs without cifarapp: ONNX (onnxruntime alone, no torch)
or TorchScript (torch alone).

The exported model takes float32 RGB images N x 3 x S x S with values in [0, 1] (pixels / 255,
channels first; S is the checkpoint's image size, N any batch size), normalises them as in
training, divides the logits by the checkpoint's temperature and returns class probabilities
N x classes. The file carries the class names, image size, normalisation, temperature and data set
(ONNX: metadata_props; TorchScript: the extra file `cifarapp.json`). Every export runs the written
model on the shipped sample images and compares it with torch before the file appears; onnx,
onnxruntime and onnxscript are imported only when an ONNX export or read needs them.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoints import LoadedModel
from .data import Normalization, downscale
from .files import atomic_write
from .hardware import Compute
from .weights import load_sample

INSTALL_HINT = 'pip install "cifarapp[export]" (or: pip install onnx onnxruntime onnxscript)'
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
TORCHSCRIPT_INFO_FILE = "cifarapp.json"
DEFAULT_TOLERANCE = 1e-4  # max |difference| of probabilities between the exported model and torch
DEFAULT_CHECK_IMAGES = 256
_JSON_KEYS = ("width", "classes", "image_size", "normalization", "temperature")  # the other metadata is plain text
# torch.export and torch.jit.trace change process-wide state while they run: one conversion at a time
_CONVERSION_LOCK = threading.Lock()


class ExportError(RuntimeError):
    """A model could not be exported; the message says why and what to do."""


class ExportUnavailableError(ExportError):
    """The packages that an ONNX export needs are not installed."""


class ExportVerificationError(ExportError):
    """The exported model does not compute what the torch model computes."""


@dataclass(frozen=True)
class ModelInfo:
    """What a user of an exported file needs to know: its classes, input and where it came from."""

    model_name: str
    width: float
    classes: tuple[str, ...]
    image_size: int
    normalization: Normalization
    temperature: float
    dataset: str

    @property
    def input_description(self) -> str:
        s = self.image_size
        return (f"float32 RGB images N x 3 x {s} x {s} (channels first) with values in [0, 1] (pixels / 255); "
                "the normalisation is inside the model")

    @property
    def output_description(self) -> str:
        return (f"class probabilities N x {len(self.classes)} (softmax of the logits / temperature), "
                "columns in the order of classes")

    def to_dict(self) -> dict:
        """Plain JSON types, with the input and output described for people."""
        return {"model": self.model_name, "width": self.width, "classes": list(self.classes),
                "image_size": self.image_size, "input": self.input_description,
                "output": self.output_description, "normalization": self.normalization.to_dict(),
                "temperature": self.temperature, "dataset": self.dataset}

    @classmethod
    def from_dict(cls, d: Mapping) -> ModelInfo:
        """Read `to_dict`'s output back."""
        try:
            return cls(str(d["model"]), float(d["width"]), tuple(str(c) for c in d["classes"]),
                       int(d["image_size"]), Normalization.from_dict(d["normalization"]),
                       float(d["temperature"]), str(d["dataset"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a cifarapp export: its model information is missing or broken ({exc!r})") from exc

    def metadata_props(self) -> dict[str, str]:
        """The ONNX metadata: text as it is, lists, numbers and the normalisation as JSON."""
        return {k: json.dumps(v, ensure_ascii=False) if k in _JSON_KEYS else v for k, v in self.to_dict().items()}

    @classmethod
    def from_metadata_props(cls, props: Mapping[str, str]) -> ModelInfo:
        """Read `metadata_props`' output back, e.g. onnxruntime's `get_modelmeta().custom_metadata_map`."""
        try:
            decoded = {k: json.loads(v) if k in _JSON_KEYS else v for k, v in props.items()}
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a cifarapp export: broken metadata ({exc})") from exc
        return cls.from_dict(decoded)


class ProbabilityModel(nn.Module):
    """A network wrapped to take [0, 1] pixels and return probabilities: normalisation, then
    softmax(logits / temperature)."""

    def __init__(self, network: nn.Module, info: ModelInfo):
        super().__init__()
        self.network = network
        self.info = info
        self.temperature = info.temperature
        self.register_buffer("mean", torch.tensor(info.normalization.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(info.normalization.std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.network((images - self.mean) / self.std)
        return torch.softmax(logits / self.temperature, dim=1)


def probability_model(source: dict) -> ProbabilityModel:
    """The exported computation of a checkpoint dict (as `checkpoints.read` returns) as a torch
    module in fp32 on the CPU, eval mode; `.info` says what it expects and returns."""
    reference = Compute(torch.device("cpu"), "fp32", False, "fp32 on the CPU: what an export is checked against")
    loaded = LoadedModel.from_payload(source, compute=reference)
    info = ModelInfo(loaded.model_name, float(loaded.meta.get("width", 1.0)), loaded.classes, loaded.image_size,
                     loaded.normalization, loaded.temperature, loaded.dataset_name)
    return ProbabilityModel(loaded.model, info).eval()


def sample_pixels(image_size: int, count: int = DEFAULT_CHECK_IMAGES) -> torch.Tensor:
    """The first `count` shipped sample images (at most all 1,000) as float32 [count, 3, S, S] in
    [0, 1], resized (antialiased bilinear, which enlarges too) when S is not their 32."""
    if count < 1:
        raise ValueError(f"at least one sample image is needed, not {count}")
    images, _ = load_sample()
    pixels = images[:count].float().div_(255)
    if pixels.shape[-1] != image_size:
        pixels = downscale(pixels, image_size)
    return pixels.contiguous()


@dataclass(frozen=True)
class ExportReport:
    """A written export and how closely it matched torch (fp32, CPU) on real images."""

    path: Path
    format: str
    bytes: int
    export_s: float
    verify_s: float
    max_abs_diff: float  # of the probabilities, over all checked images and classes
    top_class_agrees: bool  # the same most probable class on every checked image
    images_checked: int

    def describe(self) -> str:
        """One line for people: file, size, export time and the check's result."""
        agreement = "the same top class on all" if self.top_class_agrees else "a different top class on some"
        return (f"{self.format} model {self.path.name} ({self.bytes / 1e6:.1f} MB) exported in {self.export_s:.1f} s; "
                f"against torch on {self.images_checked} sample images: max |difference| of probabilities "
                f"{self.max_abs_diff:.1e}, {agreement}")


def _export(format_name: str, label: str, source: dict, output_path: str | Path, *,
            convert: Callable[[ProbabilityModel], bytes],
            runner: Callable[[bytes], Callable[[torch.Tensor], np.ndarray]],
            check_images: int, tolerance: float) -> ExportReport:
    """Convert a checkpoint dict's model to the bytes of a file (`convert`), run those bytes
    (`runner`) on `check_images` sample images, and write the file only when the probabilities
    match eager torch's within `tolerance`. `label` names the format in messages."""
    reference = probability_model(source)
    pixels = sample_pixels(reference.info.image_size, check_images)
    start = time.perf_counter()
    with _CONVERSION_LOCK:
        model_bytes = convert(reference)
    export_s = time.perf_counter() - start
    run = runner(model_bytes)  # the bytes that will be written, not the object they were made from
    start = time.perf_counter()
    with torch.no_grad():
        expected = reference(pixels).numpy()
        actual = np.asarray(run(pixels), dtype=np.float32)
    if actual.shape != expected.shape:
        raise ExportVerificationError(f"the exported {label} model returned shape {actual.shape} for "
                                      f"{len(pixels)} images; torch returns {expected.shape}. Nothing was written.")
    diff = float(np.abs(actual - expected).max())
    agree = int((actual.argmax(1) == expected.argmax(1)).sum())
    if not diff <= tolerance:  # also catches NaN
        raise ExportVerificationError(
            f"the exported {label} model does not match torch on {len(pixels)} sample images: max |difference| "
            f"of probabilities {diff:.3g} > tolerance {tolerance:g} (top class the same on {agree}/{len(pixels)}). "
            "Nothing was written.")
    verify_s = time.perf_counter() - start
    atomic_write(output_path, lambda fh: fh.write(model_bytes))
    return ExportReport(Path(output_path), format_name, len(model_bytes), export_s, verify_s, diff,
                        agree == len(pixels), len(pixels))


def _onnx_packages():
    """onnx and onnxruntime, imported on first use; onnxscript is what torch's ONNX exporter needs."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as exc:
        missing = f" ({exc.name} is missing)" if exc.name else ""
        raise ExportUnavailableError(f"ONNX export needs the packages onnx, onnxruntime and onnxscript{missing}. "
                                     f"Install them with: {INSTALL_HINT}") from exc
    return onnx, onnxruntime


def export_onnx(source: dict, output_path: str | Path, *, check_images: int = DEFAULT_CHECK_IMAGES,
                tolerance: float = DEFAULT_TOLERANCE) -> ExportReport:
    """Export a checkpoint dict's model to one self-contained ONNX file (input `images`, output
    `probabilities`, dynamic batch, metadata as `ModelInfo.metadata_props`), written only after
    onnxruntime's probabilities on `check_images` sample images match torch's within `tolerance`."""
    onnx, onnxruntime = _onnx_packages()

    def convert(reference: ProbabilityModel) -> bytes:
        # torch.onnx.export's default exporter (dynamo=True, built on torch.export) gives a correct model for
        # every registered network. The TorchScript-based one (dynamo=False) does too, and exports faster, but
        # torch 2.14 deprecates it and says it will be removed. The example batch is 2 because torch.export
        # specialises a dimension of size 1. The ModelProto is serialised here with its weights inside:
        # ONNXProgram.save would by default put them in a separate .data file.
        size = reference.info.image_size
        dynamic_batch = {INPUT_NAME: {0: torch.export.Dim("batch")}}
        program = torch.onnx.export(reference, (torch.zeros(2, 3, size, size),), None, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes=dynamic_batch, dynamo=True,
                                    verbose=False)
        proto = program.model_proto
        onnx.helper.set_model_props(proto, reference.info.metadata_props())
        proto.doc_string = (f"cifarapp {reference.info.model_name} trained on {reference.info.dataset}. "
                            f"Input: {reference.info.input_description}. Output: {reference.info.output_description}.")
        onnx.checker.check_model(proto)
        return proto.SerializeToString()

    def runner(model_bytes: bytes) -> Callable[[torch.Tensor], np.ndarray]:
        session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {INPUT_NAME: x.numpy()})[0]

    return _export("onnx", "ONNX", source, output_path, convert=convert, runner=runner, check_images=check_images,
                   tolerance=tolerance)


def read_onnx_info(path: str | Path) -> ModelInfo:
    """The model information stored in an ONNX file that `export_onnx` wrote."""
    onnx, _ = _onnx_packages()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX file at {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # the protobuf parser raises several types for a file that is not ONNX
        raise ValueError(f"{path.name} is not an ONNX file: {exc}") from exc
    return ModelInfo.from_metadata_props({p.key: p.value for p in proto.metadata_props})


def _load_torchscript(file) -> tuple[torch.jit.ScriptModule, ModelInfo]:
    extra = {TORCHSCRIPT_INFO_FILE: ""}
    try:
        module = torch.jit.load(file, map_location="cpu", _extra_files=extra)
    except RuntimeError as exc:
        raise ValueError(f"not a TorchScript file: {exc}") from exc
    if not extra[TORCHSCRIPT_INFO_FILE]:
        raise ValueError(f"not a cifarapp export: the TorchScript file has no {TORCHSCRIPT_INFO_FILE}")
    return module, ModelInfo.from_dict(json.loads(extra[TORCHSCRIPT_INFO_FILE]))


def export_torchscript(source: dict, output_path: str | Path, *, check_images: int = DEFAULT_CHECK_IMAGES,
                       tolerance: float = DEFAULT_TOLERANCE) -> ExportReport:
    """Export a checkpoint dict's model as TorchScript (same input and output as `export_onnx`,
    model information in the extra file `cifarapp.json`), written only after the saved module's
    probabilities on `check_images` sample images match eager torch's within `tolerance`."""
    def convert(reference: ProbabilityModel) -> bytes:
        # trace, not script: torch.jit.script cannot compile cnn6's dropout. torch 2.14 deprecates
        # torch.jit (FutureWarning) but it still works for every registered network.
        size = reference.info.image_size
        with torch.no_grad():
            traced = torch.jit.trace(reference, torch.zeros(2, 3, size, size))
        buffer = io.BytesIO()
        info_json = json.dumps(reference.info.to_dict(), ensure_ascii=False)
        torch.jit.save(traced, buffer, _extra_files={TORCHSCRIPT_INFO_FILE: info_json})
        return buffer.getvalue()

    def runner(module_bytes: bytes) -> Callable[[torch.Tensor], np.ndarray]:
        saved, _ = _load_torchscript(io.BytesIO(module_bytes))
        return lambda x: saved(x).numpy()

    return _export("torchscript", "TorchScript", source, output_path, convert=convert, runner=runner,
                   check_images=check_images, tolerance=tolerance)


def load_torchscript(path: str | Path) -> tuple[torch.jit.ScriptModule, ModelInfo]:
    """A TorchScript file that `export_torchscript` wrote, on the CPU, with its model information.
    Like any TorchScript file, load only files you trust."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no TorchScript file at {path}")
    return _load_torchscript(str(path))


@dataclass(frozen=True)
class ExportFormat:
    """A file format a model can be exported to."""

    suffix: str
    description: str
    export: Callable[..., ExportReport]


FORMATS: dict[str, ExportFormat] = {
    "onnx": ExportFormat(".onnx", "ONNX: runs with onnxruntime alone, no torch (exporting needs onnx, "
                                  "onnxruntime and onnxscript)", export_onnx),
    "torchscript": ExportFormat(".torchscript.pt", "TorchScript: runs with torch alone (torch.jit.load; "
                                                   "torch deprecates TorchScript)", export_torchscript),
}
