"""Evaluate tab: accuracy, per-class accuracy, confusion matrix and the most confident mistakes."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from .. import figures
from ..catalog import RUN_PREFIX
from ..checkpoints import CheckpointError
from ..data import DataUnavailableError
from ..evaluate import EvalResult, evaluate
from ..inference import TTA_MODES
from ..runs import owner_key
from . import charts
from .context import AppContext
from .guard import guarded, one_of, plain_error, text_value
from .identity import owner_of
from .widgets import model_picker


def run_evaluation(ctx: AppContext, key, tta, identity: str | None, progress=None) -> tuple[EvalResult, str, bool]:
    """Evaluate the model behind `key` on the app's evaluation set: (result, where it was
    evaluated, whether the test accuracy was recorded for the run: only its owner's is)."""
    key = text_value(key, "model")
    tta = one_of(tta, TTA_MODES, "test-time augmentation")
    try:
        loaded = ctx.catalog.load(key)
    except (CheckpointError, OSError) as exc:
        raise plain_error(str(exc)) from None
    try:
        eval_set = ctx.eval_set_for(loaded, owner_key(identity) if identity else None)
    except DataUnavailableError as exc:
        raise plain_error(str(exc)) from None
    result = evaluate(loaded, eval_set.images, eval_set.labels, tta=tta, progress=progress)
    recorded = (key.startswith(RUN_PREFIX) and eval_set.full and
                ctx.manager.record_evaluation(key[len(RUN_PREFIX):], {"accuracy": result.accuracy, "tta": tta},
                                              requester=identity))
    return result, eval_set.note, recorded


def build(ctx: AppContext, owner: gr.BrowserState, tab: gr.Tab) -> None:
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
        bars = gr.BarPlot(x="class", y="accuracy", y_lim=[0, 1], label="Per-class accuracy", scale=2, sort=None)
    confusion = gr.Plot(label="Confusion matrix (rows: true class; colour: share of the row)")
    mistakes = gr.Gallery(label="Most confident mistakes (true class → predicted, confidence)", columns=8,
                          height="auto", object_fit="contain")

    @guarded
    def on_evaluate(key, tta_mode, token, profile: gr.OAuthProfile | None, progress=gr.Progress()):
        progress(0, desc="Evaluating")
        result, where, recorded = run_evaluation(ctx, key, tta_mode, owner_of(token, profile),
                                                 lambda done, total: progress(done / total, desc="Evaluating"))
        table = pd.DataFrame({"class": list(result.classes), "accuracy": result.per_class_accuracy.round(4),
                              "images": result.confusion.sum(1)})
        images = ctx.eval_set().images
        gallery = [(charts.upscale(images[m.index].permute(1, 2, 0).numpy()),
                    f"{result.classes[m.true]} → {result.classes[m.predicted]} {m.confidence:.0%}")
                   for m in result.mistakes]
        head = (f"### Accuracy {result.accuracy:.2%}\n{result.n_images:,} images · loss {result.loss:.4f}"
                f"{f' · {tta_mode} TTA' if tta_mode != 'none' else ''}")
        kept = " The test accuracy is kept with the run (Runs tab)." if recorded else ""
        return (f"Evaluated on {where.rstrip('.')}.{kept}", head, table, table[["class", "accuracy"]],
                figures.confusion_figure(result.confusion, result.classes), gallery)

    # one evaluation at a time (see charts.pixels_html on cached outputs); every client goes
    # through the queue, so this holds for API calls too
    run.click(on_evaluate, [model, tta, owner], [note, summary, per_class, bars, confusion, mistakes],
              api_name="evaluate", concurrency_limit=1, concurrency_id="evaluate")
