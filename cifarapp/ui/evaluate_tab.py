"""Evaluate tab: accuracy, per-class accuracy, confusion matrix and the most confident mistakes."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from ..catalog import RUN_PREFIX
from ..checkpoints import CheckpointError
from ..evaluate import evaluate
from ..inference import TTA_MODES
from . import charts
from .context import AppContext
from .widgets import model_picker


def build(ctx: AppContext, tab: gr.Tab) -> None:
    """Lay out the Evaluate tab inside `tab`."""
    with gr.Row():
        model = model_picker(ctx, tab, "eval-model")
        tta = gr.Radio([(mode.replace("_", " + "), mode) for mode in TTA_MODES], value="none", scale=1,
                       label="Test-time augmentation", info="flip + translate averages 6 views of each image")
        run = gr.Button("Evaluate", variant="primary", scale=1)
    note = gr.Markdown("")
    summary = gr.Markdown("", elem_id="eval-summary")
    with gr.Row():
        per_class = gr.Dataframe(headers=["class", "accuracy", "images"], label="Per-class accuracy", scale=1)
        bars = gr.BarPlot(x="class", y="accuracy",
                          y_lim=[0, 1], label="Per-class accuracy", scale=2, sort=None)
    confusion = gr.Plot(label="Confusion matrix (rows: true class; colour: share of the row)")
    mistakes = gr.Gallery(label="Most confident mistakes (true class → predicted, confidence)", columns=8, height="auto", object_fit="contain")

    def run_eval(key: str, tta_mode: str, progress=gr.Progress()):
        try:
            loaded = ctx.catalog.load(key)
        except (CheckpointError, OSError) as exc:
            raise gr.Error(str(exc))
        eval_set = ctx.eval_set()
        if len(loaded.classes) != 10 or int(eval_set.labels.max()) >= len(loaded.classes):
            raise gr.Error("This model's classes do not match the evaluation images.")
        progress(0, desc="Evaluating")
        result = evaluate(loaded, eval_set.images, eval_set.labels, tta=tta_mode,
                          progress=lambda done, total: progress(done / total, desc="Evaluating"))
        if key.startswith(RUN_PREFIX) and eval_set.note.startswith("the full test set"):
            ctx.manager.record_evaluation(key[len(RUN_PREFIX):], {"accuracy": result.accuracy, "tta": tta_mode})
        table = pd.DataFrame({"class": list(result.classes), "accuracy": result.per_class_accuracy.round(4),
                              "images": result.confusion.sum(1)})
        gallery = [(charts.upscale(eval_set.images[m.index].permute(1, 2, 0).numpy()),
                    f"{result.classes[m.true]} → {result.classes[m.predicted]} {m.confidence:.0%}")
                   for m in result.mistakes]
        head = (f"### Accuracy {result.accuracy:.2%}\n{result.n_images:,} images · loss {result.loss:.4f}"
                f"{f' · {tta_mode} TTA' if tta_mode != 'none' else ''}")
        return (f"Evaluated on {eval_set.note}.", head, table, table[["class", "accuracy"]],
                charts.confusion_figure(result.confusion, result.classes), gallery)

    run.click(run_eval, [model, tta], [note, summary, per_class, bars, confusion, mistakes], api_name="evaluate",
              concurrency_limit=1, concurrency_id="evaluate")  # see charts.pixels_html on cached outputs
