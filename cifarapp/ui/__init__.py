"""The Gradio app: one module per tab; handlers stay thin and call the engine."""

from __future__ import annotations

import gradio as gr

from . import evaluate_tab, predict_tab, runs_tab, train_tab
from .context import AppContext, DataSettings, new_owner_token

CSS = """
.cf-progress {display:flex; gap:12px; align-items:center; font-variant-numeric: tabular-nums;}
.cf-progress progress {width: 260px; height: 14px;}
.cf-pixels img {image-rendering: pixelated;}
.cf-pixels figcaption {font-size: 0.85em; opacity: 0.8;}
"""


def build_app(ctx: AppContext) -> gr.Blocks:
    """The whole app. Launch with `launch(demo)` or `demo.launch(...)` with CSS and allowed paths."""
    age = ctx.cache_max_age_s  # Gradio checks this often and deletes its cached files older than it
    with gr.Blocks(title="cifarapp: CIFAR-10 trainer", delete_cache=(age, age)) as demo:
        owner = gr.BrowserState(None, storage_key="cifarapp-owner")
        gr.Markdown("# cifarapp · train, evaluate and use a CIFAR-10 classifier\n"
                    "Accuracies here come from a JPEG-decoded copy of CIFAR-10 when run on the project's data; "
                    "expect them ~2-3 points below published figures.")
        with gr.Tabs():
            with gr.Tab("Train", id="train"):
                train_tab.build(ctx, owner, demo)
            with gr.Tab("Evaluate", id="evaluate") as tab:
                evaluate_tab.build(ctx, tab)
            with gr.Tab("Predict", id="predict") as tab:
                predict_tab.build(ctx, tab)
            with gr.Tab("Runs", id="runs") as tab:
                runs_tab.build(ctx, owner, tab)
        demo.load(lambda token: token or new_owner_token(), owner, owner, api_name=False, queue=False)
    return demo


def launch(demo: gr.Blocks, ctx: AppContext, **kwargs):
    """Launch with the app's concurrency, upload limit and the folders it may serve files from."""
    demo.queue(default_concurrency_limit=8)
    return demo.launch(css=CSS, max_file_size="20mb",
                       allowed_paths=[str(ctx.manager.root.resolve())], **kwargs)


__all__ = ["AppContext", "DataSettings", "build_app", "launch"]
