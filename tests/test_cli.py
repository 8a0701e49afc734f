import json
import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import ROOT


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "cifarapp", *args], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300)


def test_train_evaluate_predict(tmp_path):
    train = cli("train", "--data", "synthetic", "--model", "lenet", "--epochs", "2", "--val-size", "200",
                "--augment", "flip", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    assert "Epoch [2/2], train_loss:" in train.stdout and "finished" in train.stdout
    run_id = train.stdout.split()[1]
    ev = cli("evaluate", run_id, "--data", "synthetic", "--json", "e.json", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["accuracy"] > 0.3 and len(result["confusion"]) == 10
    assert sum(map(sum, result["confusion"])) == 500
    Image.fromarray(np.full((50, 70, 3), 128, np.uint8)).save(tmp_path / "x.png")
    (tmp_path / "bad.png").write_text("hello")
    pr = cli("predict", "x.png", "bad.png", "--model", run_id, cwd=tmp_path)
    assert pr.returncode == 1
    assert pr.stdout.startswith("x.png: ") and "%" in pr.stdout
    assert "bad.png: error: " in pr.stderr
    listing = cli("runs", cwd=tmp_path)
    assert run_id in listing.stdout and "finished" in listing.stdout


def test_bad_option_gives_a_message_not_a_traceback(tmp_path):
    out = cli("train", "--data", "synthetic", "--lr", "-3", cwd=tmp_path)
    assert out.returncode == 2 and "error: learning rate must be greater than 0" in out.stderr
    assert "Traceback" not in out.stderr
    missing = cli("train", "--data", str(tmp_path / "none.npz"), cwd=tmp_path)
    assert missing.returncode == 2 and "CIFARAPP_DATA" in missing.stderr


def test_help_explains_options(tmp_path):
    out = cli("train", "--help", cwd=tmp_path)
    assert "--label-smoothing" in out.stdout and "peak learning rate" in out.stdout
