"""A real browser (Debian's Chromium driven by Playwright) uses every tab of the running app.

Screenshots of each tab are written to tests/screenshots/ (look at them: they are the proof).
"""

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).parent / "screenshots"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]

if not Path(CHROMIUM).exists() and os.environ.get("CI") != "true":
    pytest.skip("Debian's chromium is not installed (apt-get install chromium); CI runs this test",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api") if os.environ.get("CI") != "true" else __import__(
    "playwright.sync_api", fromlist=["sync_playwright"])


@pytest.fixture(scope="module")
def page(app_server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        pg = context.new_page()
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()


BAD_SETTINGS = [("Learning rate", "-1"), ("Learning rate", "1e9"), ("Epochs", "0"), ("Epochs", "2.5"),
                ("Batch size", "1000000000"), ("Label smoothing", "1.5"), ("Warm-up epochs", "99"),
                ("Weight decay", "-0.1")]


def test_bad_settings_typed_in_the_browser_start_nothing(page, app_server):
    SHOTS.mkdir(exist_ok=True)
    for label, value in BAD_SETTINGS:
        page.goto(app_server.url)
        page.get_by_role("button", name="Start training").wait_for()
        field = page.get_by_label(label, exact=True)
        field.fill(value)
        field.press("Tab")
        page.get_by_role("button", name="Start training").click()
        # our validation message in the status line, or Gradio's own range check as an error toast
        page.wait_for_function(
            "document.querySelector('#train-status')?.innerText.includes('Not started')"
            " || [...document.querySelectorAll('.toast-body')].some(t => /error/i.test(t.innerText))")
        if label == "Learning rate" and value == "1e9":
            page.screenshot(path=str(SHOTS / "bad_settings.png"), full_page=True)
        page.wait_for_timeout(300)
        made = sorted(p.name for p in app_server.runs.iterdir()) if app_server.runs.exists() else []
        assert made == [], f"{label}={value} made run folders {made}"
    page.goto(app_server.url)
    page.get_by_role("button", name="Start training").wait_for()
    assert "running" not in page.locator("#train-status").inner_text()


def test_train_stop_evaluate_predict_in_a_browser(page, app_server, tmp_path):
    url, runs = app_server.url, app_server.runs
    SHOTS.mkdir(exist_ok=True)
    page.goto(url)
    page.get_by_role("button", name="Start training").wait_for()

    # Train: set 300 epochs so the run is still going when we stop it
    epochs = page.get_by_label("Epochs", exact=True)
    epochs.fill("300")
    epochs.press("Tab")
    page.get_by_text("More settings").click()
    val = page.get_by_label("Validation images")
    val.fill("200")
    val.press("Tab")
    page.get_by_role("button", name="Start training").click()
    page.wait_for_function("document.querySelector('#train-progress')?.innerText.includes('img/s')")
    # points appear in the loss plot (Vega draws marks into an SVG or canvas)
    page.wait_for_function(
        "(() => { const p = document.querySelector('#loss-plot');"
        " return p && (p.querySelectorAll('path, circle').length > 0 || p.querySelector('canvas')); })()")
    page.wait_for_function("/epoch ([3-9]|\\d\\d+)\\/300/.test(document.querySelector('#train-progress')?.innerText)")
    page.screenshot(path=str(SHOTS / "train.png"), full_page=True)
    # a reload re-attaches to the running run: progress continues, Stop still works
    page.reload()
    page.wait_for_function("/epoch \\d+\\/300/.test(document.querySelector('#train-progress')?.innerText)")
    page.wait_for_function("document.querySelector('#train-status')?.innerText.includes('running')")
    page.get_by_role("button", name="Stop").click()
    try:
        page.wait_for_function("document.querySelector('#train-status')?.innerText.includes('stopped')")
    except Exception:
        page.screenshot(path=str(SHOTS / "failure.png"), full_page=True)
        raise
    page.screenshot(path=str(SHOTS / "train_stopped.png"), full_page=True)
    run_id = re.search(r"run (\S+) ·", page.locator("#train-status").inner_text()).group(1).strip("`")
    assert (runs / run_id / "checkpoint.pt").is_file()

    # Evaluate the stopped run
    page.get_by_role("tab", name="Evaluate").click()
    page.locator("#eval-model input").click()
    page.get_by_role("option", name=re.compile(run_id)).click()
    page.get_by_role("button", name="Evaluate").click()
    page.wait_for_function("document.querySelector('#eval-summary')?.innerText.includes('Accuracy')")
    accuracy = float(re.search(r"Accuracy ([\d.]+)%", page.locator("#eval-summary").inner_text()).group(1))
    assert accuracy > 50  # synthetic shapes; chance is 10%
    page.wait_for_timeout(500)
    page.screenshot(path=str(SHOTS / "evaluate.png"), full_page=True)

    # Predict with an uploaded PNG
    page.get_by_role("tab", name="Predict").click()
    page.locator("#predict-model input").click()
    page.get_by_role("option", name=re.compile(run_id)).click()
    png = tmp_path / "upload.png"
    Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[:, None, None], (1, 64, 3))).save(png)
    page.locator("#predict-image input[type=file]").set_input_files(str(png))
    page.wait_for_function(
        "(() => { const l = document.querySelector('#predict-label'); return l && /\\d+%/.test(l.innerText); })()")
    label = page.locator("#predict-label").inner_text()
    assert re.search(r"(airplane|automobile|bird|cat|deer|dog|frog|horse|ship|truck)", label)
    page.locator("#predict-seen img").wait_for()
    page.screenshot(path=str(SHOTS / "predict.png"), full_page=True)

    # Runs
    page.get_by_role("tab", name="Runs").click()
    page.wait_for_function(f"document.querySelector('#runs-table')?.innerText.includes('{run_id}')")
    page.wait_for_timeout(1500)
    page.screenshot(path=str(SHOTS / "runs.png"), full_page=True)
