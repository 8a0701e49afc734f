"""Train tab: the form (one widget per setting of config.py), presets and time budgets,
Start/Stop, and live plots polled from the run manager.

The handlers are module-level functions of the app context and plain values, testable without
a server; `build` lays out the widgets and wires events to thin wrappers around them.
"""

from __future__ import annotations

import contextlib
import json
import shutil

import gradio as gr

from .. import figures
from ..config import ConfigError, TrainConfig, cli_command, settings
from ..data import AUGMENTATIONS, DataUnavailableError
from ..distributed import available_processes, machine_summary
from ..estimate import BUDGETS, format_duration, plan_for_budget, remaining_seconds
from ..files import atomic_write_text
from ..imagesets import ImageSetError
from ..limits import RateLimited
from ..lr_finder import DEFAULT_STEPS, find_lr
from ..manager import BusyError
from ..models import MODELS, registered_parameter_count
from ..presets import BUDGET_BASE, PRESETS
from ..runs import RunError, RunSnapshot, owner_key, starting_weights
from ..train import TrainingError
from ..weights import shipped_models
from . import charts, data_panel
from .context import AppContext, hardware_summary
from .guard import cut, guarded, one_of, plain_error, text_value
from .identity import client_address, new_owner_token, owner_of
from .widgets import download_path, uploaded_file

STATUS_ICONS = {"running": "🟢", "starting": "🟡", "finished": "✅", "stopped": "⏹️", "diverged": "⚠️",
                "failed": "❌", "interrupted": "⏸️"}
CONFIG_FOLDER = "cifarapp-configs"  # temporary folders of files made for download (see widgets.download_path)
DOWNLOAD_FOLDER = "cifarapp-downloads"
MAX_CONFIG_BYTES = 64 * 1024
FIELDS = [f.name for f, _ in settings()]  # the API takes the form's values in this order
# what presets and time budgets set: everything but the data and the starting weights
RECIPE_FIELDS = [f for f in FIELDS if f not in ("dataset", "init_from", "freeze_epochs", "nproc", "sync_bn")]
# where each setting sits: the main form, then "More settings" (the data set is the Data panel's,
# the model has its own row)
MAIN_ROWS = (("optimizer", "lr", "epochs", "batch_size"),
             ("schedule", "warmup_epochs", "label_smoothing", "weight_decay"), ("init_from", "freeze_epochs"),
             ("augment",))
MORE_ROWS = (("momentum", "nesterov", "width"), ("bias_lr_scale", "lr_start_fraction", "lr_end_fraction"),
             ("lookahead", "stem_bias_epochs", "class_weighted"), ("low_res_epochs", "low_res_size"),
             ("patience", "monitor", "keep_best"), ("train_size", "val_size", "seed"),
             ("device", "precision", "compile"), ("nproc", "sync_bn"))
CHOICE_NOTES = {"augment": AUGMENTATIONS}
# what the poll handler updates, in the order of its outputs
POLL_OUTPUTS = ("run_id", "seen", "loss_plot", "acc_plot", "progress", "status", "log", "download", "start", "stop",
                "run_status")
# the range test's length the Train tab offers
MIN_LR_STEPS, MAX_LR_STEPS = 30, 300
BUSY_MEASURING = ("measured when no run is training here (measuring now would slow the run down and read "
                  "too low)")


def form_to_config(values: dict) -> TrainConfig:
    """Form values by field name -> a validated TrainConfig; ConfigError lists what is wrong."""
    d = dict(values)
    if d.get("train_size") in (0, None, ""):
        d["train_size"] = None
    d["augment"] = list(d.get("augment") or []) if isinstance(d.get("augment"), (list, tuple, type(None))) \
        else d["augment"]
    return TrainConfig.from_dict(d).validate()


def config_to_form(config: TrainConfig, fields: list[str] = FIELDS) -> list:
    d = config.to_dict()
    d["train_size"] = d["train_size"] or 0
    return [d[f] for f in fields]


def status_markdown(snap: RunSnapshot) -> str:
    icon = STATUS_ICONS.get(snap.status, "•")
    cfg = snap.config
    head = (f"{icon} **{snap.status}** · run `{snap.run_id}` · {cfg.get('model')} · "
            f"{cfg.get('optimizer')} lr {cfg.get('lr')}")
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


