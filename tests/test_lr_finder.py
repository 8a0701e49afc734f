import copy

import numpy as np
import pytest
import torch

from cifarapp.config import TrainConfig
from cifarapp.figures import lr_finder_figure
from cifarapp.lr_finder import find_lr, suggest
from cifarapp.train import make_optimizer, seeded_model

QUICK = dict(model="lenet", batch_size=64, val_size=200, epochs=1)


def test_the_suggestion_is_the_steepest_fall_before_the_minimum():
    lrs = list(np.logspace(-6, 1, 71))
    # flat, then a fall steepest at 1e-3, the minimum at 1e-2, then an explosion
    smoothed = [2.3 - 1.5 / (1 + np.exp(-3 * (np.log10(lr) + 3))) if lr <= 1e-2 else 0.9 + 50 * (lr - 1e-2)
                for lr in lrs]
    assert suggest(lrs, smoothed) == pytest.approx(1e-3, rel=0.3)
    assert suggest(lrs, [2.3 - 1e-3 * i for i in range(5)] + [5.0] * 66) is None, "no fall, no suggestion"


def test_adam_on_a_learnable_set_gets_a_sensible_suggestion_and_leaves_the_model_alone(small_data):
    model = seeded_model(TrainConfig(**QUICK), 10)
    optimizer = make_optimizer(TrainConfig(**QUICK), model)
    before = copy.deepcopy(model.state_dict())
    optimizer_before = copy.deepcopy(optimizer.state_dict())
    result = find_lr(TrainConfig(**QUICK, optimizer="adam"), small_data, steps=80, model=model)
    assert result.suggestion is not None and 1e-4 <= result.suggestion <= 3e-2, result.describe()
    assert min(result.smoothed) < result.smoothed[0] - 0.3, "the loss fell on the way"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the model is unchanged"
    assert optimizer.state_dict() == optimizer_before and not optimizer.state, "the optimizer is unchanged"
    figure = lr_finder_figure(result)
    assert figure.axes[0].get_xscale() == "log"


@pytest.mark.slow
def test_sgd_wants_a_higher_lr_than_adam(small_data):
    adam = find_lr(TrainConfig(**QUICK, optimizer="adam"), small_data, steps=60)
    sgd = find_lr(TrainConfig(**QUICK, optimizer="sgd", momentum=0.9), small_data, steps=60)
    assert adam.suggestion is not None and sgd.suggestion is not None
    assert sgd.suggestion > adam.suggestion


def test_bad_ranges_are_refused(small_data):
    with pytest.raises(ValueError, match="lr_min < lr_max"):
        find_lr(TrainConfig(**QUICK), small_data, lr_min=1.0, lr_max=0.1)
    with pytest.raises(ValueError, match="at least 10 steps"):
        find_lr(TrainConfig(**QUICK), small_data, steps=3)
