"""Temperature scaling fitted on held-out images, ECE and reliability bins, and calibrated checkpoints."""

import dataclasses

import numpy as np
import pytest
import torch
from fakes import FakeMeasurements
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cifarapp import checkpoints
from cifarapp.calibration import (
    TEMPERATURE_BOUNDS,
    CalibrationError,
    calibrate_checkpoint,
    calibration_from_logits,
    expected_calibration_error,
    fit_temperature,
    reliability,
    scaled_probabilities,
    validation_images,
)
from cifarapp.config import TrainConfig
from cifarapp.data import split_train_val
from cifarapp.evaluate import evaluate, metrics_from_logits
from cifarapp.inference import batched_logits
from cifarapp.predict import predict_pixels
from cifarapp.train import check_fit, fit


def _simulated(n: int, classes: int = 10, scale: float = 1.0, seed: int = 0):
    """Logits true_logits * scale, with labels drawn from softmax(true_logits): the true temperature is `scale`."""
    gen = torch.Generator().manual_seed(seed)
    true_logits = torch.randn(n, classes, generator=gen, dtype=torch.float64) * 2
    labels = torch.multinomial(true_logits.softmax(1), 1, generator=gen).flatten()
    return (true_logits * scale).float(), labels


def test_temperature_scaling_lowers_nll_and_ece_of_an_over_confident_model_on_held_out_data():
    logits, labels = _simulated(8000, scale=5.0)
    fit_half, held_out = slice(0, 4000), slice(4000, None)
    temperature = fit_temperature(logits[fit_half], labels[fit_half])
    before = metrics_from_logits(logits[held_out], labels[held_out], tuple("abcdefghij"))
    after = metrics_from_logits(logits[held_out], labels[held_out], tuple("abcdefghij"), temperature=temperature)
    nll = after.losses.mean()
    assert nll < before.loss - 0.5
    assert before.raw_ece > 0.15 and after.calibrated_ece < 0.03
    assert after.accuracy == before.accuracy


@pytest.mark.parametrize("known", [0.5, 2.0, 4.0])
def test_fitted_temperature_recovers_a_known_temperature(known):
    logits, labels = _simulated(20000, scale=known, seed=1)
    assert fit_temperature(logits, labels) == pytest.approx(known, rel=0.05)


def test_fit_is_deterministic_bounded_and_leaves_uninformative_logits_alone():
    logits, labels = _simulated(2000, scale=3.0, seed=2)
    assert fit_temperature(logits, labels) == fit_temperature(logits.clone(), labels.clone())
    # every image right with a margin: the NLL falls as T falls, down to the lower bound
    confident = torch.nn.functional.one_hot(labels, 10).float()
    assert fit_temperature(confident, labels) == pytest.approx(TEMPERATURE_BOUNDS[0], rel=1e-3)
    assert fit_temperature(torch.zeros(50, 10), labels[:50]) == 1.0
    with pytest.raises(ValueError, match="at least one"):
        fit_temperature(torch.zeros(0, 10), torch.zeros(0, dtype=torch.long))


# logits in steps of 1/4: exactly representable, so a division by T cannot round two of them together
_LOGITS = hnp.arrays(np.float32, st.tuples(st.integers(1, 16), st.integers(2, 12)),
                     elements=st.integers(-160, 160).map(lambda v: v / 4))


@settings(max_examples=100, deadline=None)
@given(_LOGITS, st.floats(TEMPERATURE_BOUNDS[0], TEMPERATURE_BOUNDS[1]))
def test_temperature_never_changes_the_arg_max(logits, temperature):
    logits = torch.from_numpy(logits)
    probabilities = scaled_probabilities(logits, temperature)
    assert torch.equal(probabilities.argmax(1), logits.argmax(1))
    assert torch.allclose(probabilities.sum(1), torch.ones(len(logits)))


def test_ece_and_reliability_of_a_hand_made_case():
    probs = np.array([[0.9, 0.1], [0.7, 0.3], [0.3, 0.7], [0.55, 0.45]])
    labels = np.array([0, 1, 1, 0])
    # bins of 0.2: (0.8, 1] holds image 0 (right, 0.9); (0.6, 0.8] images 1, 2 (one right, 0.7); (0.4, 0.6] image 3
    expected = 1 / 4 * abs(1 - 0.9) + 2 / 4 * abs(0.5 - 0.7) + 1 / 4 * abs(1 - 0.55)
    assert expected_calibration_error(probs, labels, bins=5) == pytest.approx(expected) == pytest.approx(0.2375)
    bins = reliability(torch.from_numpy(probs), torch.from_numpy(labels), bins=5)
    assert bins.count.tolist() == [0, 0, 1, 2, 1]
    assert np.allclose(bins.accuracy, [np.nan, np.nan, 1, 0.5, 1], equal_nan=True)
    assert np.allclose(bins.confidence, [np.nan, np.nan, 0.55, 0.7, 0.9], equal_nan=True)
    assert np.allclose(bins.edges, [0, 0.2, 0.4, 0.6, 0.8, 1.0]) and bins.ece == pytest.approx(expected)


def test_perfectly_calibrated_data_has_an_ece_near_zero():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, 50_000)
    labels = (rng.uniform(size=50_000) >= confidence).astype(np.int64)  # class 0 with probability `confidence`
    probs = np.stack([confidence, 1 - confidence], 1)
    assert expected_calibration_error(probs, labels) < 0.01
    assert expected_calibration_error(np.stack([np.ones(50_000), np.zeros(50_000)], 1), labels) > 0.2