def model_info(name) -> str:
    spec = MODELS.get(name) if isinstance(name, str) else None
    if spec is None:
        return ""
    return f"{spec.description} · **{registered_parameter_count(name):,} parameters**"


def start_from_choices(ctx: AppContext) -> list[tuple[str, str]]:
    """What a run can start from: random weights, a shipped model, or a run with a checkpoint."""
    choices = [("random initial weights", "")]
    choices += [(f"shipped {m.name} ({len(m.card.get('classes', [])) or 10} classes)", m.name)
                for m in shipped_models()]
    choices += [(f"run {run.run_id} ({run.dataset}, {run.status})", run.run_id) for run in ctx.manager.list_runs()
                if ctx.manager.run_dir(run.run_id).checkpoint.is_file()]
    return choices


def rules_markdown(ctx: AppContext) -> str:
    """The app's rules for runs, as the Train tab states them."""
    manager, limits = ctx.manager, ctx.manager.rules
    rules = [f"At most {manager.max_active} run(s) train at once."]
    if limits.abandon_after_s is None:
        rules.append("A run goes on when you close this tab; come back to it with the same browser.")
    else:
        rules.append(f"A run whose page has been closed for {format_duration(limits.abandon_after_s)} is stopped; "
                     "its checkpoint is kept.")
    if limits.max_run_s is not None:
        rules.append(f"Runs stop after {format_duration(limits.max_run_s)} of training (resumable).")
    return " ".join(rules)


def estimate_markdown(ctx: AppContext, values: dict) -> str:
    """The expected duration of the form's configuration on this machine, and how it computes."""
    try:
        config = form_to_config(values)
    except ConfigError:
        return "⏱️ Expected duration: fix the settings first."
    if ctx.manager.active_runs():
        return f"⏱️ Expected duration: {BUSY_MEASURING}."
    try:
        estimate = ctx.estimate(config)
    except ImageSetError as exc:
        return f"⏱️ Expected duration: the data set cannot be used: {cut(str(exc), 200)}"
    except (ValueError, RuntimeError) as exc:  # e.g. a device that is not here
        return f"⏱️ Expected duration: this configuration cannot be measured here: {cut(str(exc), 200)}"
    limit = ctx.manager.rules.max_run_s
    over = (f" This app stops runs after {format_duration(limit)}." if limit is not None and estimate.seconds > limit
            else "")
    processes = (f" That is measured for one process: with {config.nproc}, each trains a share of every batch, so "
                 "expect it faster on as many GPUs and no faster on one machine's CPU cores (they share them); the "
                 "run's own steps tell." if config.nproc > 1 else "")
    return (f"⏱️ **Expected duration: {estimate.describe()}.** The first steps of the run refine it.{processes}"
            f"{over}\n\nComputes in {estimate.compute.describe()}")


def budget_plan(ctx: AppContext, label: str, dataset: str = "") -> tuple[str, TrainConfig | None]:
    """The fast recipe sized to the budget named `label` on this machine, and a note about it."""
    if ctx.manager.active_runs():
        return f"A time budget is {BUSY_MEASURING}.", None
    try:
        count = ctx.train_image_count(dataset)
    except ImageSetError as exc:
        return f"A time budget needs a usable data set: {cut(str(exc), 200)}", None
    plan = plan_for_budget(BUDGETS[label], PRESETS[BUDGET_BASE].config, count, measurements=ctx.manager.measurements)
    return (f"Fast recipe sized to {label.replace(' here', '')} on this machine: {plan.describe()}. "
            "Accuracy grows with the budget; see the presets for measured figures."), plan.config


def cli_text(values: dict, data_flag: str | None) -> str:
    try:
        return cli_command(form_to_config(values), data_flag)
    except ConfigError as exc:
        return f"# not a valid configuration: {exc}"


def save_config_file(ctx: AppContext, values: dict) -> str:
    """The form as a JSON config file to download (a fresh file in the temp folder)."""
    try:
        config = form_to_config(values)
    except ConfigError as exc:
        raise plain_error(f"Fix the form first: {exc}") from None
    text = json.dumps(config.to_dict(), indent=2)
    path = download_path(ctx, CONFIG_FOLDER, f"cifarapp-config-{config.model}.json")
    atomic_write_text(path, text)
    return str(path)


