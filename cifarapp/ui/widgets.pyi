"""Widgets used by more than one tab, and Gradio components adapted for the app."""

from __future__ import annotations

import gradio as gr

from .context import AppContext


def model_picker(ctx: AppContext, tab: gr.Tab, elem_id: str) -> gr.Dropdown:
    """A model dropdown (shipped weights and runs) with a refresh button; it also refreshes when
    `tab` is opened, so a run that just ended is selectable without a restart."""
    dropdown = gr.Dropdown(ctx.catalog.choices(), value=ctx.catalog.default_key(), label="Model", scale=3,
                           allow_custom_value=True, elem_id=elem_id)
    refresh = gr.Button("↻ Refresh list", scale=0)

    def refreshed(current):
        choices = ctx.catalog.choices()
        keys = [k for _, k in choices]
        return gr.Dropdown(choices=choices, value=current if current in keys else (keys[0] if keys else None))

    refresh.click(refreshed, dropdown, dropdown, api_name=False, queue=False)
    tab.select(refreshed, dropdown, dropdown, api_name=False, queue=False)
    return dropdown

from gradio.events import Dependency

class UploadImage(gr.Image):
    """gr.Image (upload, webcam, clipboard) that hands an undecodable upload's path to the handler
    instead of failing inside Gradio, so the user gets the engine's plain message about the file."""

    @classmethod
    def get_block_name(cls) -> str:
        return "image"  # same front-end component

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except Exception:  # Pillow raises many types for bad files; predict.preprocess explains them
            return None if payload is None else payload.path
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component