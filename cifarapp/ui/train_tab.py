"""Train tab: the form, presets, Start/Stop, and live plots polled from the run manager."""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
import time
from pathlib import Path

import gradio as gr

from ..data import AUGMENTATIONS, DataUnavailableError
from ..estimate import BUDGETS, expected_duration, format_duration, plan_for_budget, remaining_seconds
from ..hardware import DEVICES, PRECISIONS
from ..models import MODELS, registered_parameter_count
from ..presets import BUDGET_BASE, PRESETS
from ..runs import BusyError, RunError, RunSnapshot
from ..train import OPTIMIZERS, SCHEDULES, ConfigError, TrainConfig, cli_command
from . import charts
from .context import AppContext, hardware_summary

STATUS_ICONS = {"running": "🟢", "starting": "🟡", "finished": "✅", "stopped": "⏹️", "diverged": "⚠️",
                "failed": "❌", "interrupted": "⏸️"}
CONFIG_DIR = Path(tempfile.gettempdir()) / "cifarapp-configs"


def owner_of(token: str | None, request: gr.Request | None) -> str:
    """The browser's stored token, or the Gradio session for API clients without one."""
    if token:
        return str(token)
    return f"session-{request.session_hash}" if request is not None and request.session_hash else "anonymous"


def remove_older_than(directory: Path, max_age_s: float) -> None:
    """Delete the files in `directory` last modified more than `max_age_s` seconds ago."""
    cutoff = time.time() - max_age_s
    for path in directory.iterdir():
        with contextlib.suppress(OSError):  # another request may have removed it first
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()


def form_to_config(values: dict) -> TrainConfig:
    """Form values by field name -> a validated TrainConfig; ConfigError lists what is wrong."""
    d = dict(values)
    if d.get("train_size") in (0, None, ""):
        d["train_size"] = None
    d["augment"] = list(d.get("augment") or [])
    return TrainConfig.from_dict(d).validate()


def config_to_form(config: TrainConfig, fields: list[str]) -> list:
    d = config.to_dict()
    d["train_size"] = d["train_size"] or 0
    return [d[f] for f in fields]


def status_markdown(snap: RunSnapshot) -> str:
    icon = STATUS_ICONS.get(snap.status, "•")
    cfg = snap.config
    head = f"{icon} **{snap.status}** · run `{snap.run_id}` · {cfg.get('model')} · {cfg.get('optimizer')} lr {cfg.get('lr')}"
    if snap.message and snap.status != "running":
        head += f"\n\n{snap.message}"
    elif snap.compute:
        head += f"\n\nComputes in {snap.compute}"
    return head


def progress_html(snap: RunSnapshot) -> str:
    last = snap.last_step
    epochs = snap.config.get("epochs", 0)
    if last is None:
        return "<div class='cf-progress'>waiting for the first steps…</div>"
    frac = last["step"] / max(last["total_steps"], 1)
    remaining = (remaining_seconds(last["step"], last["total_steps"], last["elapsed_s"])
                 if snap.status == "running" else 0)
    return (f"<div class='cf-progress'><progress value='{frac:.4f}' max='1'></progress>"
            f"<span>epoch {last['epoch']}/{epochs} · step {last['step']:,}/{last['total_steps']:,} · "
            f"{last['images_per_s']:,.0f} img/s · elapsed {format_duration(last['elapsed_s'])} · "
            f"remaining {format_duration(remaining)}</span></div>")


BUSY_MEASURING = ("measured when no run is training here (measuring now would slow the run down and read "
                  "too low)")


def estimate_markdown(ctx: AppContext, values: dict) -> str:
    """The expected duration of the form's configuration on this machine, and how it computes."""
    try:
        config = form_to_config(values)
    except ConfigError:
        return "⏱️ Expected duration: fix the settings first."
    if ctx.manager.active_runs():
        return f"⏱️ Expected duration: {BUSY_MEASURING}."
    try:
        estimate = expected_duration(config, ctx.train_image_count(), measurements=ctx.manager.measurements)
    except (ValueError, RuntimeError) as exc:  # e.g. a device that is not here
        return f"⏱️ Expected duration: this configuration cannot be measured here: {exc}"
    return (f"⏱️ **Expected duration: {estimate.describe()}.** The first steps of the run refine it.\n\n"
            f"Computes in {estimate.compute.describe()}")