def load_config_file(ctx: AppContext, file, request: gr.Request | None) -> list:
    """The form values of an uploaded config file (at most MAX_CONFIG_BYTES of JSON)."""
    try:
        ctx.limits.uploads.check(client_address(request))
    except RateLimited as exc:
        raise plain_error(str(exc)) from None
    path = uploaded_file(file)
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise plain_error(f"That file is not a cifarapp config: larger than {MAX_CONFIG_BYTES // 1024} KB.")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        config = TrainConfig.from_dict(values).validate()
    except (OSError, ValueError, RecursionError) as exc:  # ConfigError and JSON errors are ValueErrors
        raise plain_error(f"That file is not a cifarapp config: {cut(str(exc), 300)}") from None
    return config_to_form(config)


def start_run(ctx: AppContext, token, values: dict, request: gr.Request | None,
              profile: gr.OAuthProfile | None = None) -> tuple:
    """Start a run of the form's configuration for the caller: (run id, status text, what the poll
    has seen), each gr.skip() where it stays as it was. A started run makes the next poll draw its
    state afresh, since a poll may have drawn it before this answer arrives. A caller with no
    identity gets a fresh owner token, given back in the status text."""
    identity = owner_of(token, profile)
    fresh = None if identity is not None else new_owner_token()
    identity = identity or fresh
    address = client_address(request)
    try:
        config = form_to_config(values)
        ctx.limits.runs.check(identity, count=False)
        ctx.limits.runs_per_address.check(address, count=False)
        new_id = ctx.manager.start(config, identity)
        ctx.limits.runs.check(identity)
        ctx.limits.runs_per_address.check(address)
    except (ConfigError, BusyError, RunError, RateLimited, ImageSetError, TrainingError) as exc:
        return gr.skip(), f"❌ **Not started.** {exc}", gr.skip()
    except (DataUnavailableError, OSError) as exc:
        return gr.skip(), f"❌ **Not started.** Could not load the training data: {cut(str(exc), 300)}", gr.skip()
    note = f"\n\nNo owner was given; this run's owner token (send it to stop or delete the run): `{fresh}`" \
        if fresh else ""
    return new_id, f"🟡 **starting** run `{new_id}`…{note}", None


def stop_run(ctx: AppContext, token, current, request: gr.Request | None,
             profile: gr.OAuthProfile | None = None) -> tuple:
    """Ask the caller's current run to stop: (status text, what the poll has seen). A stop makes
    the next poll draw the run's state afresh (a poll may already have drawn "stopped")."""
    identity = owner_of(token, profile)
    current = text_value(current, "run id", optional=True)
    if identity and current and ctx.manager.stop(current, identity):
        return "⏹️ stopping at the next step…", None
    return "Nothing of yours is running.", gr.skip()


def checkpoint_copy(ctx: AppContext, run_id: str, identity: str | None) -> str | None:
    """A copy of the run's checkpoint for its owner to download (None for anyone else, or when
    there is none). The copy, not the run's file, is what Gradio serves."""
    if not ctx.manager.owns(run_id, identity):
        return None
    source = ctx.manager.run_dir(run_id).checkpoint
    target = download_path(ctx, DOWNLOAD_FOLDER, f"{run_id}-checkpoint.pt")
    try:
        shutil.copyfile(source, target)
    except OSError:
        return None
    return str(target)


