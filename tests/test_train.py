import math
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from cifarapp import checkpoints
from cifarapp.config import ConfigError, TrainConfig
from cifarapp.models import build_model
from cifarapp.predict import predict_pixels
from cifarapp.presets import PRESETS
from cifarapp.train import (
    EpochEvent,
    Lookahead,
    StepEvent,
    TrainingError,
    fit,
    group_lr_scales,
    lr_factor,
    make_optimizer,
)

QUICK = dict(model="lenet", epochs=3, batch_size=64, val_size=200, lr=0.002)


def test_short_run_learns_well_above_chance(small_data):
    events = []
    result = fit(TrainConfig(**QUICK), small_data, on_event=events.append)
    assert result.status == "finished"
    epochs = [e for e in events if isinstance(e, EpochEvent)]
    assert [e.epoch for e in epochs] == [1, 2, 3]
    assert epochs[-1].val_acc > 0.6  # chance is 0.1
    assert epochs[-1].train_loss < epochs[0].train_loss
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert steps[-1].step == steps[-1].total_steps == 3 * math.ceil(1800 / 64)
    assert all(s.images_per_s > 0 and s.lr == pytest.approx(0.002) for s in steps)
    assert "Epoch [3/3], train_loss:" in epochs[-1].report_line(3)


def test_same_seed_gives_the_same_numbers_on_cpu(small_data, fixed_layout):
    cfg = TrainConfig(**{**QUICK, "epochs": 1, "augment": ("crop", "flip", "cutout")})
    a, b = [], []
    fit(cfg, small_data, on_event=a.append, measurements=fixed_layout)
    fit(cfg, small_data, on_event=b.append, measurements=fixed_layout)
    assert [e.loss for e in a if e.kind == "step"] == [e.loss for e in b if e.kind == "step"]
    assert a[-1].val_acc == b[-1].val_acc


def test_stop_mid_run_keeps_a_usable_model(small_data, tmp_path):
    stop = threading.Event()

    def on_event(event):
        if isinstance(event, StepEvent) and event.step >= 10:
            stop.set()

    ckpt = tmp_path / "c.pt"
    result = fit(TrainConfig(**QUICK), small_data, on_event=on_event, stop=stop, checkpoint_path=ckpt)
    assert result.status == "stopped" and result.epochs_done == 0
    loaded = checkpoints.load_model(ckpt)
    probs = predict_pixels(loaded, small_data.test_images[:8].permute(0, 2, 3, 1).numpy())
    assert probs.shape == (8, 10) and np.allclose(probs.sum(1), 1, atol=1e-3)


@pytest.mark.parametrize("optimizer,lr", [("sgd", 50.0), ("adam", 1.0)])
def test_absurd_learning_rate_ends_as_diverged(small_data, tmp_path, optimizer, lr):
    ckpt = tmp_path / "c.pt"
    result = fit(TrainConfig(**{**QUICK, "optimizer": optimizer, "lr": lr}), small_data, checkpoint_path=ckpt)
    assert result.status == "diverged"
    assert "learning rate" in result.message and "too high" in result.message
    assert not ckpt.exists(), "a diverged epoch must not overwrite the last good checkpoint"


@pytest.mark.slow
def test_checkpoint_round_trip_gives_identical_predictions(small_data, tmp_path):
    ckpt = tmp_path / "c.pt"
    result = fit(TrainConfig(**{**QUICK, "epochs": 1, "model": "lenet_bn"}), small_data, checkpoint_path=ckpt)
    pixels = small_data.test_images[:50].permute(0, 2, 3, 1).numpy()
    loaded = checkpoints.load_model(ckpt)
    model = result.model.cpu().to(memory_format=loaded.compute.memory_format)
    direct = checkpoints.LoadedModel(model, "lenet_bn", small_data.classes, loaded.normalization, {}, loaded.compute)
    assert np.array_equal(predict_pixels(loaded, pixels), predict_pixels(direct, pixels))
    assert loaded.classes == small_data.classes
    assert loaded.meta["config"]["model"] == "lenet_bn"
    assert len(loaded.meta["metrics"]) == 1 and "val_acc" in loaded.meta["metrics"][0]


