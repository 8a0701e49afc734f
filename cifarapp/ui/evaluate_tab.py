"""Evaluate tab: accuracy; per-class accuracy, precision, recall and F1; calibration (ECE and a
reliability diagram before and after temperature scaling); the confusion matrix with a drill-down
into any cell (images, probabilities and saliency maps; most confused pairs first; top losses);
and two models compared."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pandas as pd

from .. import figures
from ..catalog import RUN_PREFIX
from ..checkpoints import CheckpointError
from ..data import DataUnavailableError
from ..evaluate import EvalResult, cell_indices, compare, evaluate, most_confused, top_losses
from ..explain import grad_cam, model_input_overlay
from ..inference import TTA_MODES
from ..runs import owner_key
from . import charts
from .context import AppContext, Evaluation
from .guard import guarded, one_of, plain_error, text_value
from .identity import owner_of
from .widgets import model_picker

TOP_LOSSES = "top losses"  # the drill-down's choice for the images with the highest loss
DRILL_IMAGES = 24  # images a drill-down shows (each gets a saliency map)
CONFUSED_PAIRS = 20  # pairs the drill-down lists, most confused first
COMPARE_IMAGES = 16  # images of disagreement the comparison shows


def run_evaluation(ctx: AppContext, key, tta, identity: str | None, progress=None) -> tuple[Evaluation, bool]:
    """Evaluate the model behind `key` on its evaluation set: (the evaluation, kept for the
    drill-down and comparisons; whether the test accuracy was recorded for the run: only its
    owner's is, and only on a full test set)."""
    done = ctx.evaluations.keep(evaluation_of(ctx, key, tta, identity, progress))
    recorded = (done.model_key.startswith(RUN_PREFIX) and done.full and ctx.manager.record_evaluation(
        done.model_key[len(RUN_PREFIX):], {"accuracy": done.result.accuracy, "tta": done.result.tta},
        requester=identity))
    return done, recorded


def evaluation_of(ctx: AppContext, key, tta, identity: str | None, progress=None) -> Evaluation:
    """The evaluation of the model behind `key` with `tta` on its evaluation set (not kept: a
    comparison's second model is evaluated only for the comparison)."""
    key = text_value(key, "model")
    tta = one_of(tta, TTA_MODES, "test-time augmentation")
    try:
        loaded = ctx.catalog.load(key)
    except (CheckpointError, OSError) as exc:
        raise plain_error(str(exc)) from None
    try:
        eval_set = ctx.eval_set_for(loaded, owner_key(identity) if identity else None)
    except (DataUnavailableError, CheckpointError) as exc:
        raise plain_error(str(exc)) from None
    result = evaluate(loaded, eval_set.images, eval_set.labels, tta=tta, progress=progress)
    return Evaluation.of(key, result, eval_set)


def class_table(result: EvalResult) -> pd.DataFrame:
    """Per class: accuracy, precision, recall, F1 and the number of images."""
    return pd.DataFrame({"class": list(result.classes), "accuracy": result.per_class_accuracy.round(4),
                         "precision": result.precision.round(4), "recall": result.recall.round(4),
                         "F1": result.f1.round(4), "images": result.confusion.sum(1)})


def confusion_table(result: EvalResult) -> pd.DataFrame:
    """The confusion matrix as a table (rows: true class; click a cell to see its images)."""
    short = [name[:10] for name in result.classes]  # names may share their first 10 characters
    table = pd.DataFrame(result.confusion, columns=short)
    table.insert(0, "true \\ predicted", short, allow_duplicates=True)
    return table


def calibration_markdown(result: EvalResult) -> str:
    if result.calibrated:
        return (f"**Calibration.** Expected calibration error {result.raw_ece:.1%} with the raw softmax, "
                f"**{result.calibrated_ece:.1%} after temperature scaling** (temperature {result.temperature:.3g}, "
                "fitted on images the model did not train on). Predict shows the calibrated probabilities.")
    return (f"**Calibration.** Expected calibration error {result.raw_ece:.1%}. This model has no fitted "
            "temperature (it kept no validation images), so its probabilities are the raw softmax.")


def drill_choices(result: EvalResult) -> list[tuple[str, str]]:
    """The drill-down's choices: the most confused pairs first, then the top losses."""
    pairs = [(f"{p.true_name} → {p.predicted_name} ({p.count})", f"{p.true}:{p.predicted}")
             for p in most_confused(result.confusion, result.classes, CONFUSED_PAIRS)]
    return [*pairs, (f"{TOP_LOSSES} (the images the model is most wrong about)", TOP_LOSSES)]


def drill_down(ctx: AppContext, token, choice) -> tuple[list, str]:
    """(gallery, heading) of the images behind a drill-down choice ("true:predicted" or
    TOP_LOSSES) of the evaluation `token` names: each enlarged with the saliency map of the class
    the model predicted, captioned with its probabilities."""
    evaluation = ctx.evaluations.get(text_value(token, "evaluation", optional=True))
    if evaluation is None:
        raise plain_error("Evaluate a model first (evaluations are kept for a while, then forgotten).")
    result, choice = evaluation.result, text_value(choice, "cell")
    if choice == TOP_LOSSES:
        indices, heading = top_losses(result, DRILL_IMAGES), "The images with the highest loss"
    else:
        try:
            true, predicted = (int(part) for part in choice.split(":"))
        except ValueError:
            raise plain_error("Pick a cell of the confusion matrix or a pair from the list.") from None
        if not (0 <= true < len(result.classes) and 0 <= predicted < len(result.classes)):
            raise plain_error("That cell is not in this confusion matrix.")
        indices = cell_indices(result, true, predicted)
        heading = (f"{len(indices):,} images of {result.classes[true]} predicted as {result.classes[predicted]}"
                   + (f" (the {DRILL_IMAGES} most confident shown)" if len(indices) > DRILL_IMAGES else ""))
        indices = indices[:DRILL_IMAGES]
    return gallery_with_saliency(ctx, evaluation, indices), f"**{heading}.** Saliency: Grad-CAM of the predicted class."


def gallery_with_saliency(ctx: AppContext, evaluation: Evaluation, indices) -> list[tuple[np.ndarray, str]]:
    """Gallery items for images of an evaluation: the model input enlarged with the Grad-CAM map
    of the predicted class, captioned true → predicted with both probabilities."""
    if len(indices) == 0:
        return []
    result = evaluation.result
    pixels = evaluation.images[indices].permute(0, 2, 3, 1).numpy()
    try:
        # the class the evaluation predicted (with its test-time augmentation), not Grad-CAM's own top class
        cam = grad_cam(ctx.catalog.load(evaluation.model_key), pixels, result.predicted[indices])
    except (CheckpointError, OSError) as exc:
        raise plain_error(str(exc)) from None
    items = []
    for i, index in enumerate(indices):
        true, predicted = int(result.labels[index]), int(result.predicted[index])
        probabilities = result.probabilities[index]
        caption = (f"{result.classes[true]} → {result.classes[predicted]} {probabilities[predicted]:.0%}"
                   + ("" if true == predicted else f" (true class {probabilities[true]:.0%})"))
        items.append((model_input_overlay(pixels[i], cam.maps[i], display_side=128), caption))
    return items


def comparison(ctx: AppContext, token, other_key, identity: str | None, progress=None) -> tuple:
    """(side-by-side table, summary, gallery of disagreements) of the evaluation `token` names
    against the model `other_key` on the same images."""
    first = ctx.evaluations.get(text_value(token, "evaluation", optional=True))
    if first is None:
        raise plain_error("Evaluate a model first; then pick another one to compare it with.")
    second = evaluation_of(ctx, other_key, first.result.tta, identity, progress)
    if second.where != first.where:
        raise plain_error(f"The two models are evaluated on different images ({first.where}; {second.where}); "
                          "compare models of the same data set.")
    names = (first.model_key.split(":", 1)[-1], second.model_key.split(":", 1)[-1])
    try:
        result = compare(first.result, second.result, names)
    except ValueError as exc:
        raise plain_error(str(exc)) from None
    table = pd.DataFrame({"class": list(result.classes), names[0]: result.per_class_accuracy[0].round(4),
                          names[1]: result.per_class_accuracy[1].round(4),
                          "difference": (result.per_class_accuracy[1] - result.per_class_accuracy[0]).round(4)})
    summary = (f"**{names[0]}** {result.accuracy[0]:.2%} · **{names[1]}** {result.accuracy[1]:.2%} on the same "
               f"{first.result.n_images:,} images. Both right {result.both_right:,} · only {names[0]} right "
               f"{result.only_a_right:,} · only {names[1]} right {result.only_b_right:,} · both wrong "
               f"{result.both_wrong:,}. They predict differently on {len(result.disagreements):,} images "
               f"(the first {COMPARE_IMAGES} below, captioned true class: {names[0]}'s prediction / "
               f"{names[1]}'s).")
    gallery = []
    for index in result.disagreements[:COMPARE_IMAGES]:
        image = charts.upscale(first.images[index].permute(1, 2, 0).numpy())
        true = result.classes[int(first.result.labels[index])]
        gallery.append((image, f"{true}: {result.classes[int(first.result.predicted[index])]} / "
                               f"{result.classes[int(second.result.predicted[index])]}"))
    return table, summary, gallery


def build(ctx: AppContext, owner: gr.BrowserState, tab: gr.Tab) -> None:
    """Lay out the Evaluate tab inside `tab`."""
    with gr.Row():
        model = model_picker(ctx, tab, "eval-model")
        tta = gr.Radio([(mode.replace("_", " + "), mode) for mode in TTA_MODES], value="none", scale=1,
                    label="Test-time augmentation", info="flip + translate averages 6 views of each image")
        run = gr.Button("Evaluate", variant="primary", scale=1)
    note = gr.Markdown("")
    summary = gr.Markdown("", elem_id="eval-summary")
    evaluation = gr.State(None)
    with gr.Row():
        per_class = gr.Dataframe(headers=["class", "accuracy", "precision", "recall", "F1", "images"],
                                 label="Per class", scale=2, elem_id="eval-per-class")
        bars = gr.BarPlot(x="class", y="accuracy", y_lim=[0, 1], label="Per-class accuracy", scale=2, sort=None)
    with gr.Row():
        calibration_note = gr.Markdown("", elem_id="eval-calibration")
        reliability = gr.Plot(label="Reliability diagram (accuracy against confidence)", elem_id="eval-reliability")
    confusion = gr.Plot(label="Confusion matrix (rows: true class; colour: share of the row)")
    with gr.Accordion("Drill down: the images behind a cell of the confusion matrix", open=True):
        cells = gr.Dataframe(label="Confusion matrix: click a cell to see its images", interactive=False,
                             elem_id="eval-cells")
        pair = gr.Dropdown([], label="…or pick a pair (most confused first) or the top losses", elem_id="eval-pair")
        drill_heading = gr.Markdown("")
        drill = gr.Gallery(label="Images (saliency of the predicted class)", columns=8, height="auto",
                           object_fit="contain", elem_id="eval-drill")
    mistakes = gr.Gallery(label="Most confident mistakes (true class → predicted, confidence)", columns=8,
                          height="auto", object_fit="contain")
    with gr.Accordion("Compare with another model", open=False):
        with gr.Row():
            other = model_picker(ctx, tab, "eval-compare-model")
            compare_button = gr.Button("Compare", scale=1, elem_id="eval-compare")
        compare_summary = gr.Markdown("", elem_id="eval-compare-summary")
        compare_table = gr.Dataframe(label="Per-class accuracy side by side", interactive=False)
        compare_gallery = gr.Gallery(label="Where they disagree", columns=8, height="auto", object_fit="contain")

    @guarded
    def on_evaluate(key, tta_mode, token, profile: gr.OAuthProfile | None, progress=gr.Progress()):
        progress(0, desc="Evaluating")
        done, recorded = run_evaluation(ctx, key, tta_mode, owner_of(token, profile),
                                        lambda finished, total: progress(finished / total, desc="Evaluating"))
        result = done.result
        table = class_table(result)
        gallery = [(charts.upscale(done.images[m.index].permute(1, 2, 0).numpy()),
                    f"{result.classes[m.true]} → {result.classes[m.predicted]} {m.confidence:.0%}")
                   for m in result.mistakes]
        head = (f"### Accuracy {result.accuracy:.2%}\n{result.n_images:,} images · loss {result.loss:.4f} · "
                f"macro F1 {result.macro_f1:.2%}{f' · {tta_mode} TTA' if tta_mode != 'none' else ''}")
        kept = " The test accuracy is kept with the run (Runs tab)." if recorded else ""
        choices = drill_choices(result)
        return (f"Evaluated on {done.where.rstrip('.')}.{kept}", head, table, table[["class", "accuracy"]],
                calibration_markdown(result),
                figures.reliability_figure(result.raw_reliability,
                                           result.calibrated_reliability if result.calibrated else None,
                                           result.temperature),
                figures.confusion_figure(result.confusion, result.classes), confusion_table(result),
                gr.Dropdown(choices=choices, value=None), gallery, done.token,
                # the drill-down and the comparison showed the previous evaluation's images
                [], "", None, "", [])

    # one evaluation at a time (see charts.images_html on cached outputs); every client goes
    # through the queue, so this holds for API calls too
    run.click(on_evaluate, [model, tta, owner],
              [note, summary, per_class, bars, calibration_note, reliability, confusion, cells, pair, mistakes,
               evaluation, drill, drill_heading, compare_table, compare_summary, compare_gallery],
              api_name="evaluate", concurrency_limit=1, concurrency_id="evaluate")

    @guarded
    def on_pair(token, choice):
        if not choice:
            return gr.skip(), gr.skip()
        gallery, heading = drill_down(ctx, token, choice)
        return gallery, heading

    pair.change(on_pair, [evaluation, pair], [drill, drill_heading], api_name="drill_down", concurrency_limit=2,
                concurrency_id="evaluate-drill")

    @guarded
    def on_cell(token, select: gr.SelectData):
        row, column = select.index if isinstance(select.index, (list, tuple)) else (None, None)
        if not isinstance(row, int) or not isinstance(column, int) or column < 1:
            return gr.skip(), gr.skip()
        return drill_down(ctx, token, f"{row}:{column - 1}")

    cells.select(on_cell, evaluation, [drill, drill_heading], api_name=False, concurrency_limit=2,
                 concurrency_id="evaluate-drill")

    @guarded
    def on_compare(token, other_key, owner_token, profile: gr.OAuthProfile | None, progress=gr.Progress()):
        progress(0, desc="Evaluating the second model")
        return comparison(ctx, token, other_key, owner_of(owner_token, profile),
                          lambda finished, total: progress(finished / total, desc="Evaluating the second model"))

    compare_button.click(on_compare, [evaluation, other, owner], [compare_table, compare_summary, compare_gallery],
                         api_name="compare", concurrency_limit=1, concurrency_id="evaluate")
