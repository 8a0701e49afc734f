import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
from conftest import ROOT
from PIL import Image

from cifarapp.__main__ import main

ENV = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "CIFARAPP_CACHE_DIR": os.environ["CIFARAPP_CACHE_DIR"]}


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "cifarapp", *args], cwd=cwd, capture_output=True, text=True,
                          env=ENV, timeout=300)


def in_process(capsys, *args) -> subprocess.CompletedProcess:
    """The CLI's main() in this process (no interpreter and torch to start), in the current
    directory, as `cli` reports it."""
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's refusals
        code = exc.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


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
    status = tmp_path / "runs" / run_id / "status.json"
    before = (status.read_bytes(), status.stat().st_mtime_ns)
    listing = cli("runs", cwd=tmp_path)
    assert run_id in listing.stdout and "finished" in listing.stdout
    assert (status.read_bytes(), status.stat().st_mtime_ns) == before, "listing runs wrote to a run"


def test_bad_option_gives_a_message_not_a_traceback(tmp_path, capsys):
    out = in_process(capsys, "train", "--data", "synthetic", "--lr", "-3")
    assert out.returncode == 2 and "error: learning rate must be greater than 0" in out.stderr
    assert "Traceback" not in out.stderr
    missing = in_process(capsys, "train", "--data", str(tmp_path / "none.npz"))
    assert missing.returncode == 2 and "CIFARAPP_DATA" in missing.stderr


def test_help_explains_options(capsys):
    out = in_process(capsys, "train", "--help")
    assert "--label-smoothing" in out.stdout and "peak learning rate" in out.stdout


def test_ctrl_c_stops_the_run_with_a_checkpoint_and_it_resumes(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "cifarapp", "train", "--data", "synthetic", "--model", "lenet",
                             "--epochs", "12", "--batch-size", "32", "--val-size", "200"], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_id = proc.stdout.readline().split()[1]
    deadline = time.time() + 120
    while "Epoch [" not in proc.stdout.readline() and time.time() < deadline:
        pass
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"cifarapp resume {run_id}" in err and "Traceback" not in err
    folder = tmp_path / "runs" / run_id
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "stopped" and (folder / "checkpoint.pt").is_file()
    resumed = cli("resume", run_id, "--data", "synthetic", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "Epoch [12/12]" in resumed.stdout
    assert json.loads((folder / "status.json").read_text())["status"] == "finished"


def test_insight_commands_lr_find_evaluate_explain_calibrate_export(tmp_path, capsys, monkeypatch):
    """The run is trained by the CLI in its own process; the commands on it run main() here."""
    monkeypatch.chdir(tmp_path)
    lr = in_process(capsys, "lr-find", "--data", "synthetic", "--model", "lenet", "--val-size", "200", "--steps", "40",
                    "--plot", "lr.png")
    assert lr.returncode == 0, lr.stderr
    suggested = float(lr.stdout.split("suggested lr: ")[1].split()[0])
    assert 1e-5 < suggested < 1 and (tmp_path / "lr.png").stat().st_size > 10_000
    train = cli("train", "--data", "synthetic", "--model", "lenet_bn", "--epochs", "3", "--val-size", "200",
                "--keep-best", "--patience", "5", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    run_id = train.stdout.split()[1]
    folder = tmp_path / "runs" / run_id
    assert (folder / "best.pt").is_file() and "the best epoch was" in train.stdout
    assert "calibrated" in (folder / "log.txt").read_text(), "the run ends calibrated on its validation images"
    ev = in_process(capsys, "evaluate", run_id, "--data", "synthetic", "--json", "e.json")
    assert ev.returncode == 0, ev.stderr
    assert "precision" in ev.stdout and "F1" in ev.stdout and "ECE" in ev.stdout
    result = json.loads((tmp_path / "e.json").read_text())
    assert 0 <= result["ece"] <= 1 and result["temperature"] != 1.0 and len(result["f1"]) == 10
    Image.fromarray(np.full((50, 70, 3), 128, np.uint8)).save(tmp_path / "x.png")
    pr = in_process(capsys, "predict", "x.png", "--model", run_id, "--explain", "maps")
    assert pr.returncode == 0, pr.stderr
    assert (tmp_path / "maps" / "x_gradcam.png").is_file() and "heat map:" in pr.stdout
    cal = in_process(capsys, "calibrate", run_id, "--data", "synthetic")
    assert cal.returncode == 0 and "temperature" in cal.stdout, cal.stderr
    ex = in_process(capsys, "export", run_id, "--format", "onnx", "--output", "m.onnx")
    if ex.returncode == 0:
        assert (tmp_path / "m.onnx").is_file() and "max |difference|" in ex.stdout
    else:  # onnx, onnxruntime or onnxscript missing: the message says how to install them
        assert 'pip install "cifarapp[export]"' in ex.stderr, ex.stderr
    missing = in_process(capsys, "export", run_id)
    assert missing.returncode == 2 and "--format onnx" in missing.stderr
