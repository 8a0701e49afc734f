"""Runs tab: the table of past runs, overlaid curves of several runs, deleting a run."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from ..estimate import format_duration
from ..runs import RunError
from . import charts
from .context import AppContext
from .guard import guarded, text_list, text_value
from .identity import owner_of

# short headers: the table is narrow, and a long header breaks mid-word
COLUMNS = ["run", "data", "model", "status", "optim.", "lr", "epochs", "batch", "augment", "best val", "test", "time"]
MAX_OVERLAY = 8


def runs_table(ctx: AppContext) -> pd.DataFrame:
    rows = []
    for r in ctx.manager.list_runs():
        c = r.config
        rows.append([r.run_id, r.dataset, r.model, r.status, c.get("optimizer"), c.get("lr"),
                     f"{r.epochs_done}/{c.get('epochs')}", c.get("batch_size"), ",".join(c.get("augment") or []),
                     None if r.best_val_acc is None else round(r.best_val_acc, 4),
                     None if r.test_acc is None else round(r.test_acc, 4), format_duration(r.duration_s)])
    return pd.DataFrame(rows, columns=COLUMNS)


def overlay(ctx: AppContext, run_ids) -> tuple:
    """Per-epoch curves of the chosen runs (skips where there is nothing to draw) and the settings
    in which their configs differ."""
    snaps = []
    for run_id in text_list(run_ids, "runs", MAX_OVERLAY):
        try:
            snaps.append(ctx.manager.snapshot(run_id))
        except RunError:
            continue
    differences = charts.config_differences(snaps) if len(snaps) > 1 else pd.DataFrame(columns=["setting"])
    return (*(charts.plot_update(frame) for frame in charts.overlay_frames(snaps)), differences)


def reload(ctx: AppContext, current) -> tuple:
    ids = [r.run_id for r in ctx.manager.list_runs()]
    keep = [i for i in text_list(current, "runs", MAX_OVERLAY) if i in ids] or ids[:3]
    return runs_table(ctx), gr.Dropdown(choices=ids, value=keep), gr.Dropdown(choices=ids, value=None)


def delete_run(ctx: AppContext, identity: str | None, run_id, current) -> tuple:
    run_id = text_value(run_id, "run id", optional=True)
    if not run_id:
        return gr.skip(), gr.skip(), gr.skip(), "Pick a run to delete."
    try:
        if identity is None:
            raise RunError("only a run's owner can delete it, and this request names no owner")
        ctx.manager.delete(run_id, requester=identity)
    except RunError as exc:
        return gr.skip(), gr.skip(), gr.skip(), f"❌ {exc}"
    return *reload(ctx, current), f"Deleted `{run_id}`."


def build(ctx: AppContext, owner: gr.BrowserState, tab: gr.Tab) -> None:
    """Lay out the Runs tab inside `tab`; it reloads the table whenever the tab is opened."""
    refresh = gr.Button("↻ Refresh")
    table = gr.Dataframe(runs_table(ctx), label="Runs (newest first)", interactive=False, wrap=True,
                         elem_id="runs-table")
    ids = [r.run_id for r in ctx.manager.list_runs()]
    selected = gr.Dropdown(ids, value=ids[:3], multiselect=True, label="Overlay the curves of these runs",
                        allow_custom_value=True, max_choices=MAX_OVERLAY)
    with gr.Row():
        loss_plot = gr.LinePlot(x="epoch", y="loss", color="series", label="Loss per epoch (train and val)",
                                y_axis_format=".2f")
        acc_plot = gr.LinePlot(x="epoch", y="accuracy", color="run", label="Validation accuracy", y_lim=[0, 1],
                               y_axis_format=".0%")
    differences = gr.Dataframe(label="Settings in which the overlaid runs differ", interactive=False, wrap=True,
                               elem_id="runs-differences")
    with gr.Row():
        to_delete = gr.Dropdown(ids, label="Run to delete", scale=3, allow_custom_value=True)
        delete = gr.Button("Delete run", variant="stop", scale=1)
    message = gr.Markdown("")

    @guarded
    def on_delete(token, run_id, current, profile: gr.OAuthProfile | None):
        return delete_run(ctx, owner_of(token, profile), run_id, current)

    on_reload = guarded(lambda current: reload(ctx, current))
    refresh.click(on_reload, selected, [table, selected, to_delete], api_name="list_runs")
    tab.select(on_reload, selected, [table, selected, to_delete], api_name=False)
    selected.change(guarded(lambda run_ids: overlay(ctx, run_ids)), selected, [loss_plot, acc_plot, differences],
                    api_name=False)
    delete.click(on_delete, [owner, to_delete, selected], [table, selected, to_delete, message], api_name="delete_run")