def _payload(data, **config) -> dict:
    config = check_fit(TrainConfig(model="lenet", batch_size=64, **config), data)
    return {"classes": list(data.classes), "config": config.to_dict(), "dataset": data.summary()}


@pytest.mark.parametrize("train_size", [None, 500])
def test_validation_images_are_exactly_what_training_held_out(small_data, train_size):
    payload = _payload(small_data, val_size=300, seed=3, train_size=train_size)
    images, labels, described = validation_images(payload, small_data)
    split = split_train_val(len(small_data.train_images), 300, 3, train_size)  # as train.Trainer splits
    assert torch.equal(images, small_data.train_images[split.val]) and len(labels) == 300
    assert torch.equal(labels, small_data.train_labels[split.val])
    assert not set(split.val.tolist()) & set(split.train.tolist())
    assert described == "the validation split: 300 images held out of training (seed 3)"


def test_data_with_its_own_validation_split_uses_it(small_data):
    own = dataclasses.replace(small_data, val_images=small_data.test_images[:40],
                              val_labels=small_data.test_labels[:40])
    payload = _payload(own, val_size=300)
    assert payload["config"]["val_size"] == 0
    images, labels, described = validation_images(payload, own)
    assert torch.equal(images, own.val_images) and torch.equal(labels, own.val_labels)
    assert "40 images" in described


def test_a_model_trained_on_every_image_is_not_calibrated_on_the_test_set(small_data):
    with pytest.raises(CalibrationError, match="cannot be fitted without images it did not train on") as caught:
        validation_images(_payload(small_data, val_size=0), small_data)
    assert "test set would be dishonest" in str(caught.value)


def test_other_data_is_refused(small_data):
    from cifarapp.data import synthetic_data

    payload = _payload(small_data, val_size=300)
    with pytest.raises(CalibrationError, match="number of train images"):
        validation_images(payload, synthetic_data(n_train=1000, n_test=100, seed=0))
    with pytest.raises(CalibrationError, match="classes"):
        validation_images(payload, synthetic_data(n_train=2000, n_test=100, seed=0, classes=5))


def test_calibrate_checkpoint_round_trip(small_data, tmp_path):
    ckpt = tmp_path / "c.pt"
    unmeasured = FakeMeasurements(lambda work, precision, channels_last: 100.0)  # no timing: a fast test
    # one short epoch leaves the model under-confident (its fitted temperature is below 1)
    config = TrainConfig(model="lenet", epochs=1, batch_size=64, train_size=800, val_size=400, lr=0.01)
    assert fit(config, small_data, checkpoint_path=ckpt, measurements=unmeasured).status == "finished"
    before_payload = checkpoints.read(ckpt)
    before = checkpoints.load_model(ckpt, "cpu", "fp32", unmeasured)
    assert before.temperature == 1.0 and before.calibration is None

    calibration = calibrate_checkpoint(ckpt, small_data, "cpu", "fp32", unmeasured)
    after_payload = checkpoints.read(ckpt)
    assert set(after_payload) == set(before_payload) | {"calibration"}
    assert all(torch.equal(v, after_payload["state_dict"][k]) for k, v in before_payload["state_dict"].items())
    assert after_payload["metrics"] == before_payload["metrics"]
    assert calibration.n_images == 400 and "400 images held out of training (seed 0)" in calibration.fitted_on
    assert calibration.nll_after <= calibration.nll_before
    assert TEMPERATURE_BOUNDS[0] < calibration.temperature < TEMPERATURE_BOUNDS[1]
    assert abs(calibration.temperature - 1) > 0.02

    after = checkpoints.load_model(ckpt, "cpu", "fp32", unmeasured)
    assert after.temperature == calibration.temperature and after.calibration == calibration
    images = small_data.test_images[:64]
    logits = batched_logits(after.model, images, after.normalization, after.compute)
    pixels = images.permute(0, 2, 3, 1).numpy()
    raw, calibrated = predict_pixels(before, pixels), predict_pixels(after, pixels)
    assert np.array_equal(raw.argmax(1), calibrated.argmax(1))
    assert np.allclose(raw, logits.softmax(1).numpy(), atol=1e-6)
    assert np.allclose(calibrated, (logits / calibration.temperature).softmax(1).numpy(), atol=1e-6)
    assert not np.allclose(raw, calibrated, atol=1e-3)

    held_out, held_out_labels, _ = validation_images(after_payload, small_data)
    result = evaluate(after, held_out, held_out_labels)
    assert result.temperature == calibration.temperature
    assert result.calibrated_ece == pytest.approx(calibration.ece_after, abs=1e-6)
    assert result.raw_ece == pytest.approx(calibration.ece_before, abs=1e-6)
    assert f"(temperature {calibration.temperature:.3g})" in result.summary()


def test_calibration_record_round_trips_and_describes_itself():
    from cifarapp.calibration import Calibration

    logits, labels = _simulated(3000, scale=3.0, seed=4)
    calibration = calibration_from_logits(logits, labels, "the validation split: 3,000 images")
    assert Calibration.from_dict(calibration.to_dict()) == calibration
    assert calibration.ece_after < calibration.ece_before and calibration.nll_after < calibration.nll_before
    assert "fitted on the validation split: 3,000 images" in calibration.describe()
    with pytest.raises(checkpoints.CheckpointError, match="incomplete"):
        Calibration.from_dict({"temperature": 2.0})
    for broken in (0.0, -1.0, float("nan"), "2"):
        with pytest.raises(checkpoints.CheckpointError, match="not a positive number"):
            Calibration.from_dict({**calibration.to_dict(), "temperature": broken})