def poll_run(ctx: AppContext, token, current, last_seen, request: gr.Request | None,
             profile: gr.OAuthProfile | None = None, x_axis="epoch", log_scale=False) -> dict:
    """What changed in the caller's run since `last_seen`, by POLL_OUTPUTS name (missing: unchanged);
    the curves against `x_axis` (charts.X_AXES), the loss in log10 with `log_scale`."""
    x_axis = x_axis if x_axis in charts.X_AXES else "epoch"
    log_scale = log_scale is True
    identity = owner_of(token, profile)
    if identity is None:
        return {}
    try:
        ctx.limits.polls.check(identity)
    except RateLimited as exc:  # say so, and show everything afresh on the next poll
        return {"seen": None, "status": f"⚠️ {exc}"}
    current = text_value(current, "run id", optional=True) or ctx.manager.latest_run_of(identity)
    if not current:
        return {}
    try:
        snap = ctx.manager.snapshot(current, viewer=identity)
    except RunError:
        return {}
    key = [current, snap.version, snap.status, bool(snap.compute), x_axis, log_scale]
    if key == last_seen:
        return {}
    out = {"run_id": current, "seen": key, "progress": progress_html(snap), "log": snap.log, "run_status": snap.status}
    for name, frame in (("loss_plot", charts.loss_frame(snap, x_axis, log_scale)),
                        ("acc_plot", charts.accuracy_frame(snap, x_axis))):
        if frame is not None:  # a LinePlot once given an empty frame never draws lines (Gradio 6.31)
            out[name] = frame
    if not (isinstance(last_seen, list) and last_seen[:1] == [current] and last_seen[2:4] == key[2:4]):
        # the run or its state changed: re-render status and buttons (only then: re-rendering
        # the buttons on every poll can swallow a click)
        running = snap.ended is None and snap.status in ("running", "starting")
        ckpt = checkpoint_copy(ctx, current, identity) if snap.has_checkpoint and not running else None
        out.update(status=status_markdown(snap), download=gr.DownloadButton(value=ckpt, interactive=ckpt is not None),
                   start=gr.Button(interactive=not running), stop=gr.Button(interactive=running))
    return out


def lr_range_test(ctx: AppContext, token, values: dict, steps, profile: gr.OAuthProfile | None = None,
                  progress=None) -> tuple:
    """Run the learning-rate range test for the form's training (holding a trainer slot, so no
    run trains meanwhile): (plot, what it found, the suggested lr or None)."""
    identity = owner_of(token, profile)
    if identity is None:
        raise plain_error("Reload the page: this browser has no identity yet.")
    try:
        config = form_to_config(values)
        steps = int(steps) if isinstance(steps, (int, float)) and not isinstance(steps, bool) else DEFAULT_STEPS
        if not MIN_LR_STEPS <= steps <= MAX_LR_STEPS:
            raise plain_error(f"The range test takes between {MIN_LR_STEPS} and {MAX_LR_STEPS} steps.")
        data = ctx.manager.training_data(config.dataset, owner_key(identity))
        ctx.limits.runs.check(identity, count=False)  # it trains as a run does, so it counts as one
        with ctx.manager.trainer_slot("an LR range test"):
            ctx.limits.runs.check(identity)
            result = find_lr(config, data, steps=steps, measurements=ctx.manager.measurements,
                             init_weights=starting_weights(config, ctx.manager.store.root),
                             progress=None if progress is None else
                             lambda done, total: progress(done / total, desc=f"LR range test: step {done}/{total}"))
    except (ConfigError, BusyError, RunError, RateLimited, TrainingError, ImageSetError, ValueError) as exc:
        raise plain_error(f"The range test did not run: {exc}") from None
    except (DataUnavailableError, OSError) as exc:
        raise plain_error(f"Could not load the training data: {cut(str(exc), 300)}") from None
    if result.suggestion is None:
        text = f"⚠️ {result.describe()}. Try a lower first lr or another optimizer."
    else:
        text = (f"**Suggested learning rate: {result.suggestion:.3g}** (where the smoothed loss falls fastest; "
                f"the loss is lowest at {result.minimum_lr:.3g} and {result.stopped_because}). The range test "
                f"trained a copy for {len(result.lrs)} steps in {format_duration(result.seconds)}; the form's model "
                "is untouched.")
    return figures.lr_finder_figure(result), text, result.suggestion


def use_suggested_lr(suggestion) -> float:
    """The form's new learning rate: the range test's suggestion (rounded to 2 significant digits)."""
    if not isinstance(suggestion, (int, float)) or isinstance(suggestion, bool) or not 0 < suggestion < 100:
        raise plain_error("Run the range test first: it has no suggestion yet.")
    return float(f"{suggestion:.2g}")


