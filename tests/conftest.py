"""Shared fixtures: small synthetic data sets made in memory (never downloaded) and the live app."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from cifarapp.data import synthetic_data

ROOT = Path(__file__).resolve().parent.parent

torch.set_num_threads(2)
# measurements of this machine's speed (cifarapp.hardware) go to a fresh folder per test session;
# the apps the tests start inherit it
os.environ["CIFARAPP_CACHE_DIR"] = tempfile.mkdtemp(prefix="cifarapp-test-cache-")


# modules whose tests start the app (and the marker each gets); all of them are slow
SERVER_MODULES = {"test_app_api": "server", "test_security": "server", "test_uploads": "server",
                  "test_load": "load", "test_browser": "browser"}


# modules whose tests start processes or train for several seconds each (`-m "not slow"` skips them)
SLOW_MODULES = {"test_cli", "test_faults", "test_weights", "test_export", "test_distributed"}


def pytest_collection_modifyitems(items):
    """Mark tests that start the app as server, load or browser tests, and all of those (and the
    SLOW_MODULES) as slow."""
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if module in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
        kind = SERVER_MODULES.get(module)
        if kind:
            item.add_marker(getattr(pytest.mark, kind))
            item.add_marker(pytest.mark.server)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def small_data():
    """2,000 training and 500 test images of coloured shapes, one shape/colour per class."""
    return synthetic_data(n_train=2000, n_test=500, seed=0)


@pytest.fixture
def fixed_layout():
    """Measurements that always pick channels-last fp32: tests that compare two runs number for
    number need both to compute in one layout (on a busy machine a real measurement can pick the
    other layout the second time, and other kernels round differently)."""
    from fakes import FakeMeasurements

    return FakeMeasurements(lambda work, precision, channels_last: 200.0 if channels_last else 100.0)


@pytest.fixture
def runs_root(tmp_path):
    return tmp_path / "runs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer(NamedTuple):
    url: str
    runs: Path
    pid: int
    log: Path


@contextlib.contextmanager
def running_app(tmp: Path, *extra_args: str, env: dict | None = None):
    """`python app.py` on synthetic data and a free loopback port, with runs in `tmp/runs` and
    Gradio's upload cache in `tmp/gradio`; yields an AppServer and stops the app afterwards."""
    runs = tmp / "runs"
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False",
           "GRADIO_TEMP_DIR": str(tmp / "gradio"), **(env or {})}
    # the app's output goes to a file: an unread pipe fills up and then blocks the server's logging
    log = tmp / "app.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--data", "synthetic", "--runs-dir",
                                 str(runs), "--datasets-dir", str(tmp / "datasets"), "--host", "127.0.0.1",
                                 "--port", str(port), *extra_args],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"app exited: {log.read_text()[-3000:]}") from None
                if time.time() > deadline:
                    raise RuntimeError("app did not start within 120 s") from None
                time.sleep(0.5)
        yield AppServer(url, runs, proc.pid, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    """The app on synthetic data, shared by one test module."""
    with running_app(tmp_path_factory.mktemp("app")) as server:
        yield server
