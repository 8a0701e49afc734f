"""UI helpers and handlers without a server: form <-> config, CLI command, status, plot data."""

import re
import shlex

import numpy as np
import pytest

from cifarapp import figures
from cifarapp.__main__ import build_parser, config_from_args
from cifarapp.config import ConfigError, TrainConfig, cli_command
from cifarapp.presets import PRESETS
from cifarapp.runs import RunSnapshot
from cifarapp.ui import charts
from cifarapp.ui.identity import owner_of
from cifarapp.ui.train_tab import config_to_form, form_to_config, progress_html, status_markdown

FIELDS = list(TrainConfig().to_dict())


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_fills_the_form_and_the_form_gives_back_the_preset(name):
    config = PRESETS[name].config
    values = dict(zip(FIELDS, config_to_form(config, FIELDS)))
    assert form_to_config(values) == config


@pytest.mark.parametrize("name", list(PRESETS))
def test_cli_command_parses_back_to_the_same_config(name):
    config = PRESETS[name].config
    argv = shlex.split(cli_command(config, None))[3:]  # drop "python -m cifarapp"
    args = build_parser().parse_args(argv)
    assert config_from_args(args) == config


def test_cli_numbers_become_the_setting_types():
    args = build_parser().parse_args(["train", "--preset", "fast_long", "--width", "1", "--epochs", "16",
                                      "--bias-lr-scale", "32", "--lr-end-fraction", "0"])
    config = config_from_args(args)
    assert (config.width, config.epochs, config.bias_lr_scale, config.lr_end_fraction) == (1.0, 16, 32.0, 0.0)
    assert isinstance(config.epochs, int) and isinstance(config.width, float)
    with pytest.raises(ConfigError, match="whole number"):
        config_from_args(build_parser().parse_args(["train", "--epochs", "2.5"]))
    with pytest.raises(ConfigError, match="must be a number"):
        config_from_args(build_parser().parse_args(["train", "--lr", "fast"]))


def test_subset_zero_means_all_and_bad_values_raise():
    values = dict(zip(FIELDS, config_to_form(TrainConfig(), FIELDS)))
    assert form_to_config({**values, "train_size": 0}).train_size is None
    with pytest.raises(ConfigError, match="learning rate"):
        form_to_config({**values, "lr": -1.0})
    with pytest.raises(ConfigError, match="whole number"):
        form_to_config({**values, "epochs": 2.5})


class FakeProfile:
    username = "ada"


def test_owner_is_the_logged_in_user_else_the_browser_token():
    assert owner_of("tok", FakeProfile()) == "hf:ada"
    assert owner_of("tok") == "tok"
    # a "token" that could pose as a logged-in user, a huge one, or none at all is no identity
    for bad in ("hf:ada", "x" * 500, "", None, ["tok"]):
        assert owner_of(bad) is None


def _snap(status="running", steps=None, epochs=None):
    return RunSnapshot("r1", "o", status, "the lr was too high" if status == "diverged" else "",
                       {"model": "lenet", "optimizer": "adam", "lr": 0.001, "epochs": 2},
                       steps or [], epochs or [], "", 3)


def test_status_and_progress_text():
    assert "running" in status_markdown(_snap())
    assert "the lr was too high" in status_markdown(_snap("diverged"))
    steps = [{"epoch": 1, "step": 5, "total_steps": 20, "loss": 2.0, "lr": 0.001, "images_per_s": 1000.0,
              "elapsed_s": 10.0}]
    html = progress_html(_snap(steps=steps))
    assert "epoch 1/2" in html and "step 5/20" in html and "1,000 img/s" in html
    assert "remaining 30s" in html and "value='0.2500'" in html
    assert "waiting" in progress_html(_snap())


def test_plot_frames():
    steps = [{"epoch": 1, "step": s, "total_steps": 20, "loss": 2.0 - s / 20, "lr": 0.001, "images_per_s": 1.0,
              "elapsed_s": float(s)} for s in range(1, 11)]
    epochs = [{"epoch": 1, "train_loss": 1.5, "train_acc": 0.4, "val_loss": 1.6, "val_acc": 0.45}]
    loss = charts.loss_frame(_snap(steps=steps, epochs=epochs))
    assert set(loss["series"]) == {"train (per step)", "train (smoothed)", "train (epoch)", "val (epoch)"}
    per_step = loss[loss["series"] == "train (per step)"]
    assert per_step["x"].tolist() == pytest.approx([s / 10 for s in range(1, 11)])  # 10 steps per epoch
    by_step = charts.loss_frame(_snap(steps=steps, epochs=epochs), x_axis="step")
    assert by_step[by_step["series"] == "train (per step)"]["x"].tolist() == list(range(1, 11))
    by_time = charts.loss_frame(_snap(steps=steps, epochs=epochs), x_axis="time", log_scale=True)
    timed = by_time[by_time["series"] == "train (per step)"]
    assert timed["x"].tolist() == [float(s) for s in range(1, 11)]
    assert timed["loss"].tolist() == pytest.approx([np.log10(2.0 - s / 20) for s in range(1, 11)])
    acc = charts.accuracy_frame(_snap(epochs=epochs))
    assert acc[acc["series"] == "val"]["accuracy"].tolist() == [0.45]
    assert charts.loss_frame(_snap()) is None and charts.accuracy_frame(_snap()) is None


