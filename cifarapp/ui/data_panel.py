"""The Train tab's Data panel: pick the data set (the app's default, or an image set of your
own), upload a zip of class folders, build a set class by class from files and webcam
snapshots, and look at any set (classes, images per class, samples, problems) before training."""

from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr
import numpy as np
import torch

from .. import figures
from ..imagesets import IMAGE_SIZES, ImageSet, ImageSetError
from ..library import ImageSetLibrary
from ..limits import RateLimited
from ..runs import owner_key
from ..sources import CIFAR100, CIFAR100_KEY, DataSource
from . import charts
from .context import AppContext
from .guard import cut, guarded, plain_error, text_list
from .identity import client_address, owner_of
from .widgets import MAX_ZIP_BYTES, uploaded_file

DEFAULT_CHOICE = ""
SAMPLES_PER_CLASS = 5
SAMPLE_CLASSES = 12  # the sample grid shows at most this many classes
MAX_FILES_PER_ADD = 200
EXPORT_DIR = Path(tempfile.gettempdir()) / "cifarapp-datasets"


def _library(ctx: AppContext) -> ImageSetLibrary:
    if ctx.manager.image_sets is None:
        raise plain_error("This app keeps no image sets.")
    return ctx.manager.image_sets


def _owner(token, profile) -> str:
    identity = owner_of(token, profile)
    if identity is None:
        raise plain_error("Reload the page: this browser has no identity yet, "
                          "and data sets belong to whoever adds them.")
    return owner_key(identity)


def image_side(ctx: AppContext, side) -> int:
    """The side the caller's sets are prepared at (the library's default for anything unexpected)."""
    library = ctx.manager.image_sets
    default = library.image_size if library is not None else IMAGE_SIZES[0]
    return side if side in IMAGE_SIZES and not isinstance(side, bool) else default


def dataset_choices(ctx: AppContext, token, profile=None, side=None) -> list[tuple[str, str]]:
    """The data sets the caller may train on: the app's default first, then their own, prepared
    at `side` pixels."""
    default = [(f"default: {ctx.data_source.describe()}", DEFAULT_CHOICE)]
    if ctx.data_source.given != CIFAR100:
        default.append((f"built in: {DataSource(CIFAR100, ctx.data_source.data_dir).describe()}", CIFAR100_KEY))
    identity = owner_of(token, profile)
    if identity is None or ctx.manager.image_sets is None:
        return default
    library, side = ctx.manager.image_sets, image_side(ctx, side)
    return default + [(f"{entry.label} at {side}x{side}", library.sized(entry.key, side))
                      for entry in library.entries(owner_key(identity))]


def describe(ctx: AppContext, token, key, profile=None, progress=None) -> tuple:
    """(summary markdown, images-per-class figure or None, sample gallery items) of a data set."""
    if not key:
        return (f"**Default data**: {ctx.data_source.describe()}. Upload a zip or build a data set below to train "
                "on your own images.", None, [])
    if key == CIFAR100_KEY:
        return (f"**CIFAR-100**: 100 classes, 50,000 training and 10,000 test images at 32x32 "
                f"({DataSource(CIFAR100, ctx.data_source.data_dir).describe()}).", None, [])
    try:
        image_set = _library(ctx).load(key, _owner(token, profile), progress=progress)
    except ImageSetError as exc:  # e.g. a collection with one class so far: say what it needs
        return f"⚠️ This data set cannot be trained on yet: {cut(str(exc), 300)}", None, []
    return summary_markdown(image_set), counts_figure(image_set), sample_gallery(image_set)


def summary_markdown(image_set: ImageSet) -> str:
    data = image_set.data
    counts = f"{len(data.train_labels):,} training, {len(data.val_labels):,} validation"
    if data.test_name == "test set":
        counts += f", {len(data.test_labels):,} test"
    lines = [f"**{data.name}**: {len(data.classes)} classes ({', '.join(data.classes[:12])}"
             f"{', …' if len(data.classes) > 12 else ''}); {counts} images at {data.image_size}x{data.image_size}. "
             f"Evaluation uses the {data.test_name}."]
    lines += [f"- ⚠️ {problem}" for problem in image_set.problems[:12]]
    if any("imbalanced" in p for p in image_set.problems):
        lines.append("- Turn on **Class-weighted loss** under More settings to make small classes count as much.")
    return "\n".join(lines)


