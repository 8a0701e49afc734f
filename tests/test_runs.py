import json
import time

import pytest
import torch

from cifarapp.config import ConfigError, TrainConfig
from cifarapp.manager import BusyError, RunManager, RunRules
from cifarapp.runs import RunDir, RunError, RunStore
from cifarapp.train import fit

SLOW = dict(model="lenet", epochs=50, batch_size=32, val_size=200)
QUICK = dict(model="lenet", epochs=2, batch_size=64, val_size=200)


def wait_for(predicate, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_run_files_and_snapshot(small_data, runs_root):
    manager = RunManager(runs_root, lambda: small_data)
    run_id = manager.start(TrainConfig(**QUICK), owner="alice")
    snap = manager.wait(run_id, timeout=120)
    assert snap.status == "finished" and len(snap.epochs) == 2 and snap.has_checkpoint
    folder = runs_root / run_id
    assert {"config.json", "metrics.csv", "log.txt", "status.json", "checkpoint.pt"} <= {
        p.name for p in folder.iterdir()}
    assert json.loads((folder / "config.json").read_text())["model"] == "lenet"
    lines = (folder / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("kind,epoch,step") and lines[-1].startswith("end,")
    assert "Epoch [2/2], train_loss:" in (folder / "log.txt").read_text()
    # a fresh manager (say, after a restart) reads the same run from disk
    disk = RunManager(runs_root, lambda: small_data).snapshot(run_id)
    assert disk.status == "finished" and [e["val_acc"] for e in disk.epochs] == pytest.approx(
        [e["val_acc"] for e in snap.epochs], abs=1e-5)
    [summary] = manager.list_runs()
    assert summary.run_id == run_id
    assert summary.best_val_acc == pytest.approx(max(e["val_acc"] for e in disk.epochs), abs=1e-5)


def test_one_trainer_at_a_time_and_owner_only_stop(small_data, runs_root):
    manager = RunManager(runs_root, lambda: small_data)
    run_id = manager.start(TrainConfig(**SLOW), owner="alice")
    assert wait_for(lambda: manager.snapshot(run_id).steps)
    with pytest.raises(BusyError, match="Busy: the trainer is training lenet"):
        manager.start(TrainConfig(**QUICK), owner="bob")
    assert manager.stop(run_id, owner="bob") is False
    assert manager.snapshot(run_id).status == "running"
    assert manager.stop(run_id, owner="alice") is True
    snap = manager.wait(run_id, timeout=60)
    assert snap.status == "stopped" and snap.has_checkpoint
    # the trainer is free again
    second = manager.start(TrainConfig(**QUICK), owner="bob")
    assert manager.wait(second, timeout=120).status == "finished"


def test_resume_a_stopped_run(small_data, runs_root):
    manager = RunManager(runs_root, lambda: small_data)
    run_id = manager.start(TrainConfig(**{**QUICK, "epochs": 4}), owner="a")
    assert wait_for(lambda: len(manager.snapshot(run_id).epochs) >= 1)
    manager.stop(run_id, "a")
    stopped = manager.wait(run_id, timeout=60)
    assert stopped.status == "stopped"
    manager.start(None, owner="a", resume_run_id=run_id)
    snap = manager.wait(run_id, timeout=120)
    assert snap.status == "finished"
    assert [e["epoch"] for e in snap.epochs][-1] == 4


def test_invalid_config_starts_nothing(small_data, runs_root):
    manager = RunManager(runs_root, lambda: small_data)
    with pytest.raises(ConfigError):
        manager.start({"lr": -1}, owner="a")
    with pytest.raises(ConfigError, match="larger than"):
        manager.start(TrainConfig(**{**QUICK, "batch_size": 4000}), owner="a")
    assert list(runs_root.iterdir()) == []
    assert manager.start(TrainConfig(**QUICK), owner="a")  # the trainer was not left busy


def test_abandoned_run_is_stopped(small_data, runs_root):
    manager = RunManager(runs_root, lambda: small_data, rules=RunRules(abandon_after_s=0.5))
    run_id = manager.start(TrainConfig(**SLOW), owner="a")
    snap = manager.wait(run_id, timeout=60)
    assert snap.status == "stopped" and "nobody watched" in snap.message


def test_failure_is_recorded_and_frees_the_trainer(small_data, runs_root, monkeypatch):
    import cifarapp.train as train

    def boom(*a, **kw):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    manager = RunManager(runs_root, lambda: small_data)
    monkeypatch.setattr(train.F, "cross_entropy", boom)
    run_id = manager.start(TrainConfig(**QUICK), owner="a")
    snap = manager.wait(run_id, timeout=60)
    monkeypatch.undo()
    assert snap.status == "failed" and "lower the batch size" in snap.message
    assert manager.wait(manager.start(TrainConfig(**QUICK), owner="a"), timeout=120).status == "finished"


def test_running_status_left_by_a_dead_process_reads_as_interrupted_and_reads_never_write(small_data, runs_root):
    manager = RunManager(runs_root, lambda: small_data)
    run_dir = manager.run_dir("20260101-000000-lenet-abcdef")
    run_dir.create(TrainConfig(**QUICK))
    run_dir.write_status(status="running", pid=2**22 + 12345, started=time.time())
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.path.iterdir()}
    assert RunManager(runs_root, lambda: small_data).snapshot(run_dir.run_id).status == "interrupted"
    [summary] = RunStore(runs_root).list_runs()
    assert summary.status == "interrupted"
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.path.iterdir()} == before


