"""Image sets from folders and zips: layouts, checks, hostile zips, preparation and its cache."""

import os
import stat
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from cifarapp.imagesets import ImageSetError, ZipLimits, extract_zip, prepare, scan_folder
from cifarapp.weights import load_sample

# awkward class names on purpose: a space, an accent, a capital
CLASSES = {"cat": "chat noir", "dog": "Hund", "ship": "bateau à voile"}


def sample_images(per_class: int = 12):
    """CIFAR-10 test images of three classes, as HWC uint8 arrays by CIFAR class name."""
    images, labels = load_sample()
    names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    out = {}
    for cifar in CLASSES:
        idx = (labels == names.index(cifar)).nonzero().flatten()[:per_class]
        out[cifar] = images[idx].permute(0, 2, 3, 1).numpy()
    return out


def make_folder(root, per_class=12, splits=None, suffix=".png"):
    """root/<class>/<i>.png (or root/<split>/<class>/...) from the CIFAR sample."""
    images = sample_images(per_class)
    for cifar, name in CLASSES.items():
        for i, pixels in enumerate(images[cifar]):
            split = splits[i % len(splits)] if splits else None
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).resize((48, 40)).save(folder / f"img {i}{suffix}")
    return root


def test_a_class_folder_layout_is_scanned_with_its_names(tmp_path):
    make_folder(tmp_path / "pets")
    (tmp_path / "pets" / "notes.txt").write_text("not an image")
    (tmp_path / "pets" / "Hund" / "readme.md").write_text("hello")
    scan = scan_folder(tmp_path / "pets")
    assert scan.classes == tuple(sorted(CLASSES.values()))
    assert not scan.given_splits and scan.counts()["pool"] == {c: 12 for c in CLASSES.values()}
    assert {why for _, why in scan.skipped} == {"a file outside the class folders", "not an image file (by its name)"}


def test_split_folders_are_used_as_given(tmp_path):
    make_folder(tmp_path / "set", per_class=12, splits=["train", "train", "val", "test"])
    scan = scan_folder(tmp_path / "set")
    assert scan.given_splits and set(scan.files) == {"train", "val", "test"}
    assert scan.counts()["train"] == {c: 6 for c in CLASSES.values()}
    assert scan.counts()["val"] == {c: 3 for c in CLASSES.values()}


@pytest.mark.parametrize("make, message", [
    (lambda root: root.mkdir(), "no images found"),
    (lambda root: (root / "only").mkdir(parents=True) or Image.new("RGB", (8, 8)).save(root / "only" / "a.png"),
     "only one class"),
    (lambda root: [(root / c).mkdir(parents=True) or Image.new("RGB", (8, 8)).save(root / c / "a.png")
                   for c in ("Cat", "cat", "dog")], "differ only in upper and lower case"),
    (lambda root: [(root / s / "x").mkdir(parents=True) for s in ("val", "test")], "no train/ folder"),
])
def test_unusable_folders_say_what_to_fix(tmp_path, make, message):
    root = tmp_path / "bad"
    make(root)
    if message == "differ only in upper and lower case" and os.path.samefile(root / "Cat", root / "cat"):
        pytest.skip("this file system does not tell upper from lower case")
    with pytest.raises(ImageSetError, match=message):
        scan_folder(root)


def test_empty_small_and_imbalanced_classes_are_warned_about(tmp_path):
    root = make_folder(tmp_path / "set", per_class=12)
    (root / "empty class").mkdir()
    for i in range(3, 12):
        (root / "Hund" / f"img {i}.png").unlink()
    scan = scan_folder(root)
    text = " ".join(scan.warnings)
    assert "empty class" in text and "few training images" in text and "imbalanced" in text
    assert "empty class" not in scan.classes