def counts_figure(image_set: ImageSet):
    data = image_set.data
    splits = {"train": data.train_labels, "val": data.val_labels}
    if data.test_name == "test set":
        splits["test"] = data.test_labels
    n = len(data.classes)
    return figures.class_counts_figure(data.classes,
                                      {s: torch.bincount(y, minlength=n).tolist() for s, y in splits.items()})


def sample_gallery(image_set: ImageSet) -> list[tuple[np.ndarray, str]]:
    """A few training images of each class, as the model sees them (enlarged)."""
    data = image_set.data
    items = []
    factor = max(1, 96 // data.image_size)
    for label, name in enumerate(data.classes[:SAMPLE_CLASSES]):
        idx = (data.train_labels == label).nonzero().flatten()[:SAMPLES_PER_CLASS]
        for i in idx.tolist():
            items.append((charts.upscale(data.train_images[i].permute(1, 2, 0).numpy(), factor), name))
    return items


def upload_zip(ctx: AppContext, token, file, request, profile=None) -> str:
    """Keep an uploaded zip of class folders for the caller; the new set's key."""
    try:
        ctx.limits.uploads.check(client_address(request))
    except RateLimited as exc:
        raise plain_error(str(exc)) from None
    path = uploaded_file(file, MAX_ZIP_BYTES)
    try:
        return _library(ctx).add_zip(path, _owner(token, profile), name=Path(path).stem)
    except ImageSetError as exc:
        raise plain_error(f"That zip cannot be used: {cut(str(exc), 300)}") from None


def create_collection(ctx: AppContext, token, name, profile=None) -> str:
    try:
        return _library(ctx).new_collection(name, _owner(token, profile))
    except ImageSetError as exc:
        raise plain_error(str(exc)) from None


def add_to_class(ctx: AppContext, token, key, class_name, files, snapshot, request, profile=None) -> str:
    """Add uploaded files and a webcam snapshot to a class of a collection: a status line."""
    owner = _owner(token, profile)
    paths = text_list(files or [], "files", max_items=MAX_FILES_PER_ADD * 2)
    if len(paths) > MAX_FILES_PER_ADD:
        raise plain_error(f"Add at most {MAX_FILES_PER_ADD} files at a time.")
    images: list = [uploaded_file(p) for p in paths]
    if snapshot is not None:
        if not isinstance(snapshot, np.ndarray):
            raise plain_error("The snapshot is not an image.")
        images.append(snapshot)
    if not images:
        raise plain_error("Choose image files or take a webcam snapshot first.")
    try:
        added, problems = _library(ctx).add_images(key, owner, class_name, images)
        counts = _library(ctx).counts(key, owner)
    except ImageSetError as exc:
        raise plain_error(str(exc)) from None
    status = f"Added {added} image(s). Images per class: " + ", ".join(f"{c} {n}" for c, n in counts.items())
    return status + "".join(f"\n- ⚠️ {cut(p, 200)}" for p in problems[:10])


def export_zip(ctx: AppContext, token, key, profile=None) -> str:
    if not key:
        raise plain_error("Pick one of your data sets first.")
    EXPORT_DIR.mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=EXPORT_DIR))
    try:
        return str(_library(ctx).write_zip(key, _owner(token, profile), folder))
    except ImageSetError as exc:
        raise plain_error(str(exc)) from None


