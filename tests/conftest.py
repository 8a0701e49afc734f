"""Shared fixtures: small synthetic data sets made in memory, never downloaded."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cifarapp.data import synthetic_data  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def small_data():
    """2,000 training and 500 test images of coloured shapes, one shape/colour per class."""
    return synthetic_data(n_train=2000, n_test=500, seed=0)


@pytest.fixture
def runs_root(tmp_path):
    return tmp_path / "runs"
