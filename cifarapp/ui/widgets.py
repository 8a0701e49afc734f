"""Widgets used by more than one tab, and the check that a file a handler opens is an upload."""

from __future__ import annotations

import contextlib
import secrets
import stat
import tempfile
import time
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder

from .context import AppContext
from .guard import plain_error

# the largest file the handlers read (an image, a config), and the largest zip of an image set,
# which is also the largest upload Gradio accepts (launch's max_file_size)
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_ZIP_BYTES = 200 * 1024 * 1024


def remove_older_than(directory: Path, max_age_s: float) -> None:
    """Delete the files in `directory` last modified more than `max_age_s` seconds ago."""
    cutoff = time.time() - max_age_s
    for path in directory.iterdir():
        with contextlib.suppress(OSError):  # another request may have removed it first
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()


def download_path(ctx: AppContext, folder: str, name: str) -> Path:
    """A fresh path for a file the app makes for download (a copy, an export), in a temporary
    folder of its own from which files older than the app's cache age are removed; the name gets a
    random part, so one person's download is never another's."""
    directory = Path(tempfile.gettempdir()) / folder
    directory.mkdir(exist_ok=True)
    remove_older_than(directory, ctx.cache_max_age_s)
    stem, dot, suffix = name.partition(".")
    return directory / f"{stem}-{secrets.token_hex(4)}{dot}{suffix}"


def uploaded_file(path, max_bytes: int = MAX_UPLOAD_BYTES) -> Path:
    """`path` if it is a regular file of at most `max_bytes` that Gradio stored in its upload
    folder, else a plain error. Handlers open only such files: a path a client names is never read."""
    try:
        resolved = Path(path).resolve()
        inside = resolved.is_relative_to(Path(get_upload_folder()).resolve())
        info = resolved.stat() if inside else None
    except (TypeError, ValueError, OSError):
        inside, info = False, None
    if not inside or info is None or not stat.S_ISREG(info.st_mode):
        raise plain_error("That is not a file uploaded to this app; upload it through the page or the API client.")
    if info.st_size > max_bytes:
        raise plain_error(f"That file is larger than {max_bytes // 2**20} MB.")
    return resolved


class UploadImage(gr.Image):
    """gr.Image (upload, webcam, clipboard) that hands an undecodable upload to the handler as a
    path, so the user gets the engine's plain message about the file instead of Gradio's generic
    error; any other path than an upload of this app is refused."""

    @classmethod
    def get_block_name(cls) -> str:
        return "image"  # same front-end component

    def preprocess(self, payload):
        if payload is None:
            return None
        url = getattr(payload, "url", None)
        if isinstance(url, str) and url.startswith("data:"):  # webcam and clipboard images
            try:
                return super().preprocess(payload)
            except Exception:  # noqa: BLE001 - Pillow raises many types for bad data
                raise plain_error("The image data could not be decoded; try another image.") from None
        path = uploaded_file(getattr(payload, "path", None))
        try:
            return super().preprocess(payload)
        except Exception:  # noqa: BLE001 - Pillow raises many types; images.preprocess explains them
            return str(path)


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
