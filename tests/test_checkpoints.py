"""Checkpoints are written atomically and loading one never executes code."""

import os
import pickle

import pytest
import torch

from cifarapp import checkpoints


class CreatesAFile:
    """Unpickling this calls os.system: a hostile 'checkpoint'."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": checkpoints.FORMAT, "payload": CreatesAFile(marker)}, evil)
    with pytest.raises(checkpoints.CheckpointError, match="not a loadable checkpoint"):
        checkpoints.load_model(evil)
    assert not marker.exists()
    # the file really is hostile: an unsafe load runs its command (harmless here: touch in tmp_path)
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_foreign_and_broken_files_are_refused(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(checkpoints.CheckpointError, match="not a cifarapp checkpoint"):
        checkpoints.read(other)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"\x80\x04garbage")
    with pytest.raises(checkpoints.CheckpointError):
        checkpoints.read(broken)
    plain_pickle = tmp_path / "plain.pkl"
    plain_pickle.write_bytes(pickle.dumps(CreatesAFile(tmp_path / "pwned2")))
    with pytest.raises(checkpoints.CheckpointError):
        checkpoints.read(plain_pickle)
    assert not (tmp_path / "pwned2").exists()


def test_atomic_save_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    checkpoints.save_atomic({"format": checkpoints.FORMAT, "n": 1}, path)

    def failing_save(obj, fh):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints.torch, "save", failing_save)
    with pytest.raises(OSError):
        checkpoints.save_atomic({"format": checkpoints.FORMAT, "n": 2}, path)
    monkeypatch.undo()
    assert checkpoints.read(path)["n"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"], "no temporary file is left behind"


def test_a_broken_calibration_record_is_refused_when_the_checkpoint_loads():
    from cifarapp.data import Normalization
    from cifarapp.models import build_model

    model = build_model("lenet", num_classes=10)
    payload = checkpoints.make_payload(model, model_name="lenet", width=1.0, classes=[str(i) for i in range(10)],
                                       normalization=Normalization(), config={}, metrics=[], dataset=None,
                                       extra={"calibration": {"temperature": -2.0}})
    with pytest.raises(checkpoints.CheckpointError, match="calibration record is incomplete"):
        checkpoints.LoadedModel.from_payload(payload, device="cpu", precision="fp32")
