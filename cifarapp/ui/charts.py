"""Turn run snapshots and evaluation results into plot data (pandas frames, matplotlib figures)."""

from __future__ import annotations

import base64
import html
import io
import json

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image

from ..runs import RunSnapshot

# a long run's per-step curves are averaged in buckets down to this many points per series, so a
# 20-epoch run's poll sends as little as a short one's
MAX_STEP_POINTS = 300
# the loss plot waits for a few points: one point alone gets an axis with ticks like 0.017045
MIN_STEP_POINTS = 3
# what the x-axis of a run's curves can count, and its title
X_AXES = {"epoch": "epoch", "step": "step", "time": "time (s)"}


def _steps_per_epoch(snap: RunSnapshot) -> float:
    last = snap.last_step
    epochs = snap.config.get("epochs") or 1
    return (last["total_steps"] / epochs) if last else 1.0


def _bucketed(frame: pd.DataFrame, limit: int = MAX_STEP_POINTS) -> pd.DataFrame:
    """`frame` with at most `limit` rows: consecutive rows averaged in equal buckets."""
    if len(frame) <= limit:
        return frame
    return frame.groupby(np.arange(len(frame)) * limit // len(frame)).mean()


def axis_title(x_axis: str, log_scale: bool = False, what: str = "loss") -> tuple[str, str]:
    """(x title, y title) of a run's curves."""
    return X_AXES.get(x_axis, "epoch"), (f"log10 {what}" if log_scale else what)


# The frame builders return None when there is nothing to draw: a Gradio LinePlot that is once
# given an empty frame stops drawing lines (Gradio 6.31), so callers leave the plot as it is.


def loss_frame(snap: RunSnapshot, x_axis: str = "epoch", log_scale: bool = False) -> pd.DataFrame | None:
    """Long-format frame (x, loss, series): per-step raw and smoothed train loss, per-epoch train
    and val loss, against epochs, steps or seconds of training (`x_axis`, one of X_AXES); with
    `log_scale` the loss is log10 (a loss that falls by orders of magnitude stays readable)."""
    rows = []
    per_epoch = _steps_per_epoch(snap)
    if len(snap.steps) >= MIN_STEP_POINTS or snap.epochs:
        steps = pd.DataFrame(snap.steps)
        steps = steps[np.isfinite(steps["loss"]) & (steps["loss"] > 0)]
        x = {"epoch": steps["step"] / per_epoch, "step": steps["step"], "time": steps["elapsed_s"]}[x_axis]
        raw = pd.DataFrame({"x": x, "loss": steps["loss"]})
        smooth = pd.DataFrame({"x": x, "loss": steps["loss"].ewm(alpha=0.15).mean()})
        rows.append(_bucketed(raw).assign(series="train (per step)"))
        rows.append(_bucketed(smooth).assign(series="train (smoothed)"))
    if snap.epochs:
        epochs = pd.DataFrame(snap.epochs)
        x = {"epoch": epochs["epoch"], "step": epochs["epoch"] * per_epoch,
             "time": epochs.get("elapsed_s", epochs["epoch"])}[x_axis]
        rows.append(pd.DataFrame({"x": x, "loss": epochs["train_loss"], "series": "train (epoch)"}))
        rows.append(pd.DataFrame({"x": x, "loss": epochs["val_loss"], "series": "val (epoch)"}))
    if not rows:
        return None
    frame = pd.concat(rows, ignore_index=True).dropna()
    if log_scale:
        frame = frame[frame["loss"] > 0].assign(loss=lambda f: np.log10(f["loss"]))
    return frame


def accuracy_frame(snap: RunSnapshot, x_axis: str = "epoch") -> pd.DataFrame | None:
    """Long-format frame (x, accuracy, series): val accuracy and (augmented) train accuracy per
    epoch, against epochs, steps or seconds (`x_axis`)."""
    if not snap.epochs:
        return None
    epochs = pd.DataFrame(snap.epochs)
    x = {"epoch": epochs["epoch"], "step": epochs["epoch"] * _steps_per_epoch(snap),
         "time": epochs.get("elapsed_s", epochs["epoch"])}[x_axis]
    frames = [pd.DataFrame({"x": x, "accuracy": epochs["val_acc"], "series": "val"})]
    if "train_acc" in epochs:
        frames.append(pd.DataFrame({"x": x, "accuracy": epochs["train_acc"],
                                    "series": "train (augmented, during the epoch)"}))
    return pd.concat(frames, ignore_index=True).dropna()


def overlay_frames(snaps: list[RunSnapshot]) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """Per-epoch train and val loss, and val accuracy, of several runs (one line per run and split)."""
    loss, acc = [], []
    for snap in snaps:
        for e in snap.epochs:
            label = f"{snap.run_id} ({snap.config.get('model', '?')})"
            loss.append({"epoch": e["epoch"], "loss": e.get("val_loss"), "series": f"{label} val"})
            loss.append({"epoch": e["epoch"], "loss": e.get("train_loss"), "series": f"{label} train"})
            acc.append({"epoch": e["epoch"], "accuracy": e.get("val_acc"), "run": label})
    loss_df = pd.DataFrame(loss, columns=["epoch", "loss", "series"]).astype({"epoch": float}).dropna()
    acc_df = pd.DataFrame(acc, columns=["epoch", "accuracy", "run"]).astype({"epoch": float}).dropna()
    return (loss_df if len(loss_df) else None), (acc_df if len(acc_df) else None)


def config_differences(snaps: list[RunSnapshot]) -> pd.DataFrame:
    """The settings in which the runs' configs differ: one row per setting, one column per run."""
    configs = [snap.config for snap in snaps]
    keys = [k for k in dict.fromkeys(k for c in configs for k in c)
            if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
    return pd.DataFrame([[key, *(_setting_text(c.get(key)) for c in configs)] for key in keys],
                        columns=["setting", *(snap.run_id for snap in snaps)])


def _setting_text(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "none"
    return "–" if value in (None, "") else str(value)


def plot_update(frame: pd.DataFrame | None):
    """A LinePlot value, or gr.skip() when there is nothing to draw yet."""
    return gr.skip() if frame is None else frame


def _figure_html(image_hwc: np.ndarray, caption: str, width: int, height: int, sharp: bool) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image_hwc).save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    style = "image-rendering: pixelated;" if sharp else "image-rendering: auto;"
    return (f"<figure class='cf-pixels'><img src='data:image/png;base64,{data}' width='{width}' height='{height}' "
            f"style='{style}' alt='{html.escape(caption, quote=True)}'><figcaption>{html.escape(caption)}"
            "</figcaption></figure>")


def images_html(images: list[tuple[np.ndarray, str, bool]]) -> str:
    """Several captioned uint8 RGB images side by side as inline PNGs; each flag says whether it is
    drawn with sharp pixels (a small model input, enlarged to 160 px) or smoothly (a photo, at most
    320 px). Inline, so no file is written: Gradio rewrites a cached output file in place, and
    readers of an identical output from a concurrent request could get it half-written."""
    parts = []
    for image_hwc, caption, sharp in images:
        height, width = image_hwc.shape[:2]
        scale = 160 / max(height, width) if sharp else min(1.0, 320 / max(height, width))
        parts.append(_figure_html(image_hwc, caption, round(width * scale), round(height * scale), sharp))
    return f"<div class='cf-figures'>{''.join(parts)}</div>"


def upscale(image_hwc: np.ndarray, factor: int = 4) -> np.ndarray:
    """Nearest-neighbour enlargement, so a 32x32 image is visible as the model sees it."""
    return np.repeat(np.repeat(image_hwc, factor, axis=0), factor, axis=1)