@pytest.mark.parametrize("bad", ["../etc", "..", "a/b", "/abs", "", ".hidden", "a\\..\\b", "x" * 200, "run1\n",
                                 "run1\n../x", "ok\x00"])
def test_run_ids_cannot_escape_the_runs_folder(runs_root, bad):
    with pytest.raises(RunError):
        RunDir(runs_root, bad)


def test_delete(small_data, runs_root):
    manager = RunManager(runs_root, lambda: small_data)
    run_id = manager.start(TrainConfig(**QUICK), owner="a")
    manager.wait(run_id, timeout=120)
    manager.delete(run_id)
    assert not (runs_root / run_id).exists()
    with pytest.raises(RunError):
        manager.delete(run_id)


def test_two_simultaneous_starts_start_exactly_one_run(small_data, runs_root):
    import threading

    manager = RunManager(runs_root, lambda: small_data)
    manager.data.get()
    barrier = threading.Barrier(2)
    outcomes = []

    def press_start(owner):
        barrier.wait()
        try:
            outcomes.append((owner, manager.start(TrainConfig(**SLOW), owner=owner)))
        except BusyError:
            outcomes.append("busy")

    threads = [threading.Thread(target=press_start, args=(o,)) for o in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    started = [o for o in outcomes if o != "busy"]
    assert len(started) == 1 and outcomes.count("busy") == 1
    assert len(list(runs_root.iterdir())) == 1
    owner, run_id = started[0]
    assert manager.stop(run_id, owner)
    manager.wait(run_id, timeout=60)


@pytest.mark.slow
def test_two_runs_at_once_give_the_numbers_of_one_run_alone(small_data, runs_root, fixed_layout):
    """Each run draws from its own generators (order, augmentation, dropout), so runs in
    parallel threads cannot disturb each other's random numbers."""
    config = TrainConfig(model="cnn6", epochs=2, batch_size=64, train_size=384, val_size=200, precision="fp32",
                         augment=("crop", "flip"))
    alone = fit(config, small_data, measurements=fixed_layout)
    manager = RunManager(runs_root, lambda: small_data, max_active=2, measurements=fixed_layout)
    ids = [manager.start(config, owner=owner) for owner in ("a", "b")]
    together = [manager.wait(run_id, timeout=300) for run_id in ids]
    expected = [(e["train_loss"], e["val_acc"]) for e in alone.history]
    for snap in together:
        assert snap.status == "finished"
        assert [(e["train_loss"], e["val_acc"]) for e in snap.epochs] == expected
    weights = [torch.load(runs_root / run_id / "checkpoint.pt", weights_only=True)["state_dict"] for run_id in ids]
    for key, value in alone.model.state_dict().items():
        assert torch.equal(weights[0][key], value.cpu()) and torch.equal(weights[1][key], value.cpu()), key


def test_a_failed_runs_traceback_is_in_its_log_and_the_server_log(small_data, runs_root, monkeypatch, caplog):
    import cifarapp.train as train

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug in the training step")

    monkeypatch.setattr(train, "train_step", broken)
    manager = RunManager(runs_root, lambda: small_data)
    with caplog.at_level("ERROR", logger="cifarapp.runs"):
        snap = manager.wait(manager.start(TrainConfig(**QUICK), owner="a"), timeout=60)
    assert snap.status == "failed" and "ZeroDivisionError" in snap.message
    text = (runs_root / snap.run_id / "log.txt").read_text()
    assert "Traceback (most recent call last)" in text and "in broken" in text
    assert any(record.exc_info and "a bug in the training step" in str(record.exc_info[1]) for record in caplog.records)


@pytest.mark.slow
def test_a_run_trained_as_a_chain_of_short_gpu_calls_equals_one_run(small_data, runs_root, fixed_layout):
    """The ZeroGPU path with `spaces.GPU` as the identity: each call continues from the checkpoint
    the one before it left and pauses before its time is up; exact resume makes the chain one run."""
    from cifarapp import checkpoints

    config = TrainConfig(**{**QUICK, "epochs": 3, "augment": ("translate", "alt_flip"), "lookahead": True})
    alone = fit(config, small_data, measurements=fixed_layout)
    manager = RunManager(runs_root, lambda: small_data, gpu_chunk_s=1.5, measurements=fixed_layout)
    run_id = manager.start(config, owner="alice")
    snap = manager.wait(run_id, timeout=300)
    assert snap.status == "finished", snap.message
    log = (runs_root / run_id / "log.txt").read_text()
    assert log.count("continued") >= 2, "the run took several calls"
    chained = checkpoints.read(runs_root / run_id / "checkpoint.pt")["state_dict"]
    for key, value in alone.model.state_dict().items():
        assert torch.equal(chained[key], value.cpu()), key
    assert [e["val_acc"] for e in snap.epochs] == pytest.approx([h["val_acc"] for h in alone.history], abs=1e-5)


@pytest.mark.slow
def test_a_chained_run_stops_between_calls_and_refuses_what_zero_gpu_cannot_do(small_data, runs_root):
    manager = RunManager(runs_root, lambda: small_data, gpu_chunk_s=1.0)
    run_id = manager.start(TrainConfig(**SLOW), owner="alice")
    assert wait_for(lambda: len(manager.snapshot(run_id).steps) > 3)
    assert manager.stop(run_id, "alice")
    snap = manager.wait(run_id, timeout=120)
    assert snap.status == "stopped" and snap.has_checkpoint
    with pytest.raises(RunError, match="1 process"):
        manager.start(TrainConfig(**{**QUICK, "nproc": 2}), owner="alice")
    with pytest.raises(RunError, match="torch.compile"):
        manager.start(TrainConfig(**{**QUICK, "compile": True}), owner="alice")


def test_on_zero_gpu_chunks_are_spaces_gpu_calls_of_the_chunk_length(small_data, runs_root, monkeypatch):
    """With SPACES_ZERO_GPU set, the manager wraps its chunk in `spaces.GPU(duration=...)` once, when
    it is built (a stand-in `spaces` module records the wrapping; ZeroGPU itself is not here)."""
    import sys
    import types

    wrapped = []

    def gpu(duration):
        def decorate(function):
            wrapped.append((function.__name__, duration))
            return function
        return decorate

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setenv("CIFARAPP_GPU_CHUNK_S", "45")
    manager = RunManager(runs_root, lambda: small_data)
    assert wrapped == [("_train_chunk", 45)] and manager.chunked
    assert manager.launcher_for(TrainConfig(**QUICK)) == "gpu chunks"
    monkeypatch.setitem(sys.modules, "spaces", None)  # an import of it now fails
    with pytest.raises(RunError, match="add `spaces` to requirements.txt"):
        RunManager(runs_root, lambda: small_data)


def test_a_run_whose_processes_outlived_the_app_is_stopped_through_its_folder(runs_root):
    import subprocess
    import sys

    from cifarapp.runs import owner_key

    still_training = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run_dir = RunDir(runs_root, "20261201-000000-lenet-abc123")
        run_dir.create(TrainConfig(**QUICK))
        run_dir.write_status(status="running", pid=still_training.pid, owner_key=owner_key("alice"))
        manager = RunManager(runs_root)  # a new app: the run is not one of its own threads or processes
        assert not manager.stop(run_dir.run_id, "mallory") and not run_dir.stop_file.exists()
        assert manager.stop(run_dir.run_id, "alice") and run_dir.stop_file.exists()
    finally:
        still_training.kill()


def test_the_process_that_failed_first_is_the_reason_a_run_failed(runs_root):
    """After the processes of a run exit, the recorded reason is the first failure: one the launcher
    names as a kill, else process 0's when it came before the others', else theirs."""
    import os

    from cifarapp.runs import settle_after_exit

    def failed_run(name: str, main_failed_at: float, peer_failed_at: float) -> RunDir:
        run_dir = RunDir(runs_root, f"20261201-000000-lenet-{name}")
        run_dir.create(TrainConfig(**QUICK))
        run_dir.write_status(status="failed", ended=main_failed_at, message="timed out waiting for process 1")
        run_dir.error_file(1).write_text("RuntimeError: Connection closed by peer\n\ntraceback")
        os.utime(run_dir.error_file(1), (peer_failed_at, peer_failed_at))
        return run_dir

    now = time.time()
    later_peer = settle_after_exit(failed_run("aaaaaa", now - 10, now - 5), 1)
    assert later_peer["message"] == "timed out waiting for process 1"
    earlier_peer = settle_after_exit(failed_run("bbbbbb", now - 5, now - 10), 1)
    assert earlier_peer["message"] == "process 1 failed: RuntimeError: Connection closed by peer"
    summary = ("Root Cause (first observed failure):\n[0]:\n  time      : now\n  rank      : 1 (local_rank: 1)\n"
               "  exitcode  : -9 (pid: 42)\n  traceback : Signal 9 (SIGKILL) received by PID 42\n")
    killed = settle_after_exit(failed_run("cccccc", now - 10, now - 5), 1, summary)
    assert "process 1 was killed by SIGKILL" in killed["message"], killed["message"]
