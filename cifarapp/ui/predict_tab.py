"""Predict tab: upload, webcam or paste images; see class probabilities and the model's input."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np

from ..checkpoints import CheckpointError
from ..images import ImageError, preprocess
from ..limits import RateLimited
from ..predict import predict_pixels
from . import charts
from .context import ASSETS_DIR, AppContext
from .guard import guarded, plain_error, text_value
from .identity import client_address
from .widgets import UploadImage, model_picker, uploaded_file

EXAMPLES_DIR = ASSETS_DIR / "examples"
MAX_FILES = 64  # images in one multi-file prediction


def classify(ctx: AppContext, key, paths: list[str]):
    """Probabilities for each readable image file and a message per unreadable one:
    (classes, pixels, names, probabilities [n, classes], problems)."""
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
    return loaded.classes, pixels, names, probs, problems


def predict_one(ctx: AppContext, key, path) -> tuple:
    """(label probabilities, what the model sees, message) for one image from the image box."""
    if not path:
        return None, "", ""
    classes, pixels, _, probs, problems = classify(ctx, key, [str(uploaded_file(path))])
    if problems:
        return None, "", f"⚠️ {problems[0]}"
    return ({c: float(p) for c, p in zip(classes, probs[0])},
            charts.pixels_html(pixels[0], f"What the model sees: {len(pixels[0])}x{len(pixels[0])} pixels, enlarged"),
            "")


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
    classes, _, names, probs, problems = classify(ctx, key, [str(uploaded_file(p)) for p in paths])
    rows = []
    for name, p in zip(names, probs):
        order = np.argsort(-p)
        runner_up = f"{classes[order[1]]} ({p[order[1]]:.1%})" if len(order) > 1 else "–"
        rows.append([name, classes[order[0]], round(float(p[order[0]]), 4), runner_up])
    return rows, "\n\n".join(f"⚠️ {p}" for p in problems)


def build(ctx: AppContext, tab: gr.Tab) -> None:
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
            seen = gr.HTML(elem_id="predict-seen")
            message = gr.Markdown("")
    batch = gr.Dataframe(headers=["file", "top class", "probability", "runner-up"], label="Several files",
                         visible=True)

    @guarded
    def one(key, path, progress=gr.Progress()):
        progress(0, desc="Predicting")  # the first use of a model also measures how it runs fastest here
        return predict_one(ctx, key, path)

    @guarded
    def many(key, paths, request: gr.Request, progress=gr.Progress()):
        progress(0, desc="Predicting")
        return predict_files(ctx, key, paths, request)

    image.change(one, [model, image], [label, seen, message], api_name="predict", concurrency_limit=4,
                 concurrency_id="predict", show_progress="full")
    top_k.change(guarded(lambda k: gr.Label(num_top_classes=int(k))), top_k, label, queue=False, api_name=False)
    files.upload(many, [model, files], [batch, message], api_name="predict_files", concurrency_limit=4,
                 concurrency_id="predict")
    model.change(one, [model, image], [label, seen, message], api_name=False, concurrency_id="predict")
    examples = sorted(str(p) for p in EXAMPLES_DIR.iterdir() if p.suffix in (".png", ".jpg"))
    if examples:
        gr.Examples(examples, inputs=image, label="Examples (CIFAR-10 test images and a photo; see assets/README.md)")
