"""Figures of the engine's results (matplotlib, no Gradio): what the app shows and the CLI saves."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .calibration import Reliability
from .lr_finder import LRFinderResult


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


def lr_finder_figure(result: LRFinderResult) -> Figure:
    """Loss against learning rate on a log axis: the raw and smoothed loss of the range test,
    with the suggested and the lowest-loss learning rates marked."""
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    ax.plot(result.lrs, result.losses, color="0.75", linewidth=1, label="loss per step")
    ax.plot(result.lrs, result.smoothed, color="tab:blue", linewidth=2, label="smoothed loss")
    if result.suggestion is not None:
        ax.axvline(result.suggestion, color="tab:green", linestyle="--",
                   label=f"suggested lr {result.suggestion:.2g} (steepest fall)")
    ax.axvline(result.minimum_lr, color="tab:red", linestyle=":", label=f"lowest loss at {result.minimum_lr:.2g}")
    ax.set_xscale("log")
    top = min(max(result.smoothed) * 1.1, 2 * result.smoothed[0] + 0.1)
    ax.set_ylim(min(result.smoothed) * 0.9, top)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, which="both", alpha=0.2)
    fig.tight_layout()
    return fig


def reliability_figure(before: Reliability, after: Reliability | None, temperature: float = 1.0) -> Figure:
    """A reliability diagram: accuracy against confidence per bin of the top probability, raw and
    after temperature scaling, with the diagonal of perfect calibration and each curve's ECE."""
    fig = Figure(figsize=(5.5, 5), dpi=100)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", label="perfectly calibrated")
    curves = [(before, "tab:red", "raw")]
    if after is not None:
        curves.append((after, "tab:blue", f"temperature {temperature:.2f}"))
    for reliability, colour, name in curves:
        filled = reliability.count > 0
        ax.plot(reliability.confidence[filled], reliability.accuracy[filled], marker="o", color=colour,
                label=f"{name}: ECE {reliability.ece:.1%}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, alpha=0.2)
    fig.tight_layout()
    return fig