def budget_plan(ctx: AppContext, label: str) -> tuple[str, TrainConfig | None]:
    """The fast recipe sized to the budget named `label` on this machine, and a note about it."""
    if ctx.manager.active_runs():
        return f"A time budget is {BUSY_MEASURING}.", None
    plan = plan_for_budget(BUDGETS[label], PRESETS[BUDGET_BASE].config, ctx.train_image_count(),
                           measurements=ctx.manager.measurements)
    return (f"Fast recipe sized to {label.replace(' here', '')} on this machine: {plan.describe()}. "
            "Accuracy grows with the budget; see the presets for measured figures."), plan.config


def build(ctx: AppContext, owner: gr.BrowserState, demo: gr.Blocks) -> None:
    """Lay out the Train tab and wire its events (`demo` is the app, whose page load shows the
    first duration estimate)."""
    param_counts: dict[str, int] = {}  # filled on first view: counting resnet18 imports torchvision (~2 s)
    data_flag = ctx.data_settings.data

    def model_info(name: str) -> str:
        spec = MODELS.get(name)
        if spec is None:
            return ""
        if name not in param_counts:
            param_counts[name] = registered_parameter_count(name)
        return f"{spec.description} · **{param_counts[name]:,} parameters**"

    default = PRESETS["report_lenet"].config
    gr.Markdown(f"Training data: {ctx.data_settings.describe()}. Hardware (device *auto*): **{hardware_summary()}**.")
    with gr.Row():
        preset = gr.Dropdown([(p.title, p.name) for p in PRESETS.values()], value="report_lenet",
                             label="Preset", scale=2)
        budget = gr.Dropdown([("none", "")] + [(label, label) for label in BUDGETS], value="", scale=1,
                             label="…or a time budget", info="sizes the fast recipe to this machine",
                             elem_id="time-budget")
        preset_note = gr.Markdown(PRESETS["report_lenet"].report_finding, elem_id="preset-note")
    estimate_note = gr.Markdown("⏱️ Expected duration: measuring…", elem_id="train-estimate")
    with gr.Row():
        model = gr.Dropdown(list(MODELS), value=default.model, label="Model", scale=1)
        model_note = gr.Markdown(model_info(default.model))
    with gr.Row():
        optimizer = gr.Radio(list(OPTIMIZERS), value=default.optimizer, label="Optimizer")
        lr = gr.Number(default.lr, label="Learning rate", minimum=0)
        epochs = gr.Number(default.epochs, label="Epochs", precision=0, minimum=1)
        batch_size = gr.Number(default.batch_size, label="Batch size", precision=0, minimum=2)
    with gr.Row():
        schedule = gr.Dropdown(list(SCHEDULES), value=default.schedule, label="LR schedule")
        warmup = gr.Number(default.warmup_epochs, label="Warm-up epochs", minimum=0)
        smoothing = gr.Number(default.label_smoothing, label="Label smoothing", minimum=0, maximum=0.99)
        weight_decay = gr.Number(default.weight_decay, label="Weight decay", minimum=0)
    augment = gr.CheckboxGroup([(f"{k}: {v}", k) for k, v in AUGMENTATIONS.items()], value=list(default.augment),
                               label="Augmentation (on the training device, per image)")
    with gr.Accordion("More settings", open=False):
        with gr.Row():
            momentum = gr.Number(default.momentum, label="Momentum (sgd)", minimum=0, maximum=0.999)
            nesterov = gr.Checkbox(default.nesterov, label="Nesterov (sgd)")
            width = gr.Number(default.width, label="Width multiplier (fastnet)", minimum=0.05, maximum=8)
        with gr.Row():
            bias_lr_scale = gr.Number(default.bias_lr_scale, label="LR multiplier for biases and norm shifts",
                                      minimum=0)
            lr_start_fraction = gr.Number(default.lr_start_fraction, minimum=0, maximum=1,
                                          label="Warm-up starts at this fraction of the peak lr")
            lr_end_fraction = gr.Number(default.lr_end_fraction, minimum=0, maximum=1,
                                        label="Decay ends at this fraction of the peak lr")
        with gr.Row():
            lookahead = gr.Checkbox(default.lookahead, label="Lookahead weight averaging (every 5 steps)")
            stem_bias_epochs = gr.Number(default.stem_bias_epochs, precision=0, minimum=0,
                                         label="Train the whitening stem's bias for this many epochs (fastnet; 0 = all)")
        with gr.Row():
            low_res_epochs = gr.Number(default.low_res_epochs, precision=0, minimum=0,
                                       label="Low-res epochs: the first epochs train on shrunk images (fastnet, resnet18)")
            low_res_size = gr.Number(default.low_res_size, precision=0, minimum=8, maximum=32,
                                     label="Low-res image side (pixels)")
        with gr.Row():
            train_size = gr.Number(0, label="Training subset size (0 = all)", precision=0, minimum=0)
            val_size = gr.Number(default.val_size, label="Validation images", precision=0, minimum=0)
            seed = gr.Number(default.seed, label="Seed", precision=0, minimum=0)
        with gr.Row():
            device = gr.Dropdown(list(DEVICES), value=default.device, label="Device")
            precision = gr.Dropdown(list(PRECISIONS), value=default.precision, label="Precision")
            compile_step = gr.Checkbox(default.compile, label="torch.compile the training step "
                                                               "(about a minute to compile; no faster on a 2-core CPU)")
    with gr.Accordion("Config file and CLI", open=False):
        cli_box = gr.Code(cli_command(default, data_flag), language="shell", label="Equivalent CLI command")
        with gr.Row():
            save_config = gr.DownloadButton("Save config (JSON)")
            load_config = gr.UploadButton("Load config", file_types=[".json"])

    form = {"model": model, "width": width, "optimizer": optimizer, "lr": lr, "momentum": momentum,
            "nesterov": nesterov, "weight_decay": weight_decay, "epochs": epochs, "batch_size": batch_size,
            "schedule": schedule, "warmup_epochs": warmup, "lr_start_fraction": lr_start_fraction,
            "lr_end_fraction": lr_end_fraction, "label_smoothing": smoothing,
            "bias_lr_scale": bias_lr_scale, "lookahead": lookahead, "stem_bias_epochs": stem_bias_epochs,
            "low_res_epochs": low_res_epochs, "low_res_size": low_res_size, "augment": augment,
            "seed": seed, "device": device, "precision": precision, "compile": compile_step,
            "train_size": train_size, "val_size": val_size}
    fields = list(TrainConfig().to_dict())  # the API takes the inputs in the config's field order
    inputs = [form[f] for f in fields]

    def form_values(data: dict) -> dict:
        """Gradio passes a set of inputs as {component: value}; key it by config field instead."""
        return {name: data[component] for name, component in form.items()}

    with gr.Row():
        start_btn = gr.Button("Start training", variant="primary")
        stop_btn = gr.Button("Stop", variant="stop", interactive=False)
        download = gr.DownloadButton("Download checkpoint", interactive=False)
    status = gr.Markdown("No run yet. Pick a preset or set the form, then press **Start training**.",
                         elem_id="train-status")
    progress = gr.HTML("", elem_id="train-progress")
    with gr.Row():
        # Created empty: a LinePlot whose first value is an empty frame never draws its lines (Gradio 6.31).
        loss_plot = gr.LinePlot(x="epoch", y="loss", color="series",
                                label="Loss", x_title="epoch",
                                y_axis_format=".2f", elem_id="loss-plot")
        acc_plot = gr.LinePlot(x="epoch", y="accuracy", color="series",
                               label="Accuracy", x_title="epoch", y_lim=[0, 1],
                               y_axis_format=".0%", elem_id="acc-plot")
    log = gr.Textbox(label="Epoch log (the report's format)", lines=6, max_lines=20, autoscroll=True)
    run_id = gr.State(None)
    seen = gr.State(None)
    timer = gr.Timer(1.0)

    def apply_preset(name: str):
        p = PRESETS.get(name)
        if p is None:
            return [gr.skip()] * (len(inputs) + 2)
        return ["", p.report_finding, *config_to_form(p.config, fields)]

    preset.change(apply_preset, preset, [budget, preset_note, *inputs], show_progress="hidden")

    def apply_budget(label: str):
        if label not in BUDGETS:
            return [gr.skip()] * (len(inputs) + 2)
        note, config = budget_plan(ctx, label)
        if config is None:
            return [gr.skip(), note, *[gr.skip()] * len(inputs)]
        return [None, note, *config_to_form(config, fields)]

    budget.change(apply_budget, budget, [preset, preset_note, *inputs], show_progress="minimal",
                  api_name=False, concurrency_limit=1, concurrency_id="measure")
    gr.on([demo.load, *(c.change for c in inputs)], lambda data: estimate_markdown(ctx, form_values(data)),
          set(inputs), estimate_note, show_progress="hidden", api_name=False, trigger_mode="always_last",
          concurrency_limit=1, concurrency_id="measure")
    model.change(model_info, model, model_note, show_progress="hidden")

    def show_cli(data: dict):
        try:
            return cli_command(form_to_config(form_values(data)), data_flag)
        except ConfigError as exc:
            return f"# not a valid configuration: {exc}"

    gr.on([c.change for c in inputs], show_cli, set(inputs), cli_box, show_progress="hidden", queue=False)

    def save(data: dict):
        try:
            config = form_to_config(form_values(data))
        except ConfigError as exc:
            raise gr.Error(f"Fix the form first: {exc}")
        text = json.dumps(config.to_dict(), indent=2)
        CONFIG_DIR.mkdir(exist_ok=True)
        remove_older_than(CONFIG_DIR, ctx.cache_max_age_s)
        path = CONFIG_DIR / f"cifarapp-config-{config.model}-{hashlib.sha1(text.encode()).hexdigest()[:8]}.json"
        path.write_text(text)
        return str(path)

    save_config.click(save, set(inputs), save_config)

    def load(file):
        try:
            values = json.loads(Path(file).read_text())
            config = TrainConfig.from_dict(values).validate()
        except (OSError, ValueError) as exc:  # ConfigError is a ValueError
            raise gr.Error(f"That file is not a cifarapp config: {exc}")
        return config_to_form(config, fields)

    load_config.upload(load, load_config, inputs)

    def start(request: gr.Request, token, *values):
        who = owner_of(token, request)
        try:
            config = form_to_config(dict(zip(fields, values)))
            new_id = ctx.manager.start(config, who)
        except (ConfigError, BusyError, RunError) as exc:
            return gr.skip(), f"❌ **Not started.** {exc}"
        except (DataUnavailableError, OSError) as exc:
            return gr.skip(), f"❌ **Not started.** Could not load the training data: {exc}"
        return new_id, f"🟡 **starting** run `{new_id}`…"

    start_btn.click(start, [owner, *inputs], [run_id, status], api_name="start", concurrency_limit=4,
                    concurrency_id="train-control")

    def stop(token, current, request: gr.Request):
        who = owner_of(token, request)
        if current and ctx.manager.stop(current, who):
            return "⏹️ stopping at the next step…"
        return "Nothing of yours is running."

    stop_btn.click(stop, [owner, run_id], status, api_name="stop", concurrency_limit=4,
                   concurrency_id="train-control")

    def poll(token, current, last_seen, request: gr.Request):
        who = owner_of(token, request)
        current = current or ctx.manager.latest_run_of(who)
        if not current:
            return [gr.skip()] * 11
        try:
            snap = ctx.manager.snapshot(current, viewer=who)
        except RunError:
            return [gr.skip()] * 11
        key = [current, snap.version, snap.status, bool(snap.compute)]
        if key == last_seen:
            return [gr.skip()] * 11
        status_text = status_markdown(snap)
        if last_seen and last_seen[0] == current and last_seen[2:] == key[2:]:
            # same run, same state: leave the buttons alone (re-rendering them can swallow a click)
            buttons = [gr.skip()] * 3
            status_text = gr.skip()
        else:
            running = snap.ended is None and snap.status in ("running", "starting")
            ckpt = str(ctx.manager.run_dir(current).checkpoint) if snap.has_checkpoint and not running else None
            buttons = [gr.DownloadButton(value=ckpt, interactive=ckpt is not None),
                       gr.Button(interactive=not running), gr.Button(interactive=running)]
        return (current, key, charts.plot_update(charts.loss_frame(snap)),
                charts.plot_update(charts.accuracy_frame(snap)), progress_html(snap),
                status_text, snap.log, *buttons, snap.status)

    run_status = gr.Textbox(visible=False, elem_id="run-status-value")
    timer.tick(poll, [owner, run_id, seen],
               [run_id, seen, loss_plot, acc_plot, progress, status, log, download, start_btn, stop_btn, run_status],
               show_progress="hidden", api_name="poll", concurrency_limit=None)

