"""Helpers for tests that drive the live app through gradio_client."""

import time

from cifarapp.config import TrainConfig
from cifarapp.presets import PRESETS
from cifarapp.ui.train_tab import config_to_form

FIELDS = list(TrainConfig().to_dict())  # the Train tab's inputs come in the config's field order


def form(**overrides):
    """The Train tab's input values for the LeNet report preset with `overrides`, in API order."""
    config = PRESETS["report_lenet"].config
    values = dict(zip(FIELDS, config_to_form(config, FIELDS)))
    values.update(val_size=200, **overrides)
    return [values[f] for f in FIELDS]


def poll_until(client, token, done, timeout=120):
    """Poll the Train tab as `token` until `done(outputs)` holds; fail after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = client.predict(token, api_name="/poll")
        if done(out):
            return out
        time.sleep(0.3)
    raise AssertionError(f"timed out; last poll: {out[3]}")
