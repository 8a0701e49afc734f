"""Predict tab: upload, webcam or paste images; see class probabilities and the 32x32 input."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np

from ..checkpoints import CheckpointError
from ..predict import ImageError, predict_pixels, preprocess
from . import charts
from .context import ASSETS_DIR, AppContext
from .widgets import UploadImage, model_picker

EXAMPLES_DIR = ASSETS_DIR / "examples"


def build(ctx: AppContext, tab: gr.Tab) -> None:
    """Lay out the Predict tab inside `tab`."""
    with gr.Row():
        model = model_picker(ctx, tab, "predict-model")
        top_k = gr.Slider(1, 10, value=3, step=1, label="Classes to show", scale=1)
    with gr.Row():
        with gr.Column():
            image = UploadImage(type="filepath", sources=["upload", "webcam", "clipboard"], label="Image", elem_id="predict-image",
                             height=300)
            files = gr.File(file_count="multiple", file_types=["image"], label="…or several image files")
        with gr.Column():
            label = gr.Label(label="Prediction", num_top_classes=3, elem_id="predict-label")
            seen = gr.HTML(elem_id="predict-seen")
            message = gr.Markdown("")
    batch = gr.Dataframe(headers=["file", "top class", "probability", "runner-up"], label="Several files",
                         visible=True)

    def classify(key: str, sources: list):
        """Probabilities for each readable source, and a message per unreadable one."""
        try:
            loaded = ctx.catalog.load(key)
        except (CheckpointError, OSError) as exc:
            raise gr.Error(str(exc))
        pixels, names, problems = [], [], []
        for source in sources:
            try:
                pixels.append(preprocess(source))
                names.append(Path(source).name)
            except ImageError as exc:
                problems.append(str(exc))
        probs = predict_pixels(loaded, np.stack(pixels)) if pixels else np.zeros((0, len(loaded.classes)))
        return loaded.classes, pixels, names, probs, problems

    def predict_one(key: str, path: str | None):
        if not path:
            return None, "", ""
        classes, pixels, _, probs, problems = classify(key, [path])
        if problems:
            return None, "", f"⚠️ {problems[0]}"
        return ({c: float(p) for c, p in zip(classes, probs[0])},
                charts.pixels_html(pixels[0], "What the model sees: 32x32 pixels, enlarged"), "")

    def predict_many(key: str, paths: list | None):
        if not paths:
            return None, ""
        classes, _, names, probs, problems = classify(key, list(paths))
        rows = []
        for name, p in zip(names, probs):
            order = np.argsort(-p)
            rows.append([name, classes[order[0]], round(float(p[order[0]]), 4),
                         f"{classes[order[1]]} ({p[order[1]]:.1%})"])
        return rows, "\n\n".join(f"⚠️ {p}" for p in problems)

    image.change(predict_one, [model, image], [label, seen, message], api_name="predict",
                 concurrency_limit=4, concurrency_id="predict")
    top_k.change(lambda k: gr.Label(num_top_classes=int(k)), top_k, label, queue=False)
    files.upload(predict_many, [model, files], [batch, message], api_name="predict_files",
                 concurrency_limit=4, concurrency_id="predict")
    model.change(predict_one, [model, image], [label, seen, message], api_name=False,
                 concurrency_id="predict")
    examples = sorted(str(p) for p in EXAMPLES_DIR.glob("*.png"))
    if examples:
        gr.Examples(examples, inputs=image, label="Examples (CIFAR-10 test images; see assets/README.md)")
