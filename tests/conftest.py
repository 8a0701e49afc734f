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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    """`python app.py` on synthetic data and a free loopback port; yields its URL and runs folder."""
    import os
    import subprocess
    import time
    import urllib.request

    runs = tmp_path_factory.mktemp("app") / "runs"
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--data", "synthetic", "--runs-dir", str(runs),
                             "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"app exited: {proc.stdout.read()}")
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("app did not start within 120 s")
    yield url, runs
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
