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
         "--disable-component-update", "--disable-sync", "--no-first-run",
         # a camera that shows Chromium's test pattern, granted without asking (the webcam snapshot test)
         "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]

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
    try:  # the id is read in the same check: Stop's own answer ("stopping…") may arrive after it
        run_id = page.wait_for_function(
            "(document.querySelector('#train-status')?.innerText.match(/stopped · run (\\S+) ·/) || [])[1]"
        ).json_value().strip("`")
    except Exception:
        page.screenshot(path=str(SHOTS / "failure.png"), full_page=True)
        raise
    page.wait_for_function("document.querySelector('#train-status')?.innerText.includes('stopped')")
    page.screenshot(path=str(SHOTS / "train_stopped.png"), full_page=True)
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
    label = wait_for_prediction(page)
    assert re.search(r"(airplane|automobile|bird|cat|deer|dog|frog|horse|ship|truck)", label)
    page.locator("#predict-seen img").first.wait_for()
    page.screenshot(path=str(SHOTS / "predict.png"), full_page=True)

    # Runs
    page.get_by_role("tab", name="Runs").click()
    page.wait_for_function(f"document.querySelector('#runs-table')?.innerText.includes('{run_id}')")
    page.wait_for_timeout(1500)
    page.screenshot(path=str(SHOTS / "runs.png"), full_page=True)


# Start's answer ("starting run X…" or "Not started") may be replaced by the next poll within a
# second, before a check that samples the page sees it: an observer set before the click keeps it.
WATCH_START_ANSWER = """() => {
  window.startAnswer = null;
  const look = () => {
    const text = document.querySelector('#train-status')?.innerText || '';
    const started = text.match(/starting\\s+run\\s+(\\S+?)…/);
    if (window.startAnswer === null && (started || /Not started/.test(text)))
      window.startAnswer = started ? {run: started[1]} : {refused: text};
  };
  new MutationObserver(look).observe(document.body, {subtree: true, childList: true, characterData: true});
  return document.querySelector('#train-status')?.innerText || '';
}"""


def start_and_wait(page) -> str:
    """Press Start and return the status line once the run it started has ended, or the refusal.
    The line may show an earlier run of this browser's until the poll after Start (a freshly
    loaded page's first poll can even draw that earlier run after the click), so the run is
    followed by the id that Start answers with."""
    before = page.evaluate(WATCH_START_ANSWER)
    assert "Not started" not in before, f"the status line says Not started before Start: {before}"
    page.get_by_role("button", name="Start training").click()
    answer = page.wait_for_function("window.startAnswer").json_value()
    if "run" not in answer:
        return answer["refused"]
    try:
        page.wait_for_function(
            "([id]) => { const t = document.querySelector('#train-status')?.innerText || '';"
            " return t.includes(id) && /finished|failed|diverged/.test(t); }", arg=[answer["run"]],
            timeout=240_000)
    except Exception:
        page.screenshot(path=str(SHOTS / "failure.png"), full_page=True)
        raise AssertionError(f"run {answer['run']}: {page.locator('#train-status').inner_text()}") from None
    return page.locator("#train-status").inner_text()


def wait_for_prediction(page) -> str:
    """The Predict label's text once it holds a prediction (not the progress line, whose percentage
    looks alike)."""
    page.wait_for_function(
        "(() => { const l = document.querySelector('#predict-label');"
        " return l && !/Predicting/.test(l.innerText) && /\\d+%/.test(l.innerText); })()")
    return page.locator("#predict-label").inner_text()


def choose(page, elem_id: str, option: str):
    """Pick an option of a Gradio dropdown by (part of) its label."""
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=re.compile(re.escape(option))).first.click()


def set_number(page, label: str, value: str):
    field = page.get_by_label(label, exact=True)
    field.fill(value)
    field.press("Tab")


def wait_for_text(page, elem_id: str, pattern: str):
    page.wait_for_function(f"/{pattern}/.test(document.querySelector('#{elem_id}')?.innerText || '')")


