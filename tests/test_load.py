"""Load on a live server: 20 Predict sessions during training, and 400 polls without memory growth.

Loopback only and bounded in time. `python -m pytest tests/test_load.py -s` prints the figures
quoted in the README.
"""

import threading
import time
from pathlib import Path

import numpy as np
from api_helpers import form, poll_until
from gradio_client import Client, handle_file
from PIL import Image

from cifarapp.data import CIFAR10_CLASSES

SESSIONS = 20
LOAD_SECONDS = 30
POLLS = 400
POLLING_SESSIONS = 4


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def test_twenty_predict_sessions_while_training(app_server, tmp_path):
    trainer = Client(app_server.url, verbose=False)
    trainer.predict("trainer", *form(epochs=500, batch_size=32), api_name="/start")
    poll_until(trainer, "trainer", lambda o: o[-1] == "running")

    image = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(image)
    clients = [Client(app_server.url, verbose=False) for _ in range(SESSIONS)]
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + LOAD_SECONDS

    def session(client: Client) -> None:
        while time.monotonic() < deadline:
            t = time.perf_counter()
            try:
                label, _, seen, message = client.predict("shipped:fastnet", handle_file(str(image)),
                                                        api_name="/predict")
            except Exception as exc:  # any failure counts; the assertion below lists them
                errors.append(repr(exc))
                continue
            latencies.append(time.perf_counter() - t)
            if message or label["label"] not in CIFAR10_CLASSES or "<img" not in seen:
                errors.append(f"bad answer: {label!r} {message!r}")

    threads = [threading.Thread(target=session, args=(c,)) for c in clients]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(LOAD_SECONDS + 120)
    wall = time.perf_counter() - t0
    status = trainer.predict("trainer", api_name="/poll")[-1]
    trainer.predict("trainer", api_name="/stop")

    p50, p95 = (np.percentile(latencies, q) * 1000 for q in (50, 95)) if latencies else (np.nan, np.nan)
    print(f"\nload: {SESSIONS} sessions x {LOAD_SECONDS}s during training: {len(latencies)} predictions served "
          f"in {wall:.1f}s ({len(latencies) / wall:.1f}/s), p50 {p50:.0f} ms, p95 {p95:.0f} ms, "
          f"{len(errors)} errors")
    assert not errors, (errors[:5], app_server.log.read_text()[-2000:])
    assert not any(t.is_alive() for t in threads), "a session hung"
    assert len(latencies) >= SESSIONS * 5, "every session got several answers"
    assert status == "running", "training kept going under the load"


def test_hundreds_of_polls_do_not_grow_server_memory(app_server):
    watchers = [Client(app_server.url, verbose=False) for _ in range(POLLING_SESSIONS)]
    watchers[0].predict("watcher", *form(epochs=500, batch_size=256), api_name="/start")
    poll_until(watchers[0], "watcher", lambda o: o[-1] == "running")
    changed = []

    def poll(client: Client, times: int) -> None:
        for _ in range(times):
            out = client.predict("watcher", api_name="/poll")
            changed.append(isinstance(out[0], dict))  # a fresh loss plot, not a skip

    def poll_in_parallel(times: int) -> None:
        threads = [threading.Thread(target=poll, args=(c, times // len(watchers))) for c in watchers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)

    poll_in_parallel(100)  # warm up: imports, caches and allocator pools settle
    before, changed[:] = rss_mb(app_server.pid), []
    poll_in_parallel(POLLS)
    after = rss_mb(app_server.pid)
    watchers[0].predict("watcher", api_name="/stop")
    print(f"\nmemory: {len(changed)} polls ({sum(changed)} with new plot data) during training: "
          f"server RSS {before:.0f} MB -> {after:.0f} MB")
    assert len(changed) == POLLS
    assert sum(changed) >= POLLS // 10, "the polls saw a run that kept changing"
    # the run's own step history grows by a few hundred small rows in this time
    # (a session copy that grew with every skipped plot output cost about 24 MB per 400 polls)
    assert after - before < 15, f"server memory grew by {after - before:.0f} MB over {POLLS} polls"
