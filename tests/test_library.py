"""The image sets the app keeps: uploaded zips and sets collected class by class, each visible
only to whoever added it, and trained on through the run manager."""

import zipfile

import numpy as np
import pytest
from PIL import Image
from test_own_images import NEW_NAMES, make_set, zip_folder

from cifarapp.config import TrainConfig
from cifarapp.imagesets import ImageSetError
from cifarapp.library import ImageSetLibrary, clean_name
from cifarapp.manager import RunManager
from cifarapp.runs import owner_key

ADA, BOB = owner_key("ada-token"), owner_key("bob-token")


def coloured(colour, n, size=(40, 30)):
    rng = np.random.default_rng(sum(colour))
    return [np.clip(np.array(colour) + rng.integers(-30, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
            for _ in range(n)]


def test_an_uploaded_zip_is_kept_for_its_owner_only(tmp_path):
    library = ImageSetLibrary(tmp_path / "datasets")
    archive = zip_folder(make_set(tmp_path / "pets", per_class=10), tmp_path / "pets.zip")
    key = library.add_zip(archive, ADA)
    assert [e.key for e in library.entries(ADA)] == [key] and library.entries(BOB) == []
    entry = library.entries(ADA)[0]
    assert entry.name == "pets" and entry.counts == {name: 10 for name in sorted(NEW_NAMES.values())}
    with pytest.raises(ImageSetError, match="unknown data set"):
        library.load(key, BOB)
    for bad in ("../runs", "uploaded/../../x", "uploaded/zip-0123", "/etc"):
        with pytest.raises(ImageSetError, match="unknown data set"):
            library.folder(bad, ADA)
    assert library.load(key, ADA).data.classes == tuple(sorted(NEW_NAMES.values()))
    assert library.add_zip(archive, BOB) == key  # the same content is extracted once and shared by both
    assert [e.key for e in library.entries(BOB)] == [key]


def test_a_collection_grows_class_by_class_and_downloads_as_a_zip(tmp_path):
    library = ImageSetLibrary(tmp_path / "datasets")
    key = library.new_collection("  my   toys ", ADA)
    assert library.entries(ADA)[0].name == "my toys"
    added, problems = library.add_images(key, ADA, "Rot", coloured((220, 30, 30), 12))
    assert added == 12 and problems == []
    garbage = tmp_path / "notes.png"
    garbage.write_bytes(b"not an image")
    big = tmp_path / "big.jpg"
    Image.fromarray(coloured((30, 30, 220), 1, size=(2000, 1500))[0]).save(big)
    added, problems = library.add_images(key, ADA, "blau", [*coloured((30, 30, 220), 11), big, str(garbage)])
    assert added == 12 and len(problems) == 1 and "notes.png" in problems[0]
    stored = Image.open(next(p for p in (tmp_path / "datasets" / key / "blau").iterdir() if p.stat().st_size > 20000))
    assert max(stored.size) <= 512
    added, problems = library.add_images(key, ADA, "rot", coloured((220, 30, 30), 12))  # same class, same pictures
    assert added == 0 and len(problems) == 12 and "already in Rot" in problems[0]
    assert library.counts(key, ADA) == {"Rot": 12, "blau": 12}
    data = library.load(key, ADA).data
    assert data.classes == ("Rot", "blau") and len(data.train_labels) + len(data.val_labels) == 24
    archive = library.write_zip(key, ADA, tmp_path)
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
    assert len(names) == 24 and all(n.startswith(("Rot/", "blau/")) for n in names)
    library.remove_class(key, ADA, "blau")
    assert library.counts(key, ADA) == {"Rot": 12}
    with pytest.raises(ImageSetError, match="unknown data set"):
        library.add_images(key, BOB, "x", coloured((1, 2, 3), 1))


@pytest.mark.parametrize("name", ["", "   ", "../up", "a/b", ".hidden", "x" * 65, "bell\x07", "nul\x00"])
def test_class_and_set_names_that_cannot_be_folders_are_refused(name):
    with pytest.raises(ImageSetError):
        clean_name(name, "class name")


def test_accents_spaces_and_case_are_kept_in_names():
    assert clean_name(" bateau  à voile ") == "bateau à voile"
    assert clean_name("Hund") == "Hund" and clean_name("tab\there") == "tab here"


def test_the_run_manager_trains_on_a_kept_set_of_its_owner(tmp_path):
    library = ImageSetLibrary(tmp_path / "datasets")
    key = library.new_collection("colours", ADA)
    library.add_images(key, ADA, "red", coloured((220, 30, 30), 20))
    library.add_images(key, ADA, "blue", coloured((30, 30, 220), 20))
    manager = RunManager(tmp_path / "runs", image_sets=library)
    config = TrainConfig(dataset=key, model="lenet", epochs=3, batch_size=8, lr=0.01, precision="fp32")
    with pytest.raises(ImageSetError, match="unknown data set"):
        manager.start(config, "bob-token")
    run_id = manager.start(config, "ada-token")
    manager.wait(run_id, timeout=120)
    snap = manager.snapshot(run_id)
    assert snap.status == "finished", snap.message
    assert snap.epochs[-1]["val_acc"] == 1.0  # red against blue


def test_a_set_can_be_prepared_at_64_pixels_by_its_key(tmp_path):
    library = ImageSetLibrary(tmp_path / "datasets")
    key = library.new_collection("colours", ADA)
    library.add_images(key, ADA, "red", coloured((220, 30, 30), 6))
    library.add_images(key, ADA, "blue", coloured((30, 30, 220), 6))
    assert library.sized(key, 32) == key + "@32" and library.sized(key + "@32", 64) == key + "@64"
    assert library.load(key, ADA).data.image_size == 32
    assert library.load(key + "@64", ADA).data.train_images.shape[-1] == 64
    with pytest.raises(ImageSetError, match="unknown data set"):
        library.load(key + "@48", ADA)