def test_own_images_from_a_zip_train_evaluate_predict_in_a_browser(page, app_server, tmp_path):
    from test_own_images import NEW_NAMES, make_set, zip_folder
    archive = zip_folder(make_set(tmp_path / "pets", per_class=60), tmp_path / "pets.zip")
    SHOTS.mkdir(exist_ok=True)
    page.goto(app_server.url)
    page.get_by_role("button", name="Start training").wait_for()
    with page.expect_file_chooser() as chooser:
        page.locator("#dataset-upload").click()
    chooser.value.set_files(str(archive))
    wait_for_text(page, "dataset-summary", "pets.*3 classes")
    assert "144 training, 36 validation" in page.locator("#dataset-summary").inner_text()
    page.locator("#dataset-size").get_by_text("64", exact=True).click()  # prepared again at 64x64, then back
    wait_for_text(page, "dataset-summary", "images at 64x64")
    page.locator("#dataset-size").get_by_text("32", exact=True).click()
    wait_for_text(page, "dataset-summary", "images at 32x32")
    page.locator("#dataset-counts img, #dataset-counts svg, #dataset-counts canvas").first.wait_for()
    assert page.locator("#dataset-samples img").count() >= 15  # five per class

    choose(page, "train-model", "fastnet")
    choose(page, "setting-init_from", "shipped fastnet")
    set_number(page, "Epochs", "2")
    set_number(page, "Train only the head for the first epochs (with Start from)", "1")
    set_number(page, "Batch size", "32")
    page.screenshot(path=str(SHOTS / "own_images_data.png"), full_page=True)
    status = start_and_wait(page)
    assert "finished" in status, status
    page.screenshot(path=str(SHOTS / "own_images_trained.png"), full_page=True)
    run_id = re.search(r"run (\S+) ·", status).group(1).strip("`")

    page.get_by_role("tab", name="Evaluate").click()
    choose(page, "eval-model", run_id)
    page.get_by_role("button", name="Evaluate").click()
    wait_for_text(page, "eval-summary", "Accuracy")
    accuracy = float(re.search(r"Accuracy ([\d.]+)%", page.locator("#eval-summary").inner_text()).group(1))
    assert accuracy > 60  # three classes: chance is 33%
    assert "bateau à voile" in page.locator("body").inner_text()
    page.screenshot(path=str(SHOTS / "own_images_evaluate.png"), full_page=True)

    page.get_by_role("tab", name="Predict").click()
    choose(page, "predict-model", run_id)
    page.locator("#predict-image input[type=file]").set_input_files(str(next((tmp_path / "pets" / "Hund").iterdir())))
    label = wait_for_prediction(page)
    assert any(name in label for name in NEW_NAMES.values()), label
    page.screenshot(path=str(SHOTS / "own_images_predict.png"), full_page=True)


def test_a_data_set_built_class_by_class_in_the_browser_trains(page, app_server, tmp_path):
    files = {}
    for name, colour in (("rot", (220, 40, 40)), ("blau", (40, 40, 220))):
        rng = np.random.default_rng(colour[0])
        files[name] = []
        for i in range(12):
            path = tmp_path / f"{name}-{i}.png"
            Image.fromarray(np.clip(np.array(colour) + rng.integers(-40, 40, (36, 48, 3)), 0, 255)
                            .astype(np.uint8)).save(path)
            files[name].append(str(path))
    page.goto(app_server.url)
    page.get_by_role("button", name="Start training").wait_for()
    page.get_by_text("Build a data set here").click()
    page.get_by_label("Name of a new data set").fill("colours")
    page.locator("#collection-create").click()
    wait_for_text(page, "collection-status", "Created")
    for name, paths in files.items():
        page.get_by_label("Class name").fill(name)
        page.locator("#collection-files input[type=file]").set_input_files(paths)
        page.wait_for_timeout(1000)
        page.locator("#collection-add").click()
        wait_for_text(page, "collection-status", f"{name} 12")
    # a third class from webcam snapshots (one per Add, as a person would take them)
    page.get_by_label("Class name").fill("Kamera")
    for count in (1, 2):
        page.locator("#collection-webcam").get_by_text("Click to Access Webcam").click()
        page.locator("#collection-webcam video").wait_for()
        page.wait_for_timeout(1000 + 1000 * count)  # the test pattern moves: two snapshots differ
        page.locator("#collection-webcam button[aria-label='capture photo']").click()
        page.locator("#collection-webcam img[src]").first.wait_for()
        page.locator("#collection-add").click()
        try:
            wait_for_text(page, "collection-status", f"Kamera {count}")
        except Exception:
            page.screenshot(path=str(SHOTS / "failure.png"), full_page=True)
            raise AssertionError(page.locator("#collection-status").inner_text()) from None
    try:
        wait_for_text(page, "dataset-summary", "colours.*3 classes")
    except Exception:
        page.screenshot(path=str(SHOTS / "failure.png"), full_page=True)
        raise
    assert "few training images" in page.locator("#dataset-summary").inner_text()
    page.screenshot(path=str(SHOTS / "collected.png"), full_page=True)
    set_number(page, "Epochs", "3")
    set_number(page, "Batch size", "8")
    assert "finished" in start_and_wait(page)
