"""The README's screenshots, from a real run: the app on real CIFAR-10, the `fast` preset trained
in the Train tab, that run evaluated on the test set (with the drill-down into its most confused
pair), a photo in Predict with its saliency map, and the Data panel with an uploaded zip of three
classes (CIFAR-10 test images under new names).

    python docs/screenshots.py --data PATH [--out assets]

Needs Debian's chromium and Playwright (requirements-dev.txt). Takes as long as the `fast`
preset takes on this machine, plus a minute.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

from cifarapp.data import load_cifar10

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def three_class_zip(data_path: str, work: Path) -> Path:
    """A zip of 60 CIFAR-10 test images each of cat, dog and ship, in class folders named as a user might."""
    data = load_cifar10(data_path)
    folder = work / "pets"
    for cifar, name in (("cat", "chat noir"), ("dog", "Hund"), ("ship", "bateau à voile")):
        (folder / name).mkdir(parents=True)
        for i in (data.test_labels == data.classes.index(cifar)).nonzero().flatten()[:60].tolist():
            Image.fromarray(data.test_images[i].permute(1, 2, 0).numpy()).save(folder / name / f"{i}.png")
    archive = work / "pets.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(folder.rglob("*.png")):
            z.write(path, str(path.relative_to(folder)))
    return archive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="CIFAR-10 .npz or torchvision folder")
    parser.add_argument("--out", default=str(ROOT / "assets"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    out = Path(args.out)
    port = free_port()
    runs = tempfile.mkdtemp(prefix="screenshot-runs-")
    app = subprocess.Popen([sys.executable, "app.py", "--data", args.data, "--runs-dir", runs, "--datasets-dir",
                            str(Path(runs) / "datasets"), "--host", "127.0.0.1", "--port", str(port)],
                           cwd=ROOT, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(600_000)
            page.goto(url)
            page.locator("#train-estimate").get_by_text("Expected duration").wait_for()
            page.get_by_text("Data", exact=True).first.click()  # fold the Data panel: the run is the subject
            page.get_by_label("Preset").click()
            page.get_by_role("option", name=re.compile("fast recipe: 2 epochs")).click()
            page.wait_for_function("document.querySelector('#preset-note')?.innerText.includes('3 seeds')")
            page.get_by_role("button", name="Start training").click()
            page.wait_for_function("document.querySelector('#train-status')?.innerText.includes('finished')")
            page.evaluate("document.querySelector('#train-status').scrollIntoView({block: 'start'})")
            page.wait_for_timeout(1500)
            page.screenshot(path=str(out / "screenshot_train.png"), full_page=False)
            run_id = re.search(r"run (\S+) ·", page.locator("#train-status").inner_text()).group(1).strip("`")

            page.get_by_role("tab", name="Evaluate").click()
            page.locator("#eval-model input").click()
            page.get_by_role("option", name=re.compile(run_id)).click()
            page.get_by_role("button", name="Evaluate").click()
            page.wait_for_function("document.querySelector('#eval-summary')?.innerText.includes('Accuracy')")
            page.locator("#eval-pair input").click()  # the most confused pair, with its saliency maps
            page.get_by_role("option").first.click()
            page.wait_for_function("document.querySelectorAll('#eval-drill img').length > 0")
            page.wait_for_timeout(1500)
            page.screenshot(path=str(out / "screenshot_evaluate.png"), full_page=True)

            page.get_by_role("tab", name="Predict").click()
            page.locator("#predict-model input").click()
            page.get_by_role("option", name=re.compile(run_id)).click()
            page.locator("#predict-image input[type=file]").set_input_files(str(ROOT / "assets/examples/photo_cat.jpg"))
            page.wait_for_function(
                "(() => { const l = document.querySelector('#predict-label'); "
                "return l && !/Predicting/.test(l.innerText) && /\\d+%/.test(l.innerText); })()")
            page.locator("#predict-seen img").first.wait_for()
            page.wait_for_timeout(800)
            page.screenshot(path=str(out / "screenshot_predict.png"), full_page=False)


            page.goto(url)
            page.get_by_role("button", name="Start training").wait_for()
            with page.expect_file_chooser() as chooser:
                page.locator("#dataset-upload").click()
            chooser.value.set_files(str(three_class_zip(args.data, Path(runs))))
            page.wait_for_function("/3 classes/.test(document.querySelector('#dataset-summary')?.innerText || '')")
            page.locator("#dataset-samples img").first.wait_for()
            page.wait_for_timeout(1500)
            page.screenshot(path=str(out / "screenshot_data.png"), full_page=False)
            browser.close()
        print(f"screenshots of run {run_id} written to {out}")
    finally:
        app.terminate()
        app.wait(30)


if __name__ == "__main__":
    main()
