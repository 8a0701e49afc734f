"""An outside client attacks a live app: each hole the API once had is tried and must fail, and
every API endpoint gets hostile values without a traceback in the server log."""

import json
import math
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from api_helpers import form, poll_until
from conftest import running_app
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

LIMITS = ("--max-runs-per-hour", "20", "--max-uploads-per-minute", "1000", "--max-polls-per-second", "5")
ALICE = "alice-secret-token-123"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("secure"), *LIMITS) as server:
        yield server


def call(url: str, api_name: str, data: list, timeout: float = 60) -> tuple[str, object]:
    """One call through the queue's REST route (as curl would): ('complete' | 'error', data)."""
    body = json.dumps({"data": data})  # NaN and Infinity as Python writes them: hostile, but parseable
    joined = httpx.post(f"{url}gradio_api/call/{api_name}", content=body,
                        headers={"content-type": "application/json"}, timeout=timeout)
    if joined.status_code != 200:
        return "refused", joined.status_code
    event_id = joined.json()["event_id"]
    kind, payload = "error", None
    with httpx.stream("GET", f"{url}gradio_api/call/{api_name}/{event_id}", timeout=timeout) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind in ("complete", "error"):
                text = line.split(":", 1)[1].strip()
                payload = json.loads(text) if text not in ("", "null") else None
                return kind, payload
    return kind, payload


def start_finished_run(app, client, token=ALICE, epochs=1) -> str:
    status = client.predict(token, *form(epochs=epochs), api_name="/start")
    run_id = status.split("`")[1]
    poll_until(client, token, lambda o: o[-1] == "finished")
    return run_id


def test_owner_tokens_and_run_files_are_not_served(app):
    alice = Client(app.url, verbose=False)
    run_id = start_finished_run(app, alice)
    folder = app.runs / run_id
    for name in ("status.json", "checkpoint.pt", "config.json", "log.txt", "metrics.csv"):
        assert (folder / name).is_file()
        response = httpx.get(f"{app.url}gradio_api/file={folder / name}", timeout=30)
        assert response.status_code == 403, (name, response.status_code)
        assert ALICE not in (folder / name).read_bytes().decode("latin-1"), f"the token sits in {name}"
    # the owner downloads a copy through the poll handler; nobody else gets one
    out = Client(app.url, verbose=False).predict(ALICE, api_name="/poll")  # alice's second browser tab
    download = out[5]
    assert download and "checkpoint" in str(download), out
    bob = Client(app.url, verbose=False)
    assert "Nothing of yours" in bob.predict("bob-token", api_name="/stop")
    assert "belongs to someone else" in bob.predict("bob-token", run_id, [], api_name="/delete_run")[3]
    assert folder.exists()


def test_predict_never_opens_a_path_the_client_names(app, tmp_path):
    secret = tmp_path / "server-side.png"
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(secret)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    answers = []
    for path in (str(secret), "/etc/hostname", "/no/such/file", str(fifo), "../../etc/passwd"):
        started = time.time()
        kind, data = call(app.url, "predict", ["shipped:lenet", {"path": path}])
        assert time.time() - started < 20, f"{path} blocked a worker"
        assert not (kind == "complete" and data and data[0]), f"{path} was read: {data}"
        answers.append((kind, json.dumps(data)))
    # the same answer for an image, a text file, a missing file and a FIFO: no oracle
    assert len(set(answers)) == 1, answers
    # a genuine upload still works, and a genuine undecodable upload gets the engine's message
    client = Client(app.url, verbose=False)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert "not an image file" in client.predict("shipped:lenet", handle_file(str(bad)), api_name="/predict")[3]
    # the multi-file input refuses such paths too, with or without Gradio's file marker
    for item in ({"path": str(secret)}, {"path": str(secret), "meta": {"_type": "gradio.FileData"}}):
        kind, data = call(app.url, "predict_files", ["shipped:lenet", [item]])
        assert not (kind == "complete" and data and data[0] and data[0].get("data")), data


