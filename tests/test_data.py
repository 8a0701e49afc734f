import contextlib
import hashlib
import http.server
import pickle
import tarfile
import threading

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR10

from cifarapp import data as D


def _batch(rng, n):
    return {"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, size=n).tolist(), "batch_label": "fake"}


@pytest.fixture
def fake_archive(tmp_path):
    """A tiny archive in the official python-version layout, and the md5s torchvision checks."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "src" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": _batch(rng, 20) for i in range(1, 6)}
    batches["test_batch"] = _batch(rng, 10)
    batches["batches.meta"] = {"label_names": list(D.CIFAR10_CLASSES), "num_cases_per_batch": 20}
    for name, content in batches.items():
        (folder / name).write_bytes(pickle.dumps(content))
    archive = tmp_path / "serve" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    md5 = {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in batches}
    return archive, md5, batches


@contextlib.contextmanager
def serving(folder):
    """A local HTTP server of `folder`: (its URL, the list of paths requested so far)."""
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(folder), **kw)

        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()


@pytest.fixture
def local_server(fake_archive):
    with serving(fake_archive[0].parent) as served:
        yield served


def _point_torchvision_at(monkeypatch, url, fake_archive):
    archive, md5, _ = fake_archive
    monkeypatch.setattr(CIFAR10, "url", f"{url}/{archive.name}")
    monkeypatch.setattr(CIFAR10, "tgz_md5", hashlib.md5(archive.read_bytes()).hexdigest())
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names", "md5": md5["batches.meta"]})


def test_download_path_fetches_converts_and_caches(tmp_path, monkeypatch, local_server, fake_archive):
    url, requests = local_server
    _point_torchvision_at(monkeypatch, url, fake_archive)
    monkeypatch.delenv(D.DATA_ENV_VAR, raising=False)
    data_dir = tmp_path / "data"
    loaded = D.load_cifar10(data_dir=data_dir)
    assert requests, "the archive should have been fetched from the local server"
    assert loaded.train_images.shape == (100, 3, 32, 32) and loaded.test_images.shape == (10, 3, 32, 32)
    assert loaded.classes == D.CIFAR10_CLASSES
    _, _, batches = fake_archive
    # image 0 of data_batch_1, pixel (row 0, col 1): red, green, blue planes of the flat row
    flat = batches["data_batch_1"]["data"][0]
    assert loaded.train_images[0, :, 0, 1].tolist() == [flat[1], flat[1024 + 1], flat[2048 + 1]]
    assert loaded.train_labels[:20].tolist() == batches["data_batch_1"]["labels"]
    assert (data_dir / D.CACHE_NAME).is_file()
    n_requests = len(requests)
    again = D.load_cifar10(data_dir=data_dir)
    assert len(requests) == n_requests, "the second load must come from the cache"
    assert torch.equal(again.train_images, loaded.train_images)
    assert torch.equal(again.test_labels, loaded.test_labels)


def test_failed_download_names_both_options(tmp_path, monkeypatch, local_server, fake_archive):
    url, _ = local_server
    _point_torchvision_at(monkeypatch, url + "/missing", fake_archive)
    monkeypatch.delenv(D.DATA_ENV_VAR, raising=False)
    with pytest.raises(D.DataUnavailableError) as err:
        D.load_cifar10(data_dir=tmp_path / "data")
    assert "--data" in str(err.value) and "download" in str(err.value)
    with pytest.raises(D.DataUnavailableError, match="CIFARAPP_DATA"):
        D.load_cifar10(data_dir=tmp_path / "data", download=False)


def test_npz_and_env_variable(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(30, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=30).astype(np.uint8)
    path = tmp_path / "c.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x[:5], y_test=y[:5], classes=np.array(D.CIFAR10_CLASSES))
    monkeypatch.setenv(D.DATA_ENV_VAR, str(path))
    loaded = D.load_cifar10()
    assert loaded.train_images.shape == (30, 3, 32, 32)
    assert loaded.train_images[3, 2, 5, 7] == x[3, 5, 7, 2]
    assert loaded.train_labels.dtype == torch.int64 and loaded.train_labels.tolist() == y.tolist()
    monkeypatch.setenv(D.DATA_ENV_VAR, str(tmp_path / "nope.npz"))
    with pytest.raises(D.DataUnavailableError, match="neither an .npz"):
        D.load_cifar10()


def test_split_is_seeded_disjoint_and_subsettable():
    a = D.split_train_val(1000, 100, seed=3)
    b = D.split_train_val(1000, 100, seed=3)
    c = D.split_train_val(1000, 100, seed=4)
    assert torch.equal(a.val, b.val) and not torch.equal(a.val, c.val)
    assert len(a.val) == 100 and len(a.train) == 900
    assert not set(a.train.tolist()) & set(a.val.tolist())
    assert len(D.split_train_val(1000, 100, seed=3, train_size=50).train) == 50


def _batch_images(n=64):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 32, 32, generator=g)


@pytest.mark.parametrize("name", list(D.AUGMENTATIONS))
def test_each_augmentation_keeps_shape_range_and_varies_per_image(name):
    x = _batch_images()
    out = D.augment_batch(x, (name,), torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= -1e-5 and out.max() <= 1 + 1e-5
    changed = (out - x).abs().flatten(1).amax(1) > 1e-4
    assert 0 < changed.sum() <= len(x)  # some images change; per-image draws, not one for all
    again = D.augment_batch(x, (name,), torch.Generator().manual_seed(1))
    assert torch.equal(out, again), "same generator seed must give the same batch"


@pytest.mark.parametrize("name,pad", [("crop", 4), ("translate", 2)])
def test_crop_and_translate_are_pure_translations_within_their_range(name, pad):
    x = torch.arange(32 * 32, dtype=torch.float32).view(1, 1, 32, 32).repeat(16, 3, 1, 1) / 1024
    out = D.augment_batch(x, (name,), torch.Generator().manual_seed(0))
    shifts = set()
    for img, src in zip(out, x):
        # the centre of the output must appear in the source unchanged, shifted by at most `pad`
        side = 32 - 2 * pad
        centre = img[0, pad:pad + side, pad:pad + side]
        hits = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                if torch.equal(src[0, dy:dy + side, dx:dx + side], centre)]
        assert len(hits) == 1
        shifts.add(hits[0])
    assert len(shifts) > 3, "shifts vary per image"


def test_flip_mirrors_exactly():
    x = _batch_images(32)
    out = D.random_flip(x, torch.Generator().manual_seed(0))
    for img, src in zip(out, x):
        assert torch.equal(img, src) or torch.equal(img, src.flip(2))


def test_alternating_flip_mirrors_each_image_one_way_then_the_other():
    first = torch.rand(100, generator=torch.Generator().manual_seed(0)) < 0.5
    ids = torch.tensor([3, 50, 7, 99])
    even = D.alternating_flip_mask(first, ids, epoch=0)
    odd = D.alternating_flip_mask(first, ids, epoch=1)
    assert torch.equal(even, first[ids]) and torch.equal(odd, ~first[ids])
    assert torch.equal(D.alternating_flip_mask(first, ids, epoch=4), even)
    x = _batch_images(4)
    out = D.augment_batch(x, ("alt_flip",), torch.Generator(), flip_mask=odd)
    for img, src, flipped in zip(out, x, odd):
        assert torch.equal(img, src.flip(2) if flipped else src)


def test_downscale_averages_pixels_into_the_smaller_image():
    x = torch.zeros(2, 3, 32, 32)
    x[:, :, :, 16:] = 1.0  # left half black, right half white
    small = D.downscale(x, 16)
    assert small.shape == (2, 3, 16, 16)
    assert torch.equal(small[..., :7], torch.zeros(2, 3, 16, 7))
    assert torch.equal(small[..., 9:], torch.ones(2, 3, 16, 7))
    assert small.mean().item() == pytest.approx(0.5, abs=1e-6)


def test_normalization_round_trip():
    norm = D.Normalization()
    assert D.Normalization.from_dict(norm.to_dict()) == norm
    x = torch.full((1, 3, 2, 2), 0.5)
    expected = (0.5 - norm.mean[1]) / norm.std[1]
    assert torch.allclose(norm.apply(x)[0, 1], torch.full((2, 2), expected))


def test_cifar100_downloads_from_a_local_server_with_its_fine_labels(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR100

    from cifarapp.sources import DataSource
    rng = np.random.default_rng(1)
    folder = tmp_path / "src" / "cifar-100-python"
    folder.mkdir(parents=True)
    names = [f"class_{i:02d}" for i in range(100)]
    content = {
        "train": {"data": rng.integers(0, 256, (60, 3072), dtype=np.uint8), "fine_labels": list(range(60)),
                  "coarse_labels": [0] * 60},
        "test": {"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), "fine_labels": list(range(80, 100)),
                 "coarse_labels": [0] * 20},
        "meta": {"fine_label_names": names, "coarse_label_names": ["all"]},
    }
    for name, value in content.items():
        (folder / name).write_bytes(pickle.dumps(value))
    serve = tmp_path / "serve"
    serve.mkdir()
    archive = serve / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-100-python")
    md5 = {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in content}
    with serving(serve) as (url, requests):
        monkeypatch.setattr(CIFAR100, "url", f"{url}/{archive.name}")
        monkeypatch.setattr(CIFAR100, "tgz_md5", hashlib.md5(archive.read_bytes()).hexdigest())
        monkeypatch.setattr(CIFAR100, "train_list", [["train", md5["train"]]])
        monkeypatch.setattr(CIFAR100, "test_list", [["test", md5["test"]]])
        monkeypatch.setattr(CIFAR100, "meta", {"filename": "meta", "key": "fine_label_names", "md5": md5["meta"]})
        source = DataSource("cifar100", str(tmp_path / "data"))
        loaded = source.load()
        assert requests and loaded.name == "CIFAR-100" and loaded.classes == tuple(names)
        assert loaded.train_labels.tolist() == list(range(60)) and loaded.test_labels.tolist() == list(range(80, 100))
        flat = content["train"]["data"][0]
        assert loaded.train_images[0, :, 0, 1].tolist() == [flat[1], flat[1024 + 1], flat[2048 + 1]]
        expected = loaded.train_images.double().div(255).mean(dim=(0, 2, 3)).tolist()
        assert np.allclose(loaded.normalization.mean, expected, atol=1e-3)
        fetched = len(requests)
        again = DataSource("cifar100", str(tmp_path / "data"), download=False).load()
        assert len(requests) == fetched and torch.equal(again.train_images, loaded.train_images)
    with pytest.raises(D.DataUnavailableError, match="CIFAR-100 is not in"):
        DataSource("cifar100", str(tmp_path / "elsewhere"), download=False).load()
