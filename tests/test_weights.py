"""Every shipped checkpoint loads safely and scores on the committed test sample what its card says."""

import pytest

from cifarapp import checkpoints
from cifarapp.evaluate import evaluate
from cifarapp.weights import default_checkpoint, load_sample, shipped_models

MODELS = shipped_models()


def test_weights_are_shipped():
    assert MODELS, "weights/ must hold at least one model with its card"
    assert default_checkpoint() == MODELS[0].checkpoint  # the best one is the default


@pytest.mark.parametrize("shipped", MODELS, ids=[m.name for m in MODELS])
def test_shipped_checkpoint_matches_its_card(shipped):
    assert shipped.checkpoint.stat().st_size <= 10 * 1024 * 1024
    card = shipped.card
    for key in ("test_accuracy", "per_class_accuracy", "config", "command", "training_time_s", "data_note"):
        assert key in card
    loaded = checkpoints.load_model(shipped.checkpoint)
    assert loaded.model_name == card["model"] and len(loaded.classes) == 10
    assert "optimizer" not in checkpoints.read(shipped.checkpoint)
    images, labels = load_sample()
    result = evaluate(loaded, images, labels)
    assert abs(result.accuracy - card["sample_accuracy"]) <= 0.01