def build(ctx: AppContext, owner: gr.BrowserState, demo: gr.Blocks) -> gr.Dropdown:
    """Lay out the panel; return the data set dropdown (the Train form's `dataset` setting)."""
    with gr.Accordion("Data", open=True):
        with gr.Row():
            dataset = gr.Dropdown(dataset_choices(ctx, None), value=DEFAULT_CHOICE, label="Data set", scale=3,
                                  elem_id="dataset", info="the app's default data, or an image set of yours")
            size = gr.Radio(list(IMAGE_SIZES), value=image_side(ctx, None), label="Image size (your sets)",
                            info="the side images are prepared at; 64 needs fastnet or resnet18", scale=1,
                            elem_id="dataset-size")
            upload = gr.UploadButton("Upload a .zip of class folders", file_types=[".zip"], scale=1,
                                     elem_id="dataset-upload")
        summary = gr.Markdown(describe(ctx, None, DEFAULT_CHOICE)[0], elem_id="dataset-summary")
        with gr.Row(visible=False) as overview:  # shown for an image set
            counts = gr.Plot(label="Images per class", elem_id="dataset-counts", scale=1)
            samples = gr.Gallery(label="Samples per class (as the model sees them)", columns=SAMPLES_PER_CLASS,
                                 height="auto", elem_id="dataset-samples", scale=1)
        with gr.Accordion("Build a data set here, class by class (files or webcam)", open=False):
            with gr.Row():
                new_name = gr.Textbox(label="Name of a new data set", scale=3, elem_id="collection-name")
                create = gr.Button("Create", scale=1, elem_id="collection-create")
            with gr.Row():
                class_name = gr.Textbox(label="Class name", scale=1, elem_id="collection-class")
                files = gr.File(file_count="multiple", file_types=["image"], label="Images of this class", scale=2,
                                elem_id="collection-files")
                snapshot = gr.Image(sources=["webcam"], type="numpy", label="…or a webcam snapshot", scale=2,
                                    elem_id="collection-webcam")
            with gr.Row():
                add = gr.Button("Add to class", variant="primary", elem_id="collection-add")
                download = gr.DownloadButton("Download the data set as a zip", elem_id="dataset-download")
            collect_status = gr.Markdown(elem_id="collection-status")

    def refresh(token, profile: gr.OAuthProfile | None, value, side):
        """The data set list for the caller, with `value` (a set at any size) chosen at `side`."""
        side = image_side(ctx, side)
        if value and ctx.manager.image_sets is not None and value != CIFAR100_KEY:
            value = ctx.manager.image_sets.sized(value, side)
        return gr.update(choices=dataset_choices(ctx, token, profile, side), value=value)

    def shown(text, figure, gallery) -> tuple:
        """The outputs [summary, counts, samples, overview] of a described data set."""
        return text, figure, gallery, gr.update(visible=figure is not None)

    @guarded
    def on_load(token, side, profile: gr.OAuthProfile | None = None):
        return refresh(token, profile, DEFAULT_CHOICE, side)

    demo.load(on_load, [owner, size], dataset, api_name=False)

    @guarded
    def on_size(token, key, side, profile: gr.OAuthProfile | None = None):
        return refresh(token, profile, key if isinstance(key, str) else DEFAULT_CHOICE, side)

    size.change(on_size, [owner, dataset, size], dataset, api_name=False)

    @guarded
    def on_select(token, key, profile: gr.OAuthProfile | None = None, progress=gr.Progress()):
        return shown(*describe(ctx, token, key, profile, lambda done, total: progress(done / max(total, 1),
                                                                                     desc="Preparing images")))

    dataset.change(on_select, [owner, dataset], [summary, counts, samples, overview], api_name="describe_dataset",
                   concurrency_limit=2, concurrency_id="prepare")

    @guarded
    def on_upload(token, file, side, request: gr.Request, profile: gr.OAuthProfile | None = None):
        return refresh(token, profile, upload_zip(ctx, token, file, request, profile), side)

    upload.upload(on_upload, [owner, upload, size], dataset, api_name="upload_dataset", concurrency_limit=2,
                  concurrency_id="prepare")

    @guarded
    def on_create(token, name, side, profile: gr.OAuthProfile | None = None):
        key = create_collection(ctx, token, name, profile)
        return (refresh(token, profile, key, side),
                "Created. Type a class name, choose its images and press **Add to class**.")

    create.click(on_create, [owner, new_name, size], [dataset, collect_status], api_name="create_dataset")

    @guarded
    def on_add(token, key, name, chosen, frame, side, request: gr.Request, profile: gr.OAuthProfile | None = None):
        status = add_to_class(ctx, token, key, name, chosen, frame, request, profile)
        # the choice stays the same set, so its change event does not fire: describe it here
        return refresh(token, profile, key, side), status, None, None, *shown(*describe(ctx, token, key, profile))

    add.click(on_add, [owner, dataset, class_name, files, snapshot, size],
              [dataset, collect_status, files, snapshot, summary, counts, samples, overview], api_name="add_images",
              concurrency_limit=2, concurrency_id="prepare")

    @guarded
    def on_download(token, key, profile: gr.OAuthProfile | None = None):
        return export_zip(ctx, token, key, profile)

    download.click(on_download, [owner, dataset], download, api_name="download_dataset")
    return dataset