def replot(ctx: AppContext, token, current, x_axis, log_scale, profile: gr.OAuthProfile | None = None) -> tuple:
    """Both plots of the caller's run drawn again against another x-axis or loss scale."""
    x_axis = one_of(x_axis, charts.X_AXES, "x-axis")
    log_scale = bool(log_scale)
    x_title, y_title = charts.axis_title(x_axis, log_scale)
    identity = owner_of(token, profile)
    current = text_value(current, "run id", optional=True) or (identity and ctx.manager.latest_run_of(identity))
    snap = None
    if current:
        with contextlib.suppress(RunError):
            snap = ctx.manager.snapshot(current)
    loss = charts.loss_frame(snap, x_axis, log_scale) if snap is not None else None
    accuracy = charts.accuracy_frame(snap, x_axis) if snap is not None else None
    return (gr.LinePlot(value=loss, x_title=x_title, y_title=y_title, y_axis_format=".2f") if loss is not None
            else gr.LinePlot(x_title=x_title, y_title=y_title),
            gr.LinePlot(value=accuracy, x_title=x_title) if accuracy is not None else gr.LinePlot(x_title=x_title))


def apply_preset(name) -> list:
    """[budget, preset note, *recipe values] for a preset (skips for an unknown one)."""
    preset = PRESETS.get(name) if isinstance(name, str) else None
    if preset is None:
        return [gr.skip()] * (len(RECIPE_FIELDS) + 2)
    return ["", preset.report_finding, *config_to_form(preset.config, RECIPE_FIELDS)]


def apply_budget(ctx: AppContext, label, dataset="") -> list:
    """[preset, note, *recipe values] for a time budget on the chosen data set (skips for none)."""
    if not isinstance(label, str) or label not in BUDGETS:
        return [gr.skip()] * (len(RECIPE_FIELDS) + 2)
    note, config = budget_plan(ctx, label, dataset if isinstance(dataset, str) else "")
    if config is None:
        return [gr.skip(), note, *[gr.skip()] * len(RECIPE_FIELDS)]
    return [None, note, *config_to_form(config, RECIPE_FIELDS)]


def _widget(name: str, spec, default):
    """The input component of one setting, with the setting's label, help and bounds."""
    info = None if spec.help.lower() in spec.label.lower() else spec.help  # no help that repeats the label
    if name == "nproc":  # what this machine has to offer; a loaded config may ask for more (Start then says so)
        return gr.Dropdown(available_processes(), value=default, label=spec.label, allow_custom_value=True,
                           info=f"this machine: {machine_summary()}; {spec.help}", elem_id="setting-nproc")
    if isinstance(default, bool):
        return gr.Checkbox(default, label=spec.label, info=info)
    if isinstance(default, tuple):
        notes = CHOICE_NOTES.get(name, {})
        return gr.CheckboxGroup([(f"{c}: {notes[c]}" if c in notes else c, c) for c in spec.choices],
                                value=list(default), label=spec.label)
    if spec.choices:
        return gr.Dropdown(list(spec.choices), value=default, label=spec.label, info=info)
    if isinstance(default, str):  # a name from a list that grows (start from: shipped models and runs)
        return gr.Dropdown([("random initial weights", default)], value=default, label=spec.label, info=info,
                           allow_custom_value=True, elem_id=f"setting-{name}")
    whole = name in {f.name for f, _ in settings() if str(f.type).startswith("int")}
    low = 0 if name == "train_size" else spec.low  # the form's 0 means "all images"
    return gr.Number(0 if default is None else default, label=spec.label, info=info, precision=0 if whole else None,
                  minimum=low, maximum=spec.high)


