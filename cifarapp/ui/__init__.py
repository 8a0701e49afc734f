"""The Gradio app: one module per tab; handlers stay thin and call the engine.

What is public on a shared app (a Space): the list of runs, their settings, curves and metrics
(Runs tab), and the use of any finished run's model in Evaluate and Predict. What is the
owner's: stopping, resuming and deleting a run, downloading its checkpoint, and recording a
test accuracy for it. No file of a run is served directly; a checkpoint download is a copy that
the owner's handler hands to Gradio. See docs/robustness.md for the threats and what stops each.
"""

from __future__ import annotations

import os

import gradio as gr
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..limits import RateLimit, RateLimited
from . import evaluate_tab, predict_tab, runs_tab, train_tab
from .context import AppContext
from .guard import SafeBlocks
from .identity import client_address, new_owner_token, valid_token
from .widgets import MAX_ZIP_BYTES

CSS = """
.cf-progress {display:flex; gap:12px; align-items:center; font-variant-numeric: tabular-nums;}
.cf-progress progress {width: 260px; height: 14px;}
.cf-figures {display:flex; gap:16px; flex-wrap:wrap; align-items:flex-start;}
.cf-pixels figcaption {font-size: 0.85em; opacity: 0.8;}
"""
UPLOAD_ROUTE = "/gradio_api/upload"
MAX_UPLOAD = f"{MAX_ZIP_BYTES // 2**20}mb"


def build_app(ctx: AppContext) -> gr.Blocks:
    """The whole app. Launch it with `launch(demo, ctx)`."""
    age = ctx.cache_max_age_s  # Gradio checks this often and deletes its cached files older than it
    with SafeBlocks(title="cifarapp: image classifier trainer", delete_cache=(age, age)) as demo:
        owner = gr.BrowserState(None, storage_key="cifarapp-owner")
        gr.Markdown("# cifarapp · train, evaluate and use an image classifier: CIFAR-10 or your own images")
        if os.environ.get("OAUTH_CLIENT_ID"):  # a Space with Hugging Face sign-in (hf_oauth: true)
            gr.LoginButton(value="Sign in to own your runs across browsers")
        with gr.Tabs():
            with gr.Tab("Train", id="train"):
                train_tab.build(ctx, owner, demo)
            with gr.Tab("Evaluate", id="evaluate") as tab:
                evaluate_tab.build(ctx, owner, tab)
            with gr.Tab("Predict", id="predict") as tab:
                predict_tab.build(ctx, owner, tab)
            with gr.Tab("Runs", id="runs") as tab:
                runs_tab.build(ctx, owner, tab)
        demo.load(lambda token: valid_token(token) or new_owner_token(), owner, owner, api_name=False, queue=False)
    return demo


class UploadLimit:
    """ASGI middleware: Gradio's upload route answers 429 with a plain message once an address
    goes over its uploads-per-minute limit."""

    def __init__(self, app, limit: RateLimit):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("method") == "POST" and scope.get("path", "").rstrip("/") \
                .endswith(UPLOAD_ROUTE):
            try:
                self.limit.check(client_address(Request(scope)))
            except RateLimited as exc:
                await JSONResponse({"error": str(exc)}, status_code=429)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def launch(demo: gr.Blocks, ctx: AppContext, **kwargs):
    """Launch with the app's limits: requests go through the queue only (its concurrency limits
    hold for every client), uploads are size- and rate-limited, and no folder of the app's is
    served (only Gradio's own upload and cache folders)."""
    demo.queue(default_concurrency_limit=8, api_open=False)
    return demo.launch(css=CSS, max_file_size=MAX_UPLOAD,
                       app_kwargs={"middleware": [Middleware(UploadLimit, limit=ctx.limits.uploads)]}, **kwargs)


__all__ = ["AppContext", "build_app", "launch"]
