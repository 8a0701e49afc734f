"""Faults: the process is killed mid-training or mid-save; nothing is lost or left corrupt."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import ROOT

from cifarapp import checkpoints
from cifarapp.manager import RunManager


def _wait_for(predicate, timeout=120, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkill_mid_training_leaves_an_interrupted_resumable_run(tmp_path, small_data):
    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "cifarapp", "train", "--data", "synthetic", "--epochs", "60",
                             "--val-size", "200", "--runs-dir", str(runs)], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: runs.is_dir() and any((d / "checkpoint.pt").is_file() for d in runs.iterdir()),
                  what="the first checkpoint")
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    [run_dir] = list(runs.iterdir())
    manager = RunManager(runs, lambda: small_data)  # the "restarted app"
    snap = manager.snapshot(run_dir.name)
    assert snap.status == "interrupted" and "resume" in snap.message
    loaded = checkpoints.load_model(run_dir / "checkpoint.pt")
    done = checkpoints.read(run_dir / "checkpoint.pt")["epochs_done"]
    assert loaded.model_name == "lenet" and done >= 1
    manager.start(None, owner="me", resume_run_id=run_dir.name)
    _wait_for(lambda: len(manager.snapshot(run_dir.name).epochs) > done, what="an epoch after resuming")
    manager.stop(run_dir.name, "me")
    snap = manager.wait(run_dir.name, timeout=60)
    assert snap.status == "stopped"
    assert checkpoints.read(run_dir / "checkpoint.pt")["epochs_done"] >= done


WRITER = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, sys.argv[2])
    from cifarapp import checkpoints
    i = 0
    while True:
        blob = torch.full((2_000_000,), float(i))
        checkpoints.save_atomic({"format": checkpoints.FORMAT, "n": i, "blob": blob}, sys.argv[1])
        i += 1
""")


@pytest.mark.parametrize("delay", [0.4, 0.7, 1.0, 1.3, 1.6])
def test_sigkill_during_saves_never_leaves_a_corrupt_checkpoint(tmp_path, delay):
    path = tmp_path / "checkpoint.pt"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(ROOT)])
    try:
        _wait_for(path.is_file, what="the first save")
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    payload = checkpoints.read(path)  # whole, loadable
    assert bool((payload["blob"] == float(payload["n"])).all())
    checkpoints.save_atomic({"format": checkpoints.FORMAT, "n": -1}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"], "a later save clears killed saves' temp files"