def build(ctx: AppContext, owner: gr.BrowserState, demo: gr.Blocks) -> None:
    """Lay out the Train tab and wire its events (`demo` is the app, whose page load shows the
    first duration estimate)."""
    data_flag = ctx.data_source.data
    specs = dict((f.name, spec) for f, spec in settings())
    default = PRESETS["report_lenet"].config
    dataset = data_panel.build(ctx, owner, demo)
    gr.Markdown(f"Hardware (device *auto*): **{hardware_summary()}**.")
    with gr.Row():
        preset = gr.Dropdown([(p.title, p.name) for p in PRESETS.values()], value="report_lenet", label="Preset",
                             scale=2)
        budget = gr.Dropdown([("none", "")] + [(label, label) for label in BUDGETS], value="", scale=1,
                             label="…or a time budget", info="sizes the fast recipe to this machine",
                             elem_id="time-budget")
        preset_note = gr.Markdown(PRESETS["report_lenet"].report_finding, elem_id="preset-note")
    estimate_note = gr.Markdown("⏱️ Expected duration: measuring…", elem_id="train-estimate")
    form: dict[str, gr.components.Component] = {"dataset": dataset}
    with gr.Row():
        form["model"] = gr.Dropdown(list(MODELS), value=default.model, label=specs["model"].label, scale=1,
                                    elem_id="train-model")
        model_note = gr.Markdown(model_info(default.model))
    for row in MAIN_ROWS:
        with gr.Row():
            for name in row:
                form[name] = _widget(name, specs[name], getattr(default, name))
    with gr.Accordion("More settings", open=False):
        for row in MORE_ROWS:
            with gr.Row():
                for name in row:
                    form[name] = _widget(name, specs[name], getattr(default, name))
    with gr.Accordion("Config file and CLI", open=False):
        cli_box = gr.Code(cli_command(default, data_flag), language="shell", label="Equivalent CLI command")
        with gr.Row():
            save_config = gr.DownloadButton("Save config (JSON)")
            load_config = gr.UploadButton("Load config", file_types=[".json"])
    assert set(form) == set(FIELDS), "every setting has a widget"
    demo.load(lambda: gr.update(choices=start_from_choices(ctx)), None, form["init_from"], api_name=False,
              queue=False)
    inputs = [form[f] for f in FIELDS]

    def form_values(data: dict) -> dict:
        """Gradio passes a set of inputs as {component: value}; key it by setting instead."""
        return {name: data[component] for name, component in form.items()}

    with gr.Accordion("Find a learning rate (range test)", open=False):
        gr.Markdown("Trains a copy of the form's model for a few steps while the learning rate grows exponentially "
                    "from 1e-7 to 10, and suggests the rate where the loss falls fastest (Smith 2017; fastai's "
                    "lr_find). Nothing of the form's run is changed; no run trains meanwhile.")
        with gr.Row():
            lr_steps = gr.Slider(MIN_LR_STEPS, MAX_LR_STEPS, value=DEFAULT_STEPS, step=10, label="Steps", scale=2)
            lr_run = gr.Button("Run the range test", scale=1, elem_id="lr-find")
            lr_use = gr.Button("Use the suggested learning rate", scale=1, interactive=False, elem_id="lr-use")
        lr_plot = gr.Plot(label="Loss against learning rate", elem_id="lr-plot")
        lr_note = gr.Markdown("", elem_id="lr-note")
    lr_suggestion = gr.State(None)
    with gr.Row():
        start_btn = gr.Button("Start training", variant="primary")
        stop_btn = gr.Button("Stop", variant="stop", interactive=False)
        download = gr.DownloadButton("Download checkpoint", interactive=False)
    gr.Markdown(rules_markdown(ctx), elem_id="train-rules")
    status = gr.Markdown("No run yet. Pick a preset or set the form, then press **Start training**.",
                         elem_id="train-status")
    progress = gr.HTML("", elem_id="train-progress")
    with gr.Row():
        x_axis = gr.Radio([(title, key) for key, title in charts.X_AXES.items()], value="epoch", label="x-axis",
                          scale=2, elem_id="plot-x-axis")
        log_scale = gr.Checkbox(False, label="Log-scale loss", scale=1, elem_id="plot-log-scale")
    with gr.Row():
        # Created empty: a LinePlot whose first value is an empty frame never draws its lines (Gradio 6.31).
        loss_plot = gr.LinePlot(x="x", y="loss", color="series", label="Loss", x_title="epoch", y_title="loss",
                                x_axis_format=".2~f", y_axis_format=".2f", elem_id="loss-plot")
        acc_plot = gr.LinePlot(x="x", y="accuracy", color="series", label="Accuracy", x_title="epoch",
                               x_axis_format=".2~f", y_lim=[0, 1], y_axis_format=".0%", elem_id="acc-plot")
    log = gr.Textbox(label="Epoch log (the report's format)", lines=6, max_lines=20, autoscroll=True)
    run_id = gr.State(None)
    seen = gr.State(None)
    run_status = gr.Textbox(visible=False, elem_id="run-status-value")
    timer = gr.Timer(1.0)
    poll_targets = dict(run_id=run_id, seen=seen, loss_plot=loss_plot, acc_plot=acc_plot, progress=progress,
                        status=status, log=log, download=download, start=start_btn, stop=stop_btn,
                        run_status=run_status)

    recipe = [form[f] for f in RECIPE_FIELDS]
    preset.change(guarded(apply_preset), preset, [budget, preset_note, *recipe], show_progress="hidden",
                  api_name="apply_preset")
    budget.change(guarded(lambda label, data_set: apply_budget(ctx, label, data_set)), [budget, dataset],
                  [preset, preset_note, *recipe],
                  show_progress="minimal", api_name=False, concurrency_limit=1, concurrency_id="measure")
    gr.on([demo.load, *(c.change for c in inputs)], guarded(lambda data: estimate_markdown(ctx, form_values(data))),
          set(inputs), estimate_note, show_progress="hidden", api_name=False, trigger_mode="always_last",
          concurrency_limit=1, concurrency_id="measure")
    form["model"].change(guarded(model_info), form["model"], model_note, show_progress="hidden", api_name="model_info")
    gr.on([c.change for c in inputs], guarded(lambda data: cli_text(form_values(data), data_flag)), set(inputs),
          cli_box, show_progress="hidden", queue=False, api_name="show_cli")
    save_config.click(guarded(lambda data: save_config_file(ctx, form_values(data))), set(inputs), save_config,
                      api_name="save_config")

    @guarded
    def on_load_config(file, request: gr.Request):
        return load_config_file(ctx, file, request)

    load_config.upload(on_load_config, load_config, inputs, api_name="load_config")

    @guarded
    def on_start(request: gr.Request, profile: gr.OAuthProfile | None, token, *form_values_in_order):
        return start_run(ctx, token, dict(zip(FIELDS, form_values_in_order)), request, profile)

    start_btn.click(on_start, [owner, *inputs], [run_id, status, seen], api_name="start", concurrency_limit=4,
                    concurrency_id="train-control")

    @guarded
    def on_stop(token, current, request: gr.Request, profile: gr.OAuthProfile | None = None):
        return stop_run(ctx, token, current, request, profile)

    stop_btn.click(on_stop, [owner, run_id], [status, seen], api_name="stop", concurrency_limit=4,
                   concurrency_id="train-control")

    @guarded
    def on_poll(token, current, last_seen, axis, log, request: gr.Request, profile: gr.OAuthProfile | None = None):
        changed = poll_run(ctx, token, current, last_seen, request, profile, axis, log)
        return [changed.get(name, gr.skip()) for name in POLL_OUTPUTS]

    timer.tick(on_poll, [owner, run_id, seen, x_axis, log_scale], [poll_targets[name] for name in POLL_OUTPUTS],
               show_progress="hidden", api_name="poll", concurrency_limit=None)

    @guarded
    def on_replot(token, current, axis, log, profile: gr.OAuthProfile | None = None):
        return replot(ctx, token, current, axis, log, profile)

    gr.on([x_axis.change, log_scale.change], on_replot, [owner, run_id, x_axis, log_scale], [loss_plot, acc_plot],
          show_progress="hidden", api_name=False, concurrency_limit=4, concurrency_id="train-control")

    @guarded
    def on_lr_find(data, profile: gr.OAuthProfile | None = None, progress=gr.Progress()):
        progress(0, desc="LR range test")
        figure, text, suggestion = lr_range_test(ctx, data[owner], form_values(data), data[lr_steps], profile,
                                                 progress)
        return figure, text, suggestion, gr.Button(interactive=suggestion is not None)

    lr_run.click(on_lr_find, {owner, lr_steps, *inputs}, [lr_plot, lr_note, lr_suggestion, lr_use],
                 api_name=False, concurrency_limit=1, concurrency_id="measure")
    lr_use.click(guarded(use_suggested_lr), lr_suggestion, form["lr"], api_name=False, queue=False)