def test_anonymous_callers_do_not_share_an_owner(app):
    # the REST route that had no session at all is closed (see also test_direct_rest_calls...)
    assert httpx.post(f"{app.url}gradio_api/run/start", json={"data": [None, *form(epochs=1)]},
                      timeout=30).status_code == 404
    kind, data = call(app.url, "start", [None, *form(epochs=1)])
    assert kind == "complete" and "starting" in data[1], data
    run_id, token = data[1].split("`")[1], data[1].split("`")[3]
    assert "owner token" in data[1] and len(token) >= 16
    # another anonymous caller cannot stop or delete it; the token given back can stop it
    kind, data = call(app.url, "stop", [None])
    assert kind == "complete" and "Nothing of yours" in data[0]
    deadline = time.time() + 60
    while (app.runs / run_id / "status.json").exists() and time.time() < deadline:
        if json.loads((app.runs / run_id / "status.json").read_text())["status"] != "running":
            break
        time.sleep(0.5)
    kind, data = call(app.url, "delete_run", [None, run_id, []])
    assert kind == "complete" and "❌" in data[3], data
    assert (app.runs / run_id).exists()
    kind, data = call(app.url, "delete_run", [token, run_id, []])
    assert kind == "complete" and "Deleted" in data[3], data
    assert not (app.runs / run_id).exists()


def test_direct_rest_calls_cannot_skip_the_queue(app):
    for api_name in ("evaluate", "start", "predict", "poll", "delete_run"):
        response = httpx.post(f"{app.url}gradio_api/run/{api_name}", json={"data": []}, timeout=30)
        assert response.status_code == 404, (api_name, response.status_code)


def test_evaluations_run_one_at_a_time_for_any_client(app):
    log_start = len(app.log.read_text())
    clients = [Client(app.url, verbose=False) for _ in range(4)]
    jobs = [c.submit("shipped:fastnet_w075", "none", None, api_name="/evaluate") for c in clients]
    assert all("Accuracy" in job.result()[1] for job in jobs)
    events = re.findall(r"evaluation (started|finished)", app.log.read_text()[log_start:])
    assert events == ["started", "finished"] * 4, events  # never two at once


def test_only_the_owner_records_a_test_accuracy(app):
    alice = Client(app.url, verbose=False)
    run_id = start_finished_run(app, alice)
    bob = Client(app.url, verbose=False)
    note = bob.predict(f"run:{run_id}", "none", "bob-token", api_name="/evaluate")[0]
    assert "kept with the run" not in note and not (app.runs / run_id / "evaluation.json").exists()
    note = alice.predict(f"run:{run_id}", "none", ALICE, api_name="/evaluate")[0]
    assert "kept with the run" in note and (app.runs / run_id / "evaluation.json").exists()


def test_runs_per_hour_uploads_per_minute_and_polls_per_second_are_limited(tmp_path):
    with running_app(tmp_path, "--max-runs-per-hour", "3", "--max-uploads-per-minute", "40") as app:
        check_limits(app)


def check_limits(app):
    carol = Client(app.url, verbose=False)
    messages = []
    for _ in range(4):
        messages.append(carol.predict("carol-token", *form(epochs=1), api_name="/start"))
        if "starting" in messages[-1]:
            poll_until(carol, "carol-token", lambda o: o[-1] in ("finished", "stopped", "failed"))
    assert "Too many runs started" in messages[-1] and "per hour" in messages[-1]
    assert sum("starting" in m for m in messages) == 3

    codes = [httpx.post(f"{app.url}gradio_api/upload", files={"files": ("x.png", b"\0" * 100, "image/png")},
                        timeout=30).status_code for _ in range(45)]
    assert 429 in codes and codes[0] == 200
    refused = httpx.post(f"{app.url}gradio_api/upload", files={"files": ("x.png", b"\0", "image/png")}, timeout=30)
    assert "Too many uploads" in refused.json()["error"]

    dave = Client(app.url, verbose=False)
    polls = [dave.submit("dave-token", api_name="/poll") for _ in range(12)]  # at once: faster than 5 per second
    statuses = [poll.result()[3] for poll in polls]
    assert any(isinstance(s, str) and "Too many polls" in s for s in statuses)