@pytest.mark.parametrize("extra", [{}, {"lookahead": True, "bias_lr_scale": 8.0, "augment": ("translate", "alt_flip")}])
def test_resume_continues_exactly_where_it_stopped(small_data, tmp_path, extra, fixed_layout):
    cfg = TrainConfig(**{**QUICK, "schedule": "onecycle", "augment": ("crop", "flip"), **extra})
    full = fit(cfg, small_data, measurements=fixed_layout)
    stop = threading.Event()

    def on_event(event):
        if isinstance(event, EpochEvent) and event.epoch == 2:
            stop.set()

    ckpt = tmp_path / "c.pt"
    part = fit(cfg, small_data, on_event=on_event, stop=stop, checkpoint_path=ckpt, measurements=fixed_layout)
    assert part.status == "stopped" and part.epochs_done == 2
    resumed_events = []
    resumed = fit(cfg, small_data, checkpoint_path=ckpt, resume_from=checkpoints.read(ckpt),
                  on_event=resumed_events.append)
    assert resumed.status == "finished"
    assert [e.epoch for e in resumed_events if e.kind == "epoch"] == [3]
    steps = [e for e in resumed_events if e.kind == "step"]
    assert steps[0].lr < cfg.lr * 0.4, "the one-cycle schedule continues in its last third"
    assert [h["val_acc"] for h in resumed.history] == [h["val_acc"] for h in full.history]
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_bias_lr_scale_applies_to_biases_only(small_data):
    cfg = TrainConfig(**{**QUICK, "epochs": 1, "bias_lr_scale": 16.0})  # no weight decay
    model = fit(cfg, small_data).model
    optimizer = make_optimizer(cfg, model)
    weights, biases = optimizer.param_groups
    assert all(p.ndim > 1 for p in weights["params"]) and all(p.ndim == 1 for p in biases["params"])
    assert group_lr_scales(cfg) == (1.0, 16.0) and biases["weight_decay"] == 0


def test_biases_decay_per_step_like_the_weights():
    cfg = TrainConfig(model="fastnet", optimizer="sgd", weight_decay=0.002, bias_lr_scale=64.0)
    weights, biases = make_optimizer(cfg, build_model("fastnet", width=0.25)).param_groups
    assert weights["weight_decay"] == 0.002 and biases["weight_decay"] == pytest.approx(0.002 / 64)


def test_stem_bias_trains_for_its_epochs_then_stays(small_data):
    cfg = TrainConfig(**{**QUICK, "model": "fastnet", "width": 0.25, "optimizer": "sgd", "lr": 0.2,
                         "epochs": 3, "stem_bias_epochs": 1, "bias_lr_scale": 16.0})
    seen = {}
    result = fit(cfg, small_data, on_epoch_end=lambda epoch, model: seen.setdefault(
        epoch, model.whiten.bias.detach().clone()))
    assert seen[1].abs().sum() > 0, "the stem bias starts at zero and trains in epoch 1"
    assert torch.equal(seen[1], seen[3]) and torch.equal(seen[3], result.model.whiten.bias)
    assert not result.model.whiten.bias.requires_grad


def test_low_res_epochs_train_on_small_images_then_full_size(small_data):
    cfg = TrainConfig(**{**QUICK, "model": "fastnet", "width": 0.25, "optimizer": "sgd", "lr": 0.2,
                         "epochs": 3, "low_res_epochs": 2, "low_res_size": 16})
    sides: dict[int, set[int]] = {}
    epoch_now = [1]

    def record(module, inputs):
        if module.training:
            sides.setdefault(epoch_now[0], set()).add(inputs[0].shape[-1])

    def next_epoch(epoch, model):  # fit builds the model, so the hook goes on after epoch 1
        epoch_now[0] = epoch + 1
        if epoch == 1:
            model.register_forward_pre_hook(record)

    result = fit(cfg, small_data, on_epoch_end=next_epoch)
    assert sides == {2: {16}, 3: {32}}
    assert result.status == "finished" and result.history[-1]["val_acc"] > 0.5


@pytest.mark.slow
def test_compiled_training_step_learns_and_saves_plain_weights(small_data, tmp_path):
    cfg = TrainConfig(**{**QUICK, "model": "fastnet", "width": 0.25, "optimizer": "sgd", "lr": 0.2,
                         "epochs": 2, "batch_size": 100, "compile": True})
    result = fit(cfg, small_data, checkpoint_path=tmp_path / "ckpt.pt")
    assert result.status == "finished" and result.history[-1]["val_acc"] > 0.5
    saved = checkpoints.read(tmp_path / "ckpt.pt")
    assert set(saved["state_dict"]) == set(build_model("fastnet", width=0.25).state_dict())


