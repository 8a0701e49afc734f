"""Predict tab: upload, webcam or paste images; see calibrated class probabilities, whether the
model is sure, the model's input and a saliency map (Grad-CAM) of the top class or any class;
export the model to ONNX or TorchScript."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np

from .. import checkpoints
from ..catalog import RUN_PREFIX
from ..checkpoints import CheckpointError
from ..explain import grad_cam, model_input_overlay, original_overlay
from ..export import FORMATS, ExportError
from ..images import ImageError, preprocess
from ..limits import RateLimited
from ..predict import is_unsure, predict_pixels, top_k, verdict
from . import charts
from .context import ASSETS_DIR, AppContext
from .guard import guarded, one_of, plain_error, text_value
from .identity import client_address, owner_of
from .widgets import UploadImage, download_path, model_picker, uploaded_file

EXAMPLES_DIR = ASSETS_DIR / "examples"
MAX_FILES = 64  # images in one multi-file prediction
TOP_CLASS = ""  # the explained class: the one the model predicts
EXPORT_FOLDER = "cifarapp-exports"


def classify(ctx: AppContext, key, paths: list[str]):
    """Probabilities for each readable image file and a message per unreadable one:
    (loaded model, pixels, names, probabilities [n, classes], problems)."""
    try:
        loaded = ctx.catalog.load(text_value(key, "model"))
    except (CheckpointError, OSError) as exc:
        raise plain_error(str(exc)) from None
    pixels, names, problems = [], [], []
    for path in paths:
        try:
            pixels.append(preprocess(path, side=loaded.image_size))
            names.append(Path(path).name)
        except ImageError as exc:
            problems.append(str(exc))
    probs = predict_pixels(loaded, np.stack(pixels)) if pixels else np.zeros((0, len(loaded.classes)))
    return loaded, pixels, names, probs, problems


def verdict_markdown(loaded: checkpoints.LoadedModel, probabilities: np.ndarray) -> str:
    """What to tell the user about one image: the answer, or that the model is not sure."""
    calibration = loaded.calibration
    honest = (f"Probabilities calibrated by temperature scaling (temperature {calibration.temperature:.2f}, "
              f"fitted on {calibration.fitted_on})." if calibration is not None else
              "This model has no fitted temperature: its probabilities are the raw softmax, often over-confident.")
    if is_unsure(probabilities):
        return f"### 🤔 The model is {verdict(probabilities, loaded.classes)}\n{honest}"
    return f"### {verdict(probabilities, loaded.classes)}\n{honest}"


def explanation_html(loaded: checkpoints.LoadedModel, path: str, pixels: np.ndarray, target: int) -> str:
    """What the model sees, and the Grad-CAM map of class `target` over the
    uploaded image's cropped square and over the model's input."""
    cam = grad_cam(loaded, pixels[None], target)
    name = loaded.classes[int(cam.targets[0])]
    evidence = "no evidence found at this layer" if cam.empty[0] else f"where the evidence for {name} is"
    side = len(pixels)
    return charts.images_html([
        (pixels, f"What the model sees: {side}x{side} pixels, enlarged", True),
        (original_overlay(path, cam.maps[0], max_side=320), f"Grad-CAM: {evidence} (your image; grey: cropped off)",
         False),
        (model_input_overlay(pixels, cam.maps[0], display_side=160), f"Grad-CAM over the model's input ({name})",
         True)])


def predict_one(ctx: AppContext, key, path, explain=TOP_CLASS) -> tuple:
    """(label probabilities, verdict, what the model sees with its saliency map, message) for one
    image from the image box; `explain` names the class to explain (TOP_CLASS: the top one)."""
    if not path:
        return None, "", "", ""
    upload = str(uploaded_file(path))
    loaded, pixels, _, probs, problems = classify(ctx, key, [upload])
    if problems:
        return None, "", "", f"⚠️ {problems[0]}"
    target = int(probs[0].argmax())  # the class the answer names (its own precision may differ from Grad-CAM's)
    if explain not in (TOP_CLASS, None):
        target = loaded.classes.index(one_of(explain, loaded.classes, "class"))
    return ({c: float(p) for c, p in zip(loaded.classes, probs[0])}, verdict_markdown(loaded, probs[0]),
            explanation_html(loaded, upload, pixels[0], target), "")


def predict_files(ctx: AppContext, key, paths, request: gr.Request | None) -> tuple:
    """(table rows, messages) for several uploaded image files."""
    if not paths:
        return None, ""
    if not isinstance(paths, (list, tuple)) or len(paths) > MAX_FILES:
        raise plain_error(f"Send at most {MAX_FILES} image files at once.")
    try:
        ctx.limits.uploads.check(client_address(request), count=False)
    except RateLimited as exc:
        raise plain_error(str(exc)) from None
    loaded, _, names, probs, problems = classify(ctx, key, [str(uploaded_file(p)) for p in paths])
    rows = []
    for name, p in zip(names, probs):
        ranked = top_k(p, loaded.classes, 2)
        runner_up = f"{ranked[1][0]} ({ranked[1][1]:.1%})" if len(ranked) > 1 else "–"
        rows.append([name, ranked[0][0], round(float(ranked[0][1]), 4), runner_up, "not sure" if is_unsure(p) else ""])
    return rows, "\n\n".join(f"⚠️ {p}" for p in problems)


def class_choices(ctx: AppContext, key) -> list[tuple[str, str]]:
    """What the saliency map can explain: the top class, or any class of the model."""
    try:
        classes = ctx.catalog.load(text_value(key, "model")).classes
    except (CheckpointError, OSError):
        classes = ()
    return [("the predicted class", TOP_CLASS), *((name, name) for name in classes)]


def export_model(ctx: AppContext, key, form, identity: str | None) -> tuple[str, str]:
    """(file to download, what was checked) for the model behind `key` exported as `form` (a key
    of export.FORMATS). A run's model is its owner's to take away, as its checkpoint is; shipped
    models are anyone's."""
    key = text_value(key, "model")
    form = one_of(form, FORMATS, "format")
    if key.startswith(RUN_PREFIX) and not ctx.manager.owns(key[len(RUN_PREFIX):], identity):
        raise plain_error("Only the run's owner can export its model (as only they can download its checkpoint).")
    try:
        payload = checkpoints.read(ctx.catalog.checkpoint_path(key))
        name = f"{key.split(':', 1)[-1]}{FORMATS[form].suffix}"
        report = FORMATS[form].export(payload, download_path(ctx, EXPORT_FOLDER, name))
    except (CheckpointError, ExportError, OSError) as exc:
        raise plain_error(str(exc)) from None
    return str(report.path), f"✅ {report.describe()}"


