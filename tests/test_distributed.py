"""Training on several processes: torch.distributed with 2 gloo processes on the CPU, launched by
torch.distributed.run, as a user (`train --nproc 2`) and the app (RunManager) start them."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from cifarapp.config import TrainConfig
from cifarapp.distributed import World, launch_command
from cifarapp.manager import RunManager
from cifarapp.sources import DataSource
from cifarapp.train import TrainingError, check_fit, steps_per_epoch

pytestmark = pytest.mark.slow

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
TRAIN = ["--data", "synthetic", "--model", "lenet_bn", "--val-size", "200", "--batch-size", "64"]


def cli(*args, cwd, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "cifarapp", *args], cwd=cwd, capture_output=True, text=True,
                          env={**ENV, **(env or {})}, timeout=timeout)


def only_run(runs: Path) -> Path:
    (folder,) = [p for p in runs.iterdir() if p.is_dir()]
    return folder


def events(folder: Path, kind: str) -> list[dict]:
    import csv

    with open(folder / "metrics.csv") as fh:
        return [row for row in csv.DictReader(fh) if row["kind"] == kind]


def weights(folder: Path) -> torch.Tensor:
    state = torch.load(folder / "checkpoint.pt", weights_only=True)["state_dict"]
    return torch.cat([v.float().flatten() for k, v in state.items() if "num_batches" not in k])


def wait_for_steps(folder_parent: Path, steps: int, timeout: float = 120) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        folders = [p for p in folder_parent.iterdir() if p.is_dir()] if folder_parent.is_dir() else []
        if folders and (folders[0] / "metrics.csv").is_file() and len(events(folders[0], "step")) >= steps:
            return folders[0]
        time.sleep(0.2)
    raise AssertionError(f"no {steps} steps within {timeout} s")


def process_of_rank(run_id: str, rank: int) -> int:
    """The pid of the worker process of `rank` of a run (found through /proc)."""
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if run_id.encode() in cmdline and b"worker" in cmdline and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    raise AssertionError(f"no process of rank {rank} for {run_id}")


def test_shares_cover_every_image_once_and_small_last_batches_are_dropped():
    for size in (1, 2, 3, 8):
        shares = [World(rank, size).share(29) for rank in range(size)]
        covered = [i for share in shares for i in range(29)[share]]
        assert covered == list(range(29)) and max(len(range(29)[s]) for s in shares) - min(
            len(range(29)[s]) for s in shares) <= 1
    assert steps_per_epoch(1800, 64, 1) == 29 and steps_per_epoch(1793, 64, 1) == 28  # a last batch of 1
    assert steps_per_epoch(1795, 64, 2) == 28 and steps_per_epoch(1796, 64, 2) == 29  # 3 images for 2: dropped
    with pytest.raises(TrainingError, match="too small for 4 processes"):
        from cifarapp.data import synthetic_data

        check_fit(TrainConfig(model="lenet", batch_size=6, nproc=4, val_size=100), synthetic_data(400, 10))
    command = launch_command(2, ["worker", "r1"])
    assert command[1:4] == ["-m", "torch.distributed.run", "--standalone"] and "--nproc-per-node=2" in command


def test_two_processes_train_one_run_as_one_process_does(tmp_path):
    """With synchronised BatchNorm, 2 processes compute what 1 does up to floating-point rounding:
    the gradient all-reduce, each half batch's convolutions and the float64 BatchNorm sums add in
    another order. Identical up to rounding at first, the runs drift apart a little where a ReLU
    or max-pool flips on a value that rounding moved (a discrete choice), so the weights are
    close, not equal. The 2 processes are launched with torchrun by hand, as a user would."""
    one = cli("train", *TRAIN, "--epochs", "2", "--sync-bn", "--runs-dir", "runs1", cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "cifarapp", "train", *TRAIN, "--epochs", "2", "--sync-bn", "--runs-dir", "runs2"],
                         cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("Epoch [2/2]") == 1, "process 0 alone reports"
    runs = {n: only_run(tmp_path / f"runs{n}") for n in (1, 2)}  # one run folder, written by process 0
    folder = runs[2]
    assert json.loads((folder / "config.json").read_text())["nproc"] == 2
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "finished" and status["nproc"] == 2
    assert "with 2 processes" in (folder / "log.txt").read_text()
    assert not list(folder.glob("process-*-error.txt"))
    one, two = (events(runs[n], "step") for n in (1, 2))
    assert [r["step"] for r in one] == [r["step"] for r in two]
    for a, b in zip(one[:3], two[:3]):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), abs=1e-4)
    epochs = [events(runs[n], "epoch")[-1] for n in (1, 2)]
    assert float(epochs[1]["val_acc"]) > 0.6 and abs(float(epochs[0]["val_acc"]) - float(epochs[1]["val_acc"])) <= 0.03
    a, b = weights(runs[1]), weights(runs[2])
    assert ((a - b).norm() / a.norm()).item() < 0.05


def test_ctrl_c_stops_every_process_at_one_step_and_the_run_resumes_with_one_process(tmp_path):
    epochs = 8  # 29 steps each: the stop after 40 steps comes early in the second epoch
    proc = subprocess.Popen([sys.executable, "-m", "cifarapp", "train", *TRAIN, "--epochs", str(epochs),
                             "--nproc", "2"], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    folder = wait_for_steps(tmp_path / "runs", 40)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "stopped", status
    saved = torch.load(folder / "checkpoint.pt", weights_only=True)
    position = saved["position"]
    assert len(position["dropout"]) == 2, "both processes' generators were saved"
    stopped_at = saved["epochs_done"] * 29 + position["step"]
    resumed = cli("resume", folder.name, "--nproc", "1", "--data", "synthetic", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((folder / "config.json").read_text())["nproc"] == 1
    assert json.loads((folder / "status.json").read_text())["status"] == "finished"
    steps = [int(r["step"]) for r in events(folder, "step")]
    assert steps[-1] == epochs * 29 and min(s for s in steps if s > stopped_at) <= stopped_at + 2, \
        "the resumed run went on from the step it stopped at"


def test_a_killed_process_fails_the_run_with_the_reason_and_nothing_hangs(tmp_path):
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "cifarapp", "train", *TRAIN, "--epochs", "30", "--nproc", "2"],
                            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    folder = wait_for_steps(tmp_path / "runs", 10)
    os.kill(process_of_rank(folder.name, 1), signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "failed" and "process 1 was killed by SIGKILL" in status["message"], status
    assert "process 1 was killed by SIGKILL" in out
    assert time.time() - started < 150


def test_a_process_that_stops_answering_times_out_instead_of_hanging(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "cifarapp", "train", *TRAIN, "--epochs", "30", "--nproc", "2"],
                            cwd=tmp_path, env={**ENV, "CIFARAPP_DIST_TIMEOUT": "5"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    folder = wait_for_steps(tmp_path / "runs", 10)
    frozen = process_of_rank(folder.name, 1)
    os.kill(frozen, signal.SIGSTOP)
    frozen_at = time.time()
    try:
        while json.loads((folder / "status.json").read_text())["status"] != "failed":
            assert time.time() - frozen_at < 90, "process 0 did not give up on the frozen process"
            time.sleep(0.2)
    finally:  # the launcher's SIGTERM then ends the frozen process at once, not after its 30 s grace
        os.kill(frozen, signal.SIGCONT) if Path(f"/proc/{frozen}").exists() else None
    out, err = proc.communicate(timeout=120)
    status = json.loads((folder / "status.json").read_text())
    assert proc.returncode == 1 and status["status"] == "failed", status
    assert "timed out" in status["message"].lower() or "timeout" in status["message"].lower(), status["message"]


def test_the_app_trains_a_two_process_run_in_processes_of_its_own_and_survives_their_death(tmp_path):
    data = DataSource("synthetic")
    manager = RunManager(tmp_path / "runs", data.load, worker_args=data.to_args())
    config = TrainConfig(model="lenet_bn", epochs=2, batch_size=64, val_size=200, nproc=2)
    run_id = manager.start(config, owner="alice")
    snap = manager.wait(run_id, timeout=240)
    assert snap.status == "finished", snap.message
    assert len(snap.epochs) == 2 and snap.steps[-1]["step"] == 2 * 29 and snap.epochs[-1]["val_acc"] > 0.5
    assert (tmp_path / "runs" / run_id / "processes.log").is_file()

    long = manager.start(TrainConfig(**{**config.to_dict(), "epochs": 30}), owner="alice")
    deadline = time.time() + 120
    while len(manager.snapshot(long).steps) < 5 and time.time() < deadline:
        time.sleep(0.2)
    assert manager.snapshot(long).status == "running"
    os.kill(process_of_rank(long, 0), signal.SIGKILL)  # as the kernel does when it runs out of memory
    snap = manager.wait(long, timeout=120)
    assert snap.status == "failed" and "process 0 was killed by SIGKILL" in snap.message
    assert manager.active_runs() == 0, "the trainer is free again"

    stoppable = manager.start(TrainConfig(**{**config.to_dict(), "epochs": 30}), owner="alice")
    while len(manager.snapshot(stoppable).steps) < 5 and time.time() < deadline + 120:
        time.sleep(0.2)
    assert not manager.stop(stoppable, "mallory") and manager.stop(stoppable, "alice")
    snap = manager.wait(stoppable, timeout=120)
    assert snap.status == "stopped" and snap.has_checkpoint