def test_preparation_reads_every_image_once_and_then_comes_from_the_cache(tmp_path):
    root = make_folder(tmp_path / "set", suffix=".jpg")
    (root / "Hund" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    seen = []
    prepared = prepare(scan_folder(root), image_size=32, cache_dir=tmp_path / "cache",
                       progress=lambda done, total: seen.append((done, total)))
    assert prepared.images["pool"].shape == (36, 32, 32, 3) and prepared.images["pool"].dtype == np.uint8
    assert sorted(np.bincount(prepared.labels["pool"]).tolist()) == [12, 12, 12]
    assert [path for path, _ in prepared.unreadable] == [os.path.join("Hund", "broken.jpg")]
    assert seen[-1] == (37, 37)
    started = time.perf_counter()
    again = prepare(scan_folder(root), image_size=32, cache_dir=tmp_path / "cache")
    assert time.perf_counter() - started < 1.0
    assert np.array_equal(again.images["pool"], prepared.images["pool"])
    assert again.content_hash == prepared.content_hash
    big = prepare(scan_folder(root), image_size=64, cache_dir=tmp_path / "cache")
    assert big.images["pool"].shape[1:] == (64, 64, 3)
    # a changed file is prepared again
    Image.new("RGB", (40, 40), (255, 0, 0)).save(root / "Hund" / "img 0.jpg")
    changed = prepare(scan_folder(root), image_size=32, cache_dir=tmp_path / "cache")
    assert changed.content_hash != prepared.content_hash


def zip_of(folder, path, arcname_prefix=""):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                archive.write(file, arcname_prefix + str(file.relative_to(folder)))
    return path


def test_a_zip_of_the_layout_is_extracted_once_into_its_own_folder(tmp_path):
    folder = make_folder(tmp_path / "pets")
    archive = zip_of(folder, tmp_path / "pets.zip", arcname_prefix="pets/")
    into = tmp_path / "datasets"
    extracted = extract_zip(archive, into)
    assert extracted.parent == into
    assert scan_folder(extracted).classes == tuple(sorted(CLASSES.values()))
    mtime = extracted.stat().st_mtime_ns
    assert extract_zip(archive, into) == extracted and extracted.stat().st_mtime_ns == mtime


def hostile_zip(path, entries):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if mode:
                info.external_attr = mode << 16
            archive.writestr(info, data)
    return path


@pytest.mark.parametrize("entries, message", [
    ([("../evil.png", b"x", 0)], "outside"),
    ([("a/../../evil.png", b"x", 0)], "outside"),
    ([("/etc/evil.png", b"x", 0)], "absolute"),
    ([("C:/evil.png", b"x", 0)], "absolute"),
    ([("cat/link.png", b"/etc/passwd", stat.S_IFLNK | 0o777)], "symbolic link"),
    ([("cat/bomb.png", b"\0" * (5 * 2**20), 0)], "zip bomb"),
])
def test_hostile_zips_are_refused_before_anything_is_written(tmp_path, entries, message):
    archive = hostile_zip(tmp_path / "hostile.zip", entries)
    into = tmp_path / "datasets"
    with pytest.raises(ImageSetError, match=message):
        extract_zip(archive, into)
    assert not into.exists() or not any(into.rglob("*.png"))
    assert not (tmp_path / "evil.png").exists()


def test_limits_on_entries_and_size(tmp_path):
    archive = hostile_zip(tmp_path / "many.zip", [(f"c/{i}.png", b"x", 0) for i in range(20)])
    with pytest.raises(ImageSetError, match="entries"):
        extract_zip(archive, tmp_path / "d", ZipLimits(max_entries=10))
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"PK not really")
    with pytest.raises(ImageSetError, match="not a readable zip"):
        extract_zip(fake, tmp_path / "d")


def test_a_nested_zip_and_other_files_are_listed_as_skipped(tmp_path):
    folder = make_folder(tmp_path / "pets", per_class=3)
    (folder / "Hund" / "more.zip").write_bytes(zip_of(folder / "Hund", tmp_path / "inner.zip").read_bytes())
    scan = scan_folder(extract_zip(zip_of(folder, tmp_path / "outer.zip"), tmp_path / "datasets"))
    assert ("Hund/more.zip", "not an image file (by its name)") in scan.skipped


def test_thousands_of_classes_are_refused_and_huge_images_are_prepared(tmp_path):
    many = tmp_path / "many"
    png = tmp_path / "dot.png"
    Image.new("RGB", (4, 4), (9, 9, 9)).save(png)
    for i in range(1001):
        (many / f"class {i}").mkdir(parents=True)
        os.link(png, many / f"class {i}" / "a.png")
    with pytest.raises(ImageSetError, match="1,001 classes; at most 1,000"):
        scan_folder(many)
    root = make_folder(tmp_path / "set", per_class=3)
    Image.new("RGB", (6000, 4000), (200, 10, 10)).save(root / "Hund" / "huge.jpg", quality=50)
    prepared = prepare(scan_folder(root), image_size=32)
    assert prepared.images["pool"].shape == (10, 32, 32, 3) and prepared.unreadable == []
    assert (6000, 4000) in prepared.sizes
