"""Training, evaluating and predicting on a user's own image set: splits, normalisation, transfer
from a shipped model, image sizes, and the CLI from a zip to predictions with the new class names."""

import shutil
import subprocess
import sys
import threading
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import ENV

from cifarapp import checkpoints
from cifarapp.checkpoints import load_model
from cifarapp.config import ConfigError, TrainConfig
from cifarapp.data import CIFAR10_MEAN, Normalization
from cifarapp.imagesets import load_image_set
from cifarapp.models import build_model
from cifarapp.train import TrainingError, body_parameters, class_weights, fit, transfer_weights
from cifarapp.weights import default_checkpoint, load_sample

CIFAR_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# three CIFAR-10 classes under awkward new names (a space, an accent, a capital)
NEW_NAMES = {"cat": "chat noir", "dog": "Hund", "ship": "bateau à voile"}


def make_set(root, per_class=100, splits=None):
    """root/<new name>/<i>.png (or root/<split>/<new name>/...) from the CIFAR-10 sample."""
    images, labels = load_sample()
    for cifar, name in NEW_NAMES.items():
        idx = (labels == CIFAR_NAMES.index(cifar)).nonzero().flatten()[:per_class]
        for i, pixels in enumerate(images[idx].permute(0, 2, 3, 1).numpy()):
            split = splits[i % len(splits)] if splits else None
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / f"photo {i}.png")
    return root


def zip_folder(folder, path):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                archive.write(file, str(file.relative_to(folder)))
    return path


def test_a_pool_is_split_per_class_and_normalised_by_its_training_images(tmp_path):
    image_set = load_image_set(make_set(tmp_path / "pets", per_class=20), tmp_path / "datasets", val_fraction=0.25)
    data = image_set.data
    assert data.classes == tuple(sorted(NEW_NAMES.values()))
    assert torch.bincount(data.train_labels).tolist() == [15, 15, 15]
    assert torch.bincount(data.val_labels).tolist() == [5, 5, 5]
    assert "no test folder" in data.test_name and torch.equal(data.test_labels, data.val_labels)
    expected = data.train_images.double().div(255).mean(dim=(0, 2, 3))
    assert np.allclose(data.normalization.mean, expected.numpy(), atol=1e-3)
    assert data.normalization != Normalization() and data.normalization.mean != CIFAR10_MEAN
    again = load_image_set(tmp_path / "pets", tmp_path / "datasets", val_fraction=0.25).data
    assert again.content_hash == data.content_hash and torch.equal(again.val_images, data.val_images)
    report = image_set.report()
    assert "chat noir" in report and "problems: none found" in report and "stratified split" in report


def test_given_splits_are_kept_and_shared_images_are_reported(tmp_path):
    root = make_set(tmp_path / "set", per_class=12, splits=["train", "train", "val", "test"])
    shutil.copy(root / "train" / "Hund" / "photo 0.png", root / "test" / "Hund" / "copy.png")
    image_set = load_image_set(root, tmp_path / "datasets")
    data = image_set.data
    assert [len(data.train_labels), len(data.val_labels), len(data.test_labels)] == [18, 9, 10]
    assert data.test_name == "test set"
    assert any("test folder are also in the training images" in p for p in image_set.problems)


def test_preparing_the_same_zip_at_once_from_two_threads(tmp_path):
    archive = zip_folder(make_set(tmp_path / "pets", per_class=10), tmp_path / "pets.zip")
    results, errors = [], []

    def load():
        try:
            results.append(load_image_set(archive, tmp_path / "datasets").data.content_hash)
        except Exception as exc:  # noqa: BLE001 - the test reports any failure
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    assert sorted(p.name for p in (tmp_path / "datasets" / "extracted").iterdir())[0].startswith("zip-")
    assert len(list((tmp_path / "datasets" / "extracted").iterdir())) == 1


def test_transfer_loads_the_body_and_makes_a_new_head():
    payload = checkpoints.read(default_checkpoint())
    model = build_model(payload["model"], num_classes=3, width=payload["width"])
    left = transfer_weights(model, payload, payload["model"], payload["width"])
    assert left == ["head.weight"]
    for name, value in model.state_dict().items():
        if name != "head.weight":
            assert torch.equal(value, payload["state_dict"][name]), name
    with pytest.raises(TrainingError, match="same architecture"):
        transfer_weights(build_model("lenet", num_classes=3), payload, "lenet", 1.0)
    head = {id(p) for p in model.head.parameters()}
    assert not head & {id(p) for p in body_parameters(model)}


@pytest.mark.slow
def test_fine_tuning_from_the_shipped_model_beats_chance_and_the_frozen_epoch_trains_only_the_head(tmp_path):
    data = load_image_set(make_set(tmp_path / "pets"), tmp_path / "datasets").data
    payload = checkpoints.read(default_checkpoint())
    config = TrainConfig(model="fastnet", width=payload["width"], optimizer="adam", lr=0.002, epochs=1, batch_size=48,
                         augment=("flip",), init_from="fastnet", freeze_epochs=1, precision="fp32")
    frozen = fit(config, data, init_weights=payload)
    state = frozen.model.state_dict()
    assert torch.equal(state["groups.0.conv1.weight"], payload["state_dict"]["groups.0.conv1.weight"])
    assert not torch.equal(state["head.weight"][:1], torch.zeros_like(state["head.weight"][:1]))
    tuned = fit(TrainConfig(**{**config.to_dict(), "epochs": 3, "augment": ("flip",)}), data, init_weights=payload)
    assert tuned.history[-1]["val_acc"] > 0.7  # chance is 1/3
    assert not torch.equal(tuned.model.state_dict()["groups.0.conv1.weight"],
                           payload["state_dict"]["groups.0.conv1.weight"])


def test_image_size_64_needs_a_model_with_global_pooling(tmp_path):
    data = load_image_set(make_set(tmp_path / "pets", per_class=12), tmp_path / "datasets", image_size=64).data
    assert data.train_images.shape[1:] == (3, 64, 64)
    with pytest.raises(TrainingError, match="takes 32x32 images only.*fastnet"):
        fit(TrainConfig(model="lenet", epochs=1, batch_size=8), data)
    result = fit(TrainConfig(model="fastnet", width=0.25, epochs=1, batch_size=8, precision="fp32"), data)
    assert result.status == "finished"


def test_class_weights_make_every_class_count_the_same():
    labels = torch.tensor([0] * 6 + [1] * 2 + [2] * 4)
    weights = class_weights(labels, 3)
    totals = [float(weights[c] * (labels == c).sum()) for c in range(3)]
    assert np.allclose(totals, [4, 4, 4])
    with pytest.raises(ConfigError, match="need Start from"):
        TrainConfig(freeze_epochs=1).validate()


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "cifarapp", *args], capture_output=True, text=True, cwd=cwd,
                          env=ENV, timeout=300)


@pytest.mark.slow
def test_cli_from_a_zip_to_predictions_with_the_new_class_names(tmp_path):
    archive = zip_folder(make_set(tmp_path / "pets", per_class=60), tmp_path / "pets.zip")
    inspect = cli("data", "inspect", str(archive), cwd=tmp_path)
    assert inspect.returncode == 0, inspect.stderr
    assert "3 classes" in inspect.stdout and "bateau à voile" in inspect.stdout
    train = cli("train", "--data", str(archive), "--model", "fastnet", "--init-from", "fastnet", "--epochs", "2",
                "--freeze-epochs", "1", "--optimizer", "adam", "--lr", "0.002", "--batch-size", "32",
                "--precision", "fp32", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    run_id = next(line.split()[1] for line in train.stdout.splitlines() if line.startswith("run "))
    assert (tmp_path / "datasets" / "extracted").is_dir()
    loaded = load_model(tmp_path / "runs" / run_id / "checkpoint.pt")
    assert loaded.classes == tuple(sorted(NEW_NAMES.values()))
    assert loaded.meta["dataset"]["name"] == "pets" and loaded.meta["dataset"]["counts"]["train"] == 144
    image = next((tmp_path / "pets" / "Hund").iterdir())
    predicted = cli("predict", "--model", run_id, str(image), cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    ranked = predicted.stdout.split(": ", 1)[1].split(" → ", 1)[0]
    names = [part.rsplit(" ", 1)[0] for part in ranked.split(", ")]
    assert sorted(names) == sorted(NEW_NAMES.values())
    evaluated = cli("evaluate", run_id, "--data", str(archive), cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "validation images" in evaluated.stdout and "Hund" in evaluated.stdout
    wrong = cli("evaluate", run_id, "--data", "synthetic", cwd=tmp_path)
    assert wrong.returncode == 2 and "Pass --data with the image set it was trained on" in wrong.stderr
