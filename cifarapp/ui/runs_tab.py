"""Runs tab: the table of past runs, overlaid curves of several runs, deleting a run."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from ..estimate import format_duration
from ..runs import RunError
from . import charts
from .context import AppContext
from .train_tab import owner_of

COLUMNS = ["run", "model", "status", "optimizer", "lr", "epochs", "batch", "augment", "best val acc",
           "test acc", "duration"]


def runs_table(ctx: AppContext) -> pd.DataFrame:
    rows = []
    for r in ctx.manager.list_runs():
        c = r.config
        rows.append([r.run_id, r.model, r.status, c.get("optimizer"), c.get("lr"),
                     f"{r.epochs_done}/{c.get('epochs')}", c.get("batch_size"), ",".join(c.get("augment") or []),
                     None if r.best_val_acc is None else round(r.best_val_acc, 4),
                     None if r.test_acc is None else round(r.test_acc, 4), format_duration(r.duration_s)])
    return pd.DataFrame(rows, columns=COLUMNS)


def build(ctx: AppContext, owner: gr.BrowserState, tab: gr.Tab) -> None:
    """Lay out the Runs tab inside `tab`; it reloads the table whenever the tab is opened."""
    refresh = gr.Button("↻ Refresh")
    table = gr.Dataframe(runs_table(ctx), label="Runs (newest first)", interactive=False, wrap=True,
                         elem_id="runs-table")
    ids = [r.run_id for r in ctx.manager.list_runs()]
    selected = gr.Dropdown(ids, value=ids[:3], multiselect=True, label="Overlay the curves of these runs",
                           allow_custom_value=True)
    with gr.Row():
        loss_plot = gr.LinePlot(x="epoch", y="loss", color="series", label="Loss per epoch (train and val)",
                                y_axis_format=".2f")
        acc_plot = gr.LinePlot(x="epoch", y="accuracy", color="run", label="Validation accuracy", y_lim=[0, 1],
                               y_axis_format=".0%")
    with gr.Row():
        to_delete = gr.Dropdown(ids, label="Run to delete", scale=3, allow_custom_value=True)
        delete = gr.Button("Delete run", variant="stop", scale=1)
    message = gr.Markdown("")

    def overlay(run_ids: list[str] | None):
        snaps = []
        for run_id in run_ids or []:
            try:
                snaps.append(ctx.manager.snapshot(run_id))
            except RunError:
                continue
        return tuple(charts.plot_update(frame) for frame in charts.overlay_frames(snaps))

    def reload(current: list[str] | None):
        ids = [r.run_id for r in ctx.manager.list_runs()]
        keep = [i for i in (current or []) if i in ids] or ids[:3]
        return runs_table(ctx), gr.Dropdown(choices=ids, value=keep), gr.Dropdown(choices=ids, value=None)

    def remove(token, run_id: str | None, current, request: gr.Request):
        if not run_id:
            return gr.skip(), gr.skip(), gr.skip(), "Pick a run to delete."
        try:
            ctx.manager.delete(run_id, requester=owner_of(token, request))
        except RunError as exc:
            return gr.skip(), gr.skip(), gr.skip(), f"❌ {exc}"
        return *reload(current), f"Deleted `{run_id}`."

    refresh.click(reload, selected, [table, selected, to_delete], api_name="list_runs")
    tab.select(reload, selected, [table, selected, to_delete], api_name=False)
    selected.change(overlay, selected, [loss_plot, acc_plot], api_name=False)
    delete.click(remove, [owner, to_delete, selected], [table, selected, to_delete, message], api_name="delete_run")