def test_a_long_runs_curves_are_averaged_down_so_polls_stay_small():
    total = 20 * 1000  # 20 epochs of 1,000 reported steps each
    steps = [{"epoch": 1 + s // 1000, "step": s, "total_steps": total, "loss": 3.0 - s / total, "lr": 0.1,
              "images_per_s": 1.0, "elapsed_s": s / 10} for s in range(1, total + 1)]
    snap = _snap(steps=steps)
    snap.config = {**snap.config, "epochs": 20}
    frame = charts.loss_frame(snap)
    per_step = frame[frame["series"] == "train (per step)"]
    assert len(per_step) == charts.MAX_STEP_POINTS and len(frame) == 2 * charts.MAX_STEP_POINTS
    assert per_step["x"].iloc[0] < 0.1 and per_step["x"].iloc[-1] > 19.9  # the whole run, first to last
    assert per_step["loss"].mean() == pytest.approx(np.mean([s["loss"] for s in steps]), rel=1e-3)
    assert len(frame.to_json()) < 60_000


def test_config_differences_list_only_what_differs():
    a, b = _snap(), _snap()
    a.config, b.config = {"model": "lenet", "lr": 0.001, "augment": []}, {"model": "lenet", "lr": 0.01,
                                                                          "augment": ["flip"]}
    a.run_id, b.run_id = "run-a", "run-b"
    table = charts.config_differences([a, b])
    assert table.columns.tolist() == ["setting", "run-a", "run-b"]
    assert table.values.tolist() == [["lr", "0.001", "0.01"], ["augment", "none", "flip"]]


def test_confusion_figure_and_upscale():
    fig = figures.confusion_figure(np.array([[3, 1], [0, 4]]), ["a", "b"])
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == ["0", "1", "3", "4"]
    big = charts.upscale(np.arange(12, dtype=np.uint8).reshape(2, 2, 3), 3)
    assert big.shape == (6, 6, 3) and (big[:3, :3] == big[0, 0]).all()


def test_old_saved_configs_are_removed_and_recent_ones_kept(tmp_path):
    import os
    import time

    from cifarapp.ui.widgets import remove_older_than

    old, recent = tmp_path / "old.json", tmp_path / "recent.json"
    old.write_text("{}")
    recent.write_text("{}")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    remove_older_than(tmp_path, 3600)
    assert not old.exists() and recent.exists()


def test_the_clickable_confusion_table_stays_square_when_names_share_a_prefix():
    import types

    from cifarapp.ui.evaluate_tab import confusion_table

    result = types.SimpleNamespace(classes=("class_one_a", "class_one_b", "c"), confusion=np.arange(9).reshape(3, 3))
    table = confusion_table(result)
    assert table.shape == (3, 4) and table.iloc[:, 1:].to_numpy().tolist() == result.confusion.tolist()


def test_a_time_budget_refuses_several_processes(capsys):
    from cifarapp.__main__ import main

    assert main(["train", "--budget", "60", "--nproc", "2", "--data", "synthetic"]) == 2
    assert "--budget plans for one process" in capsys.readouterr().err


def test_a_comparison_keeps_its_first_evaluation_and_not_its_second(tmp_path):
    from cifarapp.sources import DataSource
    from cifarapp.ui.context import AppContext, EvaluationCache
    from cifarapp.ui.evaluate_tab import comparison, run_evaluation

    ctx = AppContext.create(tmp_path / "runs", DataSource("synthetic"))
    ctx.evaluations = EvaluationCache(size=1)  # room for one: keeping the second model's would drop the first
    first, recorded = run_evaluation(ctx, "shipped:lenet", "none", None)
    assert not recorded and ctx.evaluations.get(first.token) is first
    table, summary, gallery = comparison(ctx, first.token, "shipped:lenet_bn", None)
    assert list(table.columns) == ["class", "lenet", "lenet_bn", "difference"]
    assert np.allclose(table["difference"], table["lenet_bn"] - table["lenet"], atol=1e-3)
    counts = [int(n.replace(",", "")) for n in
              re.findall(r"(?:Both right|only \w+ right|both wrong) ([\d,]+)", summary)]
    assert len(counts) == 4 and sum(counts) == first.result.n_images
    assert ctx.evaluations.get(first.token) is first, "the drill-down still finds the first evaluation"
