"""Labelled image sets from folders and zip files: found, checked, and made ready to train on.

Layouts (torchvision's ImageFolder, and the common train/val/test convention):

    root/<class>/<image>                                  one pool; training and validation are split here
    root/train/<class>/...  root/val/<class>/...  root/test/<class>/...   the splits as given

A .zip of either layout (at its top or inside one top folder) is extracted first, after every
entry has been checked (no absolute paths, no `..`, no links, limits on size and compression
ratio). Every image goes through Predict's safe loader (EXIF orientation, transparency, 16-bit,
CMYK, decompression-bomb limit), is centre-cropped and resized to the input size, and the result
is cached as uint8 arrays keyed by the files' names, sizes and times, so a second run on the
same data starts in about a second. What could not be used is listed, never silently dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import unicodedata
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .data import ImageData, Normalization, hwc_to_tensor
from .files import atomic_write
from .images import ORIGINAL_SIZE, ImageError, open_image, preprocess

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}
SPLITS = ("train", "val", "test")
IMAGE_SIZES = (32, 64)  # sides an image set can be prepared at (64 for models with global pooling)
MAX_CLASSES = 1000
MIN_IMAGES_PER_CLASS = 10  # fewer draws a warning
IMBALANCE_RATIO = 3.0  # the largest class this many times the smallest draws a warning
CACHE_VERSION = 1


class ImageSetError(ValueError):
    """A folder or zip cannot be used as an image set; the message says what to fix."""


@dataclass(frozen=True)
class ZipLimits:
    """What a zip may hold before anything is extracted."""

    max_entries: int = 100_000
    max_total_bytes: int = 4 * 2**30
    max_entry_bytes: int = 100 * 2**20
    max_ratio: float = 200.0  # uncompressed / compressed size, per entry and overall


def extract_zip(zip_path: str | Path, into: str | Path, limits: ZipLimits = ZipLimits()) -> Path:
    """Extract a zip of an image set into a folder of its own under `into` (named by the zip's
    content, so the same zip is extracted once) and return that folder. Every entry is checked
    before anything is written; ImageSetError says what is wrong with a hostile or broken zip."""
    zip_path = Path(zip_path)
    digest = _file_digest(zip_path)
    target = Path(into) / f"zip-{digest[:16]}"
    if (target / ".complete").is_file():
        return target
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ImageSetError(f"{zip_path.name} is not a readable zip file ({exc})") from None
    with archive:
        infos = archive.infolist()
        _check_entries(infos, limits)
        # each extraction writes its own folder and renames it into place, so two people
        # uploading the same zip at once never write into one folder
        tmp = target.with_name(f"{target.name}.partial-{secrets.token_hex(4)}")
        tmp.mkdir(parents=True)
        try:
            for info in infos:
                if info.is_dir():
                    continue
                out = tmp.joinpath(*_entry_parts(info.filename))
                out.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(out, "wb") as dst:
                    _copy_limited(src, dst, info.file_size)
            (tmp / ".complete").write_text(zip_path.name)
            if not (target / ".complete").is_file():
                _remove_tree(target)
                try:
                    os.replace(tmp, target)
                except OSError:
                    if not (target / ".complete").is_file():  # not another extraction that finished first
                        raise
        finally:
            _remove_tree(tmp)
    return target


def _entry_parts(name: str) -> list[str]:
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    return parts


def _check_entries(infos: list[zipfile.ZipInfo], limits: ZipLimits) -> None:
    if len(infos) > limits.max_entries:
        raise ImageSetError(f"the zip holds {len(infos):,} entries; at most {limits.max_entries:,} are accepted")
    total = compressed = 0
    for info in infos:
        name = info.filename
        if "\x00" in name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
            raise ImageSetError(f"the zip has an entry with an absolute path ({name[:60]!r}); rebuild it with "
                                "relative paths")
        if ".." in _entry_parts(name):
            raise ImageSetError(f"the zip has an entry that points outside it ({name[:60]!r})")
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise ImageSetError(f"the zip holds a symbolic link ({name[:60]!r}); links are not accepted")
        if info.file_size > limits.max_entry_bytes:
            raise ImageSetError(f"{name[:60]!r} in the zip is {info.file_size / 2**20:.0f} MB; at most "
                                f"{limits.max_entry_bytes // 2**20} MB per file")
        if info.file_size > 1024 and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise ImageSetError(f"{name[:60]!r} expands {info.file_size / max(info.compress_size, 1):.0f}x; "
                                "the zip looks like a zip bomb")
        total += info.file_size
        compressed += info.compress_size
    if total > limits.max_total_bytes:
        raise ImageSetError(f"the zip expands to {total / 2**30:.1f} GB; "
                            f"at most {limits.max_total_bytes / 2**30:.0f} GB")
    if total > 2**20 and total > limits.max_ratio * max(compressed, 1):
        raise ImageSetError("the zip expands more than a zip of images can; it looks like a zip bomb")


def _copy_limited(src, dst, declared: int) -> None:
    """Copy at most the declared size (a zip may lie about it)."""
    written = 0
    while chunk := src.read(1 << 20):
        written += len(chunk)
        if written > declared:
            raise ImageSetError("a zip entry is larger than the zip says; the zip is damaged or hostile")
        dst.write(chunk)


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    for child in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if child.is_dir() and not child.is_symlink():
            child.rmdir()
        else:
            child.unlink()
    path.rmdir()


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Scan:
    """What a folder holds: per split, per class, the image files; and what was skipped."""

    root: Path
    classes: tuple[str, ...]
    files: dict[str, dict[str, list[Path]]]  # split ("pool" when not given) -> class -> files
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path relative to root, why)
    warnings: list[str] = field(default_factory=list)

    @property
    def given_splits(self) -> bool:
        return "pool" not in self.files

    def counts(self) -> dict[str, dict[str, int]]:
        return {split: {c: len(files.get(c, [])) for c in self.classes} for split, files in self.files.items()}


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name != "__MACOSX"


def _class_folders(folder: Path) -> dict[str, Path]:
    return {unicodedata.normalize("NFC", p.name): p for p in sorted(folder.iterdir())
            if p.is_dir() and not p.is_symlink() and _visible(p)}


def scan_folder(root: str | Path) -> Scan:
    """The classes and image files of a folder in either layout (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise ImageSetError(f"{root.name} is not a folder")
    top = _class_folders(root)
    if len(top) == 1 and not any(p.is_file() and _visible(p) for p in root.iterdir()):
        only = next(iter(top.values()))  # a zip of one top folder holding the layout
        if _class_folders(only):
            return scan_folder(only)
    split_folders = {SPLIT_FOLDERS[name.lower()]: path for name, path in top.items() if name.lower() in SPLIT_FOLDERS}
    scan = Scan(root, (), {})
    if split_folders:
        if "train" not in split_folders:
            raise ImageSetError("the folder has split folders but no train/ folder; add train/<class>/ folders")
        by_split = {split: _class_folders(path) for split, path in split_folders.items()}
        classes = sorted(set().union(*by_split.values()))
        for split, folders in by_split.items():
            scan.files[split] = {c: _images(folders[c], root, scan.skipped) for c in classes if c in folders}
        extra = sorted(set(top) - set(split_folders))
        if extra:
            scan.warnings.append(f"ignored folders next to the split folders: {', '.join(extra[:10])}")
    else:
        classes = sorted(top)
        scan.files["pool"] = {c: _images(top[c], root, scan.skipped) for c in classes}
    for path in root.iterdir():
        if path.is_file() and _visible(path) and not split_folders:
            scan.skipped.append((path.name, "a file outside the class folders"))
    _check_classes(scan, classes)
    return scan


def _images(folder: Path, root: Path, skipped: list[tuple[str, str]]) -> list[Path]:
    found = []
    for path in sorted(folder.rglob("*")):
        if any(not _visible(part) for part in path.relative_to(root).parents) or not _visible(path):
            continue
        relative = str(path.relative_to(root))
        if path.is_symlink():
            skipped.append((relative, "a link (not followed)"))
        elif path.is_file():
            if path.suffix.lower() in IMAGE_SUFFIXES:
                found.append(path)
            else:
                skipped.append((relative, "not an image file (by its name)"))
    return found


def _check_classes(scan: Scan, classes: list[str]) -> None:
    train_split = "pool" if "pool" in scan.files else "train"
    counts = {c: len(scan.files[train_split].get(c, [])) for c in classes}
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        scan.warnings.append(f"no training images in: {', '.join(empty[:10])}; those classes are left out")
    classes = [c for c in classes if counts[c] > 0]
    if not classes:
        raise ImageSetError("no images found: put images in one folder per class (root/<class>/image.jpg)")
    if len(classes) < 2:
        raise ImageSetError(f"only one class ({classes[0]}); a classifier needs at least two class folders")
    if len(classes) > MAX_CLASSES:
        raise ImageSetError(f"{len(classes):,} classes; at most {MAX_CLASSES:,} are supported")
    folded: dict[str, str] = {}
    for c in classes:
        other = folded.setdefault(c.casefold(), c)
        if other != c:
            raise ImageSetError(f"the classes {other!r} and {c!r} differ only in upper and lower case; rename one "
                                "(they would be the same folder on many computers)")
    few = [c for c in classes if counts[c] < MIN_IMAGES_PER_CLASS]
    if few:
        scan.warnings.append(f"few training images (under {MIN_IMAGES_PER_CLASS}) in: {', '.join(few[:10])}")
    sizes = [counts[c] for c in classes]
    if max(sizes) > IMBALANCE_RATIO * min(sizes):
        scan.warnings.append(f"the classes are imbalanced ({min(sizes)} to {max(sizes)} training images); a "
                             "class-weighted loss makes the small classes count as much as the large ones")
    scan.classes = tuple(classes)
    for split in scan.files:
        scan.files[split] = {c: scan.files[split].get(c, []) for c in classes}


@dataclass
class Prepared:
    """An image set as arrays: per split uint8 images [N, S, S, 3] and int64 labels, with each
    image's content hash; the classes; what could not be read."""

    classes: tuple[str, ...]
    image_size: int
    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    hashes: dict[str, list[str]]
    unreadable: list[tuple[str, str]]
    given_splits: bool
    sizes: list[tuple[int, int]]  # (width, height) of every original image that could be read

    @property
    def content_hash(self) -> str:
        """One hash of every image and label, in order: the identity of this data set."""
        digest = hashlib.sha256()
        for split in SPLITS + ("pool",):
            for h, label in zip(self.hashes.get(split, []), self.labels.get(split, np.zeros(0, np.int64))):
                digest.update(f"{split}:{label}:{h}".encode())
        return digest.hexdigest()


def prepare(scan: Scan, image_size: int = 32, cache_dir: str | Path | None = None,
            progress: Callable[[int, int], None] | None = None, workers: int = 2) -> Prepared:
    """Decode, centre-crop and resize every image of `scan` to `image_size` (see the module
    docstring), from the cache when the same files were prepared before."""
    entries = [(split, label, path) for split, by_class in scan.files.items()
               for label, c in enumerate(scan.classes) for path in by_class[c]]
    key = _cache_key(scan, entries, image_size)
    cache = Path(cache_dir) / f"imageset-{key}.npz" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        cached = _read_cache(cache, scan, image_size)
        if cached is not None:
            if progress:
                progress(len(entries), len(entries))
            return cached

    def load(entry) -> tuple[np.ndarray | None, str, str, tuple[int, int]]:
        _, _, path = entry
        try:
            content = path.read_bytes()
            image = open_image(content, image_size, path.name)
            return (preprocess(image, side=image_size), hashlib.sha256(content).hexdigest(), "",
                    image.info.get(ORIGINAL_SIZE, image.size))
        except ImageError as exc:
            return None, "", str(exc), (0, 0)
        except OSError as exc:
            return None, "", f"{path.name}: cannot be read ({exc.strerror or exc})", (0, 0)

    images: dict[str, list] = {s: [] for s in scan.files}
    labels: dict[str, list] = {s: [] for s in scan.files}
    hashes: dict[str, list] = {s: [] for s in scan.files}
    unreadable: list[tuple[str, str]] = []
    sizes: list[tuple[int, int]] = []
    with ThreadPoolExecutor(max(1, workers)) as pool:  # Pillow decodes without holding the GIL
        for done, (entry, (pixels, digest, problem, size)) in enumerate(zip(entries, pool.map(load, entries)), 1):
            split, label, path = entry
            if pixels is None:
                unreadable.append((str(path.relative_to(scan.root)), problem))
            else:
                sizes.append(size)
                images[split].append(pixels)
                labels[split].append(label)
                hashes[split].append(digest)
            if progress and (done % 64 == 0 or done == len(entries)):
                progress(done, len(entries))
    prepared = Prepared(scan.classes, image_size,
                        {s: np.stack(v) if v else np.zeros((0, image_size, image_size, 3), np.uint8)
                         for s, v in images.items()},
                        {s: np.asarray(v, dtype=np.int64) for s, v in labels.items()}, hashes, unreadable,
                        scan.given_splits, sizes)
    if cache is not None:
        _write_cache(cache, prepared)
    return prepared


def _cache_key(scan: Scan, entries, image_size: int) -> str:
    listing = [(split, label, str(path.relative_to(scan.root)), *_size_and_time(path))
               for split, label, path in entries]
    text = json.dumps([CACHE_VERSION, image_size, list(scan.classes), listing])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _size_and_time(path: Path) -> tuple[int, int]:
    try:
        info = path.stat()
        return info.st_size, info.st_mtime_ns
    except OSError:
        return -1, -1


def _write_cache(cache: Path, prepared: Prepared) -> None:
    arrays = {f"images_{s}": a for s, a in prepared.images.items()}
    arrays.update({f"labels_{s}": a for s, a in prepared.labels.items()})
    meta = json.dumps({"classes": list(prepared.classes), "image_size": prepared.image_size,
                       "hashes": prepared.hashes, "unreadable": prepared.unreadable,
                       "given_splits": prepared.given_splits, "sizes": prepared.sizes})
    try:
        atomic_write(cache, lambda fh: np.savez(fh, meta=np.array(meta), **arrays))
    except OSError:
        pass  # a full or read-only disk only costs preparing again next time


def _read_cache(cache: Path, scan: Scan, image_size: int) -> Prepared | None:
    try:
        with np.load(cache, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            images = {k[len("images_"):]: f[k] for k in f.files if k.startswith("images_")}
            labels = {k[len("labels_"):]: f[k] for k in f.files if k.startswith("labels_")}
    except (OSError, ValueError, KeyError):
        return None
    if tuple(meta["classes"]) != scan.classes or meta["image_size"] != image_size:
        return None
    return Prepared(scan.classes, image_size, images, labels, meta["hashes"],
                    [tuple(u) for u in meta["unreadable"]], meta["given_splits"], [tuple(v) for v in meta["sizes"]])


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held out) holding `fraction` of every class out, at least one image of
    each class that has two or more, drawn from `seed`."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_held = min(max(1, round(fraction * len(members))), len(members) - 1) if len(members) > 1 else 0
        held.append(members[:n_held])
        train.append(members[n_held:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


def shared_images(prepared: Prepared) -> list[str]:
    """Warnings for images whose content appears in training and in validation or test."""
    train_split = "pool" if "pool" in prepared.hashes else "train"
    in_train = set(prepared.hashes.get(train_split, []))
    found = []
    for split in ("val", "test"):
        shared = len(in_train & set(prepared.hashes.get(split, [])))
        if shared:
            found.append(f"{shared} image(s) of the {split} folder are also in the training images (same content): "
                         f"their {split} scores overstate what the model does on new images")
    within = len(prepared.hashes.get(train_split, [])) - len(in_train)
    if within:
        found.append(f"{within} training image(s) are exact copies of others")
    return found


@dataclass
class ImageSet:
    """A prepared image set as the engine trains on it, with what a person should know about it."""

    data: ImageData
    scan: Scan
    prepared: Prepared
    problems: list[str]  # warnings: few images, imbalance, shared images, skipped and unreadable files

    def report(self) -> str:
        """Classes, counts per split, image sizes and problems, as `cifarapp data inspect` prints them."""
        data = self.data
        lines = [f"{data.name}: {len(data.classes)} classes, images prepared at {data.image_size}x{data.image_size}"]
        splits = [("train", data.train_labels), ("val", data.val_labels), ("test", data.test_labels)]
        if data.test_name != "test set":
            splits = splits[:2]
        width = max(len(c) for c in data.classes)
        lines.append(f"  {'class':<{width}}  " + "  ".join(f"{name:>6}" for name, _ in splits))
        for index, name in enumerate(data.classes):
            counts = "  ".join(f"{int((labels == index).sum()):>6}" for _, labels in splits)
            lines.append(f"  {name:<{width}}  {counts}")
        totals = "  ".join(f"{len(labels):>6}" for _, labels in splits)
        lines.append(f"  {'total':<{width}}  {totals}")
        origin = "the folders as given" if self.prepared.given_splits else "a stratified split of the images"
        lines.append(f"splits: {origin}; evaluation uses the {data.test_name}")
        if self.prepared.sizes:
            widths = sorted(w for w, _ in self.prepared.sizes)
            heights = sorted(h for _, h in self.prepared.sizes)
            lines.append(f"original sizes: {widths[0]}-{widths[-1]} px wide (median {widths[len(widths) // 2]}), "
                         f"{heights[0]}-{heights[-1]} px high (median {heights[len(heights) // 2]})")
        lines.append(f"normalisation (from the training images): mean {list(data.normalization.mean)}, "
                     f"std {list(data.normalization.std)}")
        lines += [f"problem: {p}" for p in self.problems] or ["problems: none found"]
        return "\n".join(lines)


def load_image_set(path: str | Path, datasets_dir: str | Path, image_size: int = 32, val_fraction: float = 0.2,
                   seed: int = 0, progress: Callable[[int, int], None] | None = None) -> ImageSet:
    """A folder or .zip of labelled images (see the module docstring) as an ImageSet. Whatever
    is written (the extracted zip, the prepared arrays) goes under `datasets_dir`. Without a
    val/ folder, `val_fraction` of every class is held out (seeded); without a test/ folder,
    evaluation uses the validation images."""
    path = Path(path)
    datasets_dir = Path(datasets_dir)
    if not path.exists():
        raise ImageSetError(f"{path} does not exist; give a folder of class folders or a .zip of one")
    if path.is_file():
        if path.suffix.lower() != ".zip":
            raise ImageSetError(f"{path.name} is neither a folder nor a .zip of class folders")
        path = extract_zip(path, datasets_dir / "extracted")
    if not 0 < val_fraction < 1:
        raise ImageSetError(f"the validation fraction must be between 0 and 1, got {val_fraction:g}")
    scan = scan_folder(path)
    prepared = prepare(scan, image_size, cache_dir=datasets_dir / "prepared", progress=progress)
    images = {split: hwc_to_tensor(array) for split, array in prepared.images.items()}
    labels = {split: torch.from_numpy(array) for split, array in prepared.labels.items()}
    source = "pool" if "pool" in images else "train"
    if len(labels[source]) == 0:
        raise ImageSetError("none of the training images could be read; see the list of unreadable files")
    if "val" in images:
        train_x, train_y, val_x, val_y = images[source], labels[source], images["val"], labels["val"]
    else:
        train_idx, val_idx = stratified_holdout(prepared.labels[source], val_fraction, seed)
        train_x, train_y = images[source][train_idx], labels[source][train_idx]
        val_x, val_y = images[source][val_idx], labels[source][val_idx]
    if "test" in images and len(labels["test"]):
        test_x, test_y, test_name = images["test"], labels["test"], "test set"
    else:
        test_x, test_y, test_name = val_x, val_y, "validation images (the data has no test folder)"
    problems = scan.warnings + shared_images(prepared)
    problems += [f"skipped {name}: {why}" for name, why in scan.skipped[:20]]
    problems += [f"unreadable {name}: {why}" for name, why in prepared.unreadable[:20]]
    hidden = len(scan.skipped[20:]) + len(prepared.unreadable[20:])
    if hidden:
        problems.append(f"... and {hidden} more skipped or unreadable files")
    data = ImageData(train_x, train_y, test_x, test_y, scan.classes, source=path.name, name=_set_name(path),
                     val_images=val_x, val_labels=val_y, test_name=test_name,
                     normalization=Normalization.of_images(train_x), content_hash=prepared.content_hash,
                     warnings=tuple(problems))
    return ImageSet(data, scan, prepared, problems)


def _set_name(folder: Path) -> str:
    complete = folder / ".complete"
    if complete.is_file():  # an extracted zip: named after the zip
        return Path(complete.read_text()).stem
    return folder.name


def is_image_set(path: str | Path) -> bool:
    """Whether `path` looks like a user's image set (a .zip, or a folder that is not CIFAR-10's)."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() == ".zip"
    return path.is_dir() and not any((f / "data_batch_1").is_file() for f in (path, path / "cifar-10-batches-py"))