def test_lookahead_pulls_toward_the_average_and_ends_on_it():
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    lookahead = Lookahead(model)
    with torch.no_grad():
        model.weight.fill_(1.0)
    lookahead.after_step(model, steps_done=3, total_steps=10)  # not a multiple of 5: nothing happens
    assert model.weight.eq(1.0).all()
    lookahead.after_step(model, steps_done=10, total_steps=10)  # decay 0.95^5: the average moves 22.6%
    assert model.weight[0, 0].item() == pytest.approx(1 - 0.95 ** 5)
    with torch.no_grad():
        model.weight.fill_(5.0)
    lookahead.finish(model)  # the model becomes the average, which does not move
    assert model.weight[0, 0].item() == pytest.approx(1 - 0.95 ** 5)


@pytest.mark.slow
def test_fast_preset_recipe_learns_on_a_small_set(small_data):
    cfg = TrainConfig(**{**PRESETS["fast"].config.to_dict(), "epochs": 3, "batch_size": 128, "val_size": 200})
    result = fit(cfg, small_data)
    assert result.status == "finished" and result.history[-1]["val_acc"] > 0.6


def test_lr_schedules():
    assert lr_factor("constant", 50, 100, 0) == 1
    assert lr_factor("onecycle", 0, 100, 10) == pytest.approx(0.1)
    assert lr_factor("onecycle", 10, 100, 10) == 1
    assert lr_factor("onecycle", 55, 100, 10) == pytest.approx(0.5)
    assert lr_factor("cosine", 10, 110, 10) == 1
    assert lr_factor("cosine", 60, 110, 10) == pytest.approx(0.5)
    # airbench's triangle: warm-up from 0.2 of the peak, decay to 0.07 of it
    assert lr_factor("onecycle", 0, 100, 10, 0.2, 0.07) == pytest.approx(0.2 + 0.8 * 0.1)
    assert lr_factor("onecycle", 10, 100, 10, 0.2, 0.07) == 1
    assert lr_factor("onecycle", 99, 100, 10, 0.2, 0.07) == pytest.approx(0.07 + 0.93 / 90)
    assert lr_factor("cosine", 110, 110, 10, 0.0, 0.1) == pytest.approx(0.1)


@pytest.mark.parametrize("values,fragment", [
    ({"lr": -0.1}, "learning rate"),
    ({"lr": float("nan")}, "finite"),
    ({"epochs": 0}, "epochs"),
    ({"model": "vgg"}, "unknown model"),
    ({"optimizer": "rmsprop"}, "unknown optimizer"),
    ({"batch_size": 1}, "batch size"),
    ({"epochs": "ten"}, "whole number"),
    ({"augment": ["crop", "mixup"]}, "unknown augmentation"),
    ({"nesterov": True, "optimizer": "adam"}, "nesterov"),
    ({"label_smoothing": 1.0}, "label smoothing"),
    ({"colour": 1}, "unknown setting"),
    ({"device": "tpu"}, "unknown device"),
    ({"bias_lr_scale": 0}, "bias lr scale"),
    ({"lookahead": "yes"}, "true or false"),
    ({"lr_end_fraction": 1.5}, "lr end fraction"),
    ({"stem_bias_epochs": 2}, "whitening stem"),
    ({"model": "fastnet", "epochs": 3, "stem_bias_epochs": 4}, "stem bias epochs"),
    ({"low_res_epochs": 2}, "any image size"),
    ({"model": "fastnet", "low_res_size": 40}, "low-res size"),
    ({"model": "fastnet", "epochs": 3, "low_res_epochs": 4}, "low-res epochs"),
])
def test_config_validation_messages(values, fragment):
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict(values).validate()
    assert fragment in str(err.value)


def test_batch_larger_than_data_is_refused(small_data):
    with pytest.raises(ConfigError, match="larger than the"):
        fit(TrainConfig(**{**QUICK, "train_size": 100, "batch_size": 128}), small_data)


def test_config_round_trips_through_a_dict():
    cfg = TrainConfig(model="fastnet", width=0.5, augment=("crop", "flip"), train_size=1000)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.slow
