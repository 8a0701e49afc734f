"""Uploads are size-limited, and the files uploads and downloads leave behind are deleted."""

import time

import httpx
import numpy as np
from conftest import running_app
from gradio_client import Client, handle_file
from PIL import Image

CACHE_AGE_S = 3


def cached_files(root):
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_oversized_upload_is_refused_and_cached_files_are_deleted(tmp_path):
    with running_app(tmp_path, "--cache-max-age", str(CACHE_AGE_S)) as app:
        cache = tmp_path / "gradio"
        at_start = cached_files(cache)  # the Predict tab's example images, copied in at start-up
        upload_url = app.url + "gradio_api/upload"
        big = httpx.post(upload_url, files={"files": ("big.png", b"\0" * (201 * 1024 * 1024), "image/png")},
                         timeout=60)
        assert big.status_code == 413, big.text  # over the 200 MB max_file_size
        small = httpx.post(upload_url, files={"files": ("ok.png", b"\0" * 1024, "image/png")}, timeout=60)
        assert small.status_code == 200, small.text

        image = tmp_path / "photo.png"
        Image.fromarray(np.full((48, 64, 3), 120, np.uint8)).save(image)
        client = Client(app.url, verbose=False)
        label, _, _, message = client.predict("shipped:lenet", handle_file(str(image)), api_name="/predict")
        assert label["label"] and message == ""
        assert len(cached_files(cache)) > len(at_start), "the uploads and outputs are in Gradio's cache"

        deadline = time.time() + 10 * CACHE_AGE_S
        while cached_files(cache) != at_start and time.time() < deadline:
            time.sleep(0.5)
        assert cached_files(cache) == at_start, "cached uploads outlived --cache-max-age"
        again = client.predict("shipped:lenet", handle_file(str(image)), api_name="/predict")
        assert again[0]["label"] == label["label"], "the app still serves after the clean-up"