def build(ctx: AppContext, owner: gr.BrowserState, tab: gr.Tab) -> None:
    """Lay out the Predict tab inside `tab`."""
    with gr.Row():
        model = model_picker(ctx, tab, "predict-model")
        top_k = gr.Slider(1, 10, value=3, step=1, label="Classes to show", scale=1)
    with gr.Row():
        with gr.Column():
            image = UploadImage(type="filepath", sources=["upload", "webcam", "clipboard"], label="Image",
                                elem_id="predict-image", height=300)
            files = gr.File(file_count="multiple", file_types=["image"], label="…or several image files")
        with gr.Column():
            label = gr.Label(label="Prediction", num_top_classes=3, elem_id="predict-label")
            answer = gr.Markdown("", elem_id="predict-verdict")
            message = gr.Markdown("")
    explain = gr.Dropdown(class_choices(ctx, ctx.catalog.default_key()), value=TOP_CLASS,
                          label="Saliency map (Grad-CAM) of", elem_id="predict-explain")
    seen = gr.HTML(elem_id="predict-seen")
    batch = gr.Dataframe(headers=["file", "top class", "probability", "runner-up", "sure?"], label="Several files",
                         visible=True)
    with gr.Accordion("Use this model elsewhere: export to ONNX or TorchScript", open=False):
        gr.Markdown("The file takes float32 RGB images N x 3 x H x W with values in [0, 1] (normalisation is inside) "
                    "and returns calibrated class probabilities; the class names and input size are in its metadata. "
                    "Each export is checked against torch on real images before you get it. ONNX runs with "
                    "onnxruntime alone (see the README); exporting needs `pip install \"cifarapp[export]\"`.")
        with gr.Row():
            export_format = gr.Radio([(spec.description.split(":")[0], name) for name, spec in FORMATS.items()],
                                     value="onnx", label="Format", scale=2)
            export_button = gr.Button("Export", scale=1, elem_id="predict-export")
        export_file = gr.File(label="Exported model", interactive=False, elem_id="predict-export-file")
        export_note = gr.Markdown("")

    @guarded
    def one(key, path, target, progress=gr.Progress()):
        progress(0, desc="Predicting")  # the first use of a model also measures how it runs fastest here
        return predict_one(ctx, key, path, target)

    @guarded
    def many(key, paths, request: gr.Request, progress=gr.Progress()):
        progress(0, desc="Predicting")
        return predict_files(ctx, key, paths, request)

    image.change(one, [model, image, explain], [label, answer, seen, message], api_name="predict",
                 concurrency_limit=4, concurrency_id="predict", show_progress="full")
    explain.change(one, [model, image, explain], [label, answer, seen, message], api_name=False,
                   concurrency_id="predict")
    top_k.change(guarded(lambda k: gr.Label(num_top_classes=int(k))), top_k, label, queue=False, api_name=False)
    files.upload(many, [model, files], [batch, message], api_name="predict_files", concurrency_limit=4,
                 concurrency_id="predict")
    model.change(guarded(lambda key: gr.Dropdown(choices=class_choices(ctx, key), value=TOP_CLASS)), model, explain,
                 api_name=False, queue=False).then(one, [model, image, explain], [label, answer, seen, message],
                                                   api_name=False, concurrency_id="predict")

    @guarded
    def on_export(key, form, token, profile: gr.OAuthProfile | None, progress=gr.Progress()):
        progress(0, desc="Exporting and checking")
        return export_model(ctx, key, form, owner_of(token, profile))

    export_button.click(on_export, [model, export_format, owner], [export_file, export_note], api_name="export",
                        concurrency_limit=1, concurrency_id="export")
    examples = sorted(str(p) for p in EXAMPLES_DIR.iterdir() if p.suffix in (".png", ".jpg"))
    if examples:
        gr.Examples(examples, inputs=image, label="Examples (CIFAR-10 test images and a photo; see assets/README.md)")