def test_fp16_with_loss_scaling_learns_and_resumes_on_the_cpu(small_data, tmp_path):
    """The GPU's fp16 path (autocast + GradScaler), run on the CPU, where torch supports both."""
    ckpt = tmp_path / "fp16.pt"
    config = TrainConfig(**{**QUICK, "epochs": 2, "precision": "fp16"})
    result = fit(config, small_data, checkpoint_path=ckpt)
    assert result.status == "finished" and result.history[-1]["val_acc"] > 0.3  # chance is 0.1
    saved = checkpoints.read(ckpt)
    assert saved["scaler"].get("scale", 0) > 0, "the loss scaler was enabled and saved"
    resumed = fit(replace(config, epochs=3), small_data, resume_from=saved)
    assert resumed.status == "finished" and len(resumed.history) == 3


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.slow
def test_a_stop_mid_epoch_resumes_exactly_from_that_step(small_data, tmp_path, fixed_layout):
    cfg = TrainConfig(**{**QUICK, "model": "lenet_bn", "schedule": "onecycle", "lookahead": True,
                         "augment": ("crop", "flip", "cutout")})
    full = fit(cfg, small_data, measurements=fixed_layout)
    stop = threading.Event()

    def on_event(event):
        if isinstance(event, StepEvent) and event.step == 40:  # epoch 2, step 11 of 29
            stop.set()

    ckpt = tmp_path / "c.pt"
    part = fit(cfg, small_data, on_event=on_event, stop=stop, checkpoint_path=ckpt, measurements=fixed_layout)
    saved = checkpoints.read(ckpt)
    assert part.status == "stopped" and saved["epochs_done"] == 1
    assert saved["position"]["epoch"] == 1 and saved["position"]["step"] == 11
    resumed = fit(cfg, small_data, checkpoint_path=ckpt, resume_from=saved)
    assert resumed.status == "finished"
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
    assert _state_equal(full.model, resumed.model)


@pytest.mark.slow
def test_a_deadline_pauses_before_it_and_a_chain_of_chunks_equals_one_run(small_data, tmp_path, fixed_layout):
    import time as clock

    cfg = TrainConfig(**{**QUICK, "epochs": 2, "augment": ("translate", "alt_flip"), "lookahead": True})
    full = fit(cfg, small_data, measurements=fixed_layout)
    ckpt = tmp_path / "c.pt"
    started = clock.monotonic()
    first = fit(cfg, small_data, checkpoint_path=ckpt, deadline=clock.monotonic() + 1.5, measurements=fixed_layout)
    assert first.status == "paused" and clock.monotonic() - started < 6
    chunks, result = 1, first
    while result.status == "paused":
        result = fit(cfg, small_data, checkpoint_path=ckpt, resume_from=checkpoints.read(ckpt),
                     deadline=clock.monotonic() + 1.5)
        chunks += 1
    assert result.status == "finished" and chunks >= 3
    assert _state_equal(full.model, result.model)
    assert [h["val_acc"] for h in result.history] == [h["val_acc"] for h in full.history]


@pytest.mark.slow
def test_early_stopping_stops_on_a_plateau_and_keeps_the_best_weights_exactly(small_data, tmp_path):
    cfg = TrainConfig(**{**QUICK, "epochs": 30, "lr": 0.02, "patience": 2, "keep_best": True,
                         "monitor": "val_loss"})
    states = {}
    best_path = tmp_path / "best.pt"
    result = fit(cfg, small_data, checkpoint_path=tmp_path / "c.pt", best_path=best_path,
                 on_epoch_end=lambda epoch, model: states.__setitem__(
                     epoch, {k: v.clone() for k, v in model.state_dict().items()}))
    losses = [h["val_loss"] for h in result.history]
    best = int(np.argmin(losses))
    assert result.status == "finished" and "stopped early" in result.message
    assert len(result.history) == best + 1 + 2 < 30, "stopped two epochs after the best one"
    assert result.best_epoch == best + 1 and f"the best epoch was {best + 1}" in result.message
    kept = checkpoints.read(best_path)
    assert kept["best_epoch"] == best + 1 and "optimizer" not in kept
    for key, value in states[best + 1].items():
        assert torch.equal(kept["state_dict"][key], value.cpu())
        assert torch.equal(result.model.state_dict()[key], value)


def test_early_stopping_needs_validation_images(small_data):
    with pytest.raises(TrainingError, match="validation"):
        fit(TrainConfig(**{**QUICK, "val_size": 0, "patience": 2}), small_data)


def test_a_resumed_run_keeps_the_precision_and_layout_it_trained_in(small_data, tmp_path, fixed_layout):
    from fakes import FakeMeasurements

    stop = threading.Event()
    ckpt = tmp_path / "c.pt"
    fit(TrainConfig(**QUICK), small_data, on_event=lambda e: stop.set() if isinstance(e, StepEvent) else None,
        stop=stop, checkpoint_path=ckpt, measurements=fixed_layout)
    contiguous_now = FakeMeasurements(lambda work, precision, channels_last: 100.0 if channels_last else 300.0)
    events = []
    fit(TrainConfig(**QUICK), small_data, resume_from=checkpoints.read(ckpt), on_event=events.append,
        measurements=contiguous_now)
    start = events[0]
    assert start.compute["channels_last"] is True and "kept from before the run was resumed" in start.message
    assert not contiguous_now.asked, "nothing was measured again"