def test_malformed_values_get_short_plain_messages(app, tmp_path):
    client = Client(app.url, verbose=False)
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps({"model": "x" * 2_000_000}))
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 100_000 + "]" * 100_000)
    for file in (huge, nested):
        with pytest.raises(AppError) as err:
            client.predict(handle_file(str(file)), api_name="/load_config")
        assert "not a cifarapp config" in str(err.value) and len(str(err.value)) < 1000
    with pytest.raises(AppError) as err:
        client.predict("shipped:lenet", None, "x", api_name="/evaluate")
    assert "test-time augmentation" in str(err.value)
    runs_before = set(app.runs.iterdir())
    for bad in (dict(epochs=math.nan), dict(lr=math.inf), dict(batch_size="many"), dict(augment="mixup")):
        kind, data = call(app.url, "start", ["erin-token", *form(**bad)])
        assert kind == "error" or "Not started" in json.dumps(data), (bad, kind, data)
    assert set(app.runs.iterdir()) == runs_before
    assert "Traceback" not in app.log.read_text()


HOSTILE = [None, "", "../../etc/passwd", "/etc/passwd", "a\x00b", "x" * 100_000, math.nan, math.inf, -1e308,
           [], {}, [1, 2], {"path": "/etc/passwd"}, True, 12345678901234567890]


def test_every_endpoint_survives_hostile_values(app, tmp_path):
    api = Client(app.url, verbose=False).view_api(print_info=False, return_format="dict")
    endpoints = {name.lstrip("/"): info["parameters"] for name, info in api["named_endpoints"].items()}
    assert {"start", "stop", "poll", "evaluate", "predict", "predict_files", "delete_run", "list_runs",
            "load_config", "save_config"} <= set(endpoints)
    log_before = len(app.log.read_text())
    requests, covered = [], set()
    for name, params in endpoints.items():
        n_params = len(params)
        for position in range(max(n_params, 1)):
            # the first parameter gets every hostile value; each other one gets one of them, in turn,
            # once for all the endpoints it is part of (the training form's fields are in several)
            if position == 0:
                values = HOSTILE
            else:
                field = (params[position].get("label"), json.dumps(params[position].get("type"), sort_keys=True))
                values = [] if field in covered else [HOSTILE[position % len(HOSTILE)]]
                covered.add(field)
            for value in values:
                data = [None] * n_params
                if n_params:
                    data[position] = value
                requests.append((name, data))
    with ThreadPoolExecutor(8) as pool:
        kinds = list(pool.map(lambda request: call(app.url, *request, timeout=120)[0], requests))
    odd = [(request, kind) for request, kind in zip(requests, kinds) if kind not in ("complete", "error", "refused")]
    assert not odd, odd[:3]
    log = app.log.read_text()[log_before:]
    assert "Traceback" not in log, log[log.find("Traceback") - 200:log.find("Traceback") + 3000]
    image = tmp_path / "after.png"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(image)
    label, _, _, message = Client(app.url, verbose=False).predict("shipped:lenet", handle_file(str(image)),
                                                               api_name="/predict")
    assert label["label"] and message == "", "still serving normally"


def test_owner_only_exports_and_unguessable_evaluations(app):
    pytest.importorskip("onnxruntime")
    alice = Client(app.url, verbose=False)
    run_id = start_finished_run(app, alice)
    bob = Client(app.url, verbose=False)
    with pytest.raises(AppError, match="Only the run's owner can export"):
        bob.predict(f"run:{run_id}", "onnx", "bob-token", api_name="/export")
    exported, note = alice.predict(f"run:{run_id}", "onnx", ALICE, api_name="/export")
    assert str(exported).endswith(".onnx") and "max |difference|" in note
    assert not str(exported).startswith(str(app.runs)), "a fresh copy, never a run file"
    shipped, _ = bob.predict("shipped:lenet", "onnx", "bob-token", api_name="/export")
    assert str(shipped).endswith(".onnx")
    # an evaluation lives in its own session: a client that evaluated nothing drills into nothing
    # (its drill-down list offers no cell, and had it one, no evaluation would answer to it)
    bob.predict(f"run:{run_id}", "none", "bob-token", api_name="/evaluate")
    with pytest.raises(AppError, match="Evaluate a model first|not in the list of choices"):
        Client(app.url, verbose=False).predict("0:1", api_name="/drill_down")
