"""Turn run snapshots and evaluation results into plot data (pandas frames, matplotlib figures)."""

from __future__ import annotations

import base64
import html
import io

import gradio as gr
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from ..runs import RunSnapshot

MAX_STEP_POINTS = 1500
# the loss plot waits for a few points: one point alone gets an axis with ticks like 0.017045
MIN_STEP_POINTS = 3


def _steps_per_epoch(snap: RunSnapshot) -> float:
    last = snap.last_step
    epochs = snap.config.get("epochs") or 1
    return (last["total_steps"] / epochs) if last else 1.0


# The frame builders return None when there is nothing to draw: a Gradio LinePlot that is once
# given an empty frame stops drawing lines (Gradio 6.31), so callers leave the plot as it is.


def loss_frame(snap: RunSnapshot) -> pd.DataFrame | None:
    """Long-format frame (epoch, loss, series): per-step raw and smoothed train loss, per-epoch
    train and val loss, all on one axis in epochs."""
    rows = []
    if len(snap.steps) >= MIN_STEP_POINTS or snap.epochs:
        per_epoch = _steps_per_epoch(snap)
        steps = pd.DataFrame(snap.steps)
        steps = steps[np.isfinite(steps["loss"])]
        x = steps["step"] / per_epoch
        smooth = steps["loss"].ewm(alpha=0.15).mean()
        stride = max(1, len(steps) // MAX_STEP_POINTS)
        rows.append(pd.DataFrame({"epoch": x, "loss": steps["loss"], "series": "train (per step)"}).iloc[::stride])
        rows.append(pd.DataFrame({"epoch": x, "loss": smooth, "series": "train (smoothed)"}).iloc[::stride])
    if snap.epochs:
        epochs = pd.DataFrame(snap.epochs)
        rows.append(pd.DataFrame({"epoch": epochs["epoch"], "loss": epochs["train_loss"], "series": "train (epoch)"}))
        rows.append(pd.DataFrame({"epoch": epochs["epoch"], "loss": epochs["val_loss"], "series": "val (epoch)"}))
    if not rows:
        return None
    return pd.concat(rows, ignore_index=True).dropna()


def accuracy_frame(snap: RunSnapshot) -> pd.DataFrame | None:
    """Long-format frame (epoch, accuracy, series): val accuracy and (augmented) train accuracy."""
    if not snap.epochs:
        return None
    epochs = pd.DataFrame(snap.epochs)
    frames = [pd.DataFrame({"epoch": epochs["epoch"], "accuracy": epochs["val_acc"], "series": "val"})]
    if "train_acc" in epochs:
        frames.append(pd.DataFrame({"epoch": epochs["epoch"], "accuracy": epochs["train_acc"],
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


def plot_update(frame: pd.DataFrame | None):
    """A LinePlot value, or gr.skip() when there is nothing to draw yet."""
    return gr.skip() if frame is None else frame


def confusion_figure(confusion: np.ndarray, classes) -> Figure:
    """A labelled heatmap with the count in every cell (rows = true class)."""
    fig = Figure(figsize=(7.5, 6.5), dpi=100)
    ax = fig.add_subplot()
    row_share = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    im = ax.imshow(row_share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), labels=classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), labels=classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    for i in range(confusion.shape[0]):
        for j in range(confusion.shape[1]):
            ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if row_share[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    return fig


def pixels_html(image_hwc: np.ndarray, caption: str, size: int = 160) -> str:
    """An <img> holding a small uint8 RGB image as an inline PNG, drawn enlarged with sharp pixels.
    Inline, so no file is written: Gradio rewrites a cached output file in place, and readers of
    an identical output from a concurrent request could get it half-written."""
    buffer = io.BytesIO()
    Image.fromarray(image_hwc).save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f"<figure class='cf-pixels'><img src='data:image/png;base64,{data}' width='{size}' height='{size}' "
            f"alt='{html.escape(caption, quote=True)}'><figcaption>{html.escape(caption)}</figcaption></figure>")


def upscale(image_hwc: np.ndarray, factor: int = 4) -> np.ndarray:
    """Nearest-neighbour enlargement, so a 32x32 image is visible as the model sees it."""
    return np.repeat(np.repeat(image_hwc, factor, axis=0), factor, axis=1)


def class_counts_figure(classes, counts_by_split: dict[str, list[int]]) -> Figure:
    """Horizontal bars of images per class, one colour per split (train, val, test)."""
    fig = Figure(figsize=(6.5, 0.45 * len(classes) + 1.2), dpi=100)
    ax = fig.add_subplot()
    left = np.zeros(len(classes))
    for split, counts in counts_by_split.items():
        ax.barh(range(len(classes)), counts, left=left, label=split)
        left += np.asarray(counts)
    for i, total in enumerate(left):
        ax.text(total, i, f" {int(total)}", va="center", fontsize=9)
    ax.set_yticks(range(len(classes)), labels=classes)
    ax.invert_yaxis()
    ax.set_xlabel("images")
    ax.set_xlim(0, max(left.max(initial=1), 1) * 1.15)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig
