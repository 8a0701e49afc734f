"""The app over its HTTP API with gradio_client: two sessions, start/refuse/stop, evaluate, predict."""

import re

import numpy as np
from api_helpers import form, poll_until
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image


def test_sessions_start_refuse_stop_evaluate_predict(app_server, tmp_path):
    url, runs = app_server.url, app_server.runs
    alice, bob = Client(url, verbose=False), Client(url, verbose=False)

    status = alice.predict("alice", *form(epochs=200, batch_size=32), api_name="/start")
    assert "starting" in status
    out = poll_until(alice, "alice", lambda o: o[-1] == "running" and "img/s" in o[2])
    assert "img/s" in out[2] and re.search(r"epoch \d+/200", out[2])

    refused = bob.predict("bob", *form(epochs=1), api_name="/start")
    assert "Not started" in refused and "Busy" in refused and "lenet" in refused
    assert "Nothing of yours" in bob.predict("bob", api_name="/stop")
    assert alice.predict("alice", api_name="/poll")[-1] == "running"

    assert "stopping" in alice.predict("alice", api_name="/stop")
    out = poll_until(alice, "alice", lambda o: o[-1] == "stopped")
    assert "stopped" in out[3]

    status = alice.predict("alice", *form(epochs=3), api_name="/start")
    run_id = status.split("`")[1]
    out = poll_until(alice, "alice", lambda o: o[-1] == "finished")
    assert "Epoch [3/3]" in out[4]
    loss = out[0]["data"]
    assert len(loss) > 10, "the loss plot has points"
    assert (runs / run_id / "checkpoint.pt").is_file()

    ev = bob.predict(f"run:{run_id}", "flip_translate", "bob", api_name="/evaluate")
    accuracy = float(ev[1].split("Accuracy ")[1].split("%")[0]) / 100
    assert accuracy > 0.5  # chance is 0.1 on the synthetic shapes
    assert "synthetic" in ev[0]
    drilled, heading = bob.predict("top losses", api_name="/drill_down")
    assert len(drilled) == 24 and "loss" in heading.lower()
    again = bob.predict(f"run:{run_id}", "none", "bob", api_name="/evaluate")
    assert again[10:12] == ([], ""), "a new evaluation clears the previous one's drill-down"

    image = tmp_path / "shape.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(image)
    label, answer, seen, message = bob.predict(f"run:{run_id}", handle_file(str(image)), api_name="/predict")
    assert "Grad-CAM" in seen and answer.startswith("###")
    assert label["label"] in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    confidences = [c["confidence"] for c in label["confidences"]]
    assert len(confidences) == 3 and confidences == sorted(confidences, reverse=True) and sum(confidences) <= 1.001
    assert message == ""

    bad = tmp_path / "bad.png"
    bad.write_text("not a png")
    label, answer, seen, message = bob.predict(f"run:{run_id}", handle_file(str(bad)), api_name="/predict")
    assert "bad.png: not an image file" in message and not seen
    again = bob.predict(f"run:{run_id}", handle_file(str(image)), api_name="/predict")
    assert again[0]["label"] and again[3] == "", "the server keeps serving after a bad file"
    rows, message = bob.predict(f"run:{run_id}", [handle_file(str(image)), handle_file(str(bad))],
                                api_name="/predict_files")
    assert len(rows["data"]) == 1 and "bad.png" in message


def test_invalid_settings_start_nothing(app_server):
    url, runs = app_server.url, app_server.runs
    client = Client(url, verbose=False)
    before = set(runs.iterdir()) if runs.exists() else set()
    for bad in [dict(lr=-1), dict(epochs=0), dict(batch_size=10**9), dict(lr=1e9),
                dict(model="vgg"), dict(augment=["mixup"])]:
        try:
            status = client.predict("carol", *form(**bad), api_name="/start")
        except AppError as exc:  # Gradio's own range check of the component refused it
            status = f"Not started: {exc}"
        assert "Not started" in status, bad
    assert (set(runs.iterdir()) if runs.exists() else set()) == before
