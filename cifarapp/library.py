"""The image sets the app keeps for its users in one data-sets directory: zips uploaded in the
browser (extracted once, by content) and collections built in the browser (one folder per
class, filled with uploaded files and webcam snapshots). A set belongs to whoever added it (by
owner key, see `runs.owner_key`); nothing is written outside the directory."""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import secrets
import threading
import unicodedata
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .files import atomic_write, atomic_write_text
from .images import ImageError, array_to_image, open_image, to_rgb
from .imagesets import (
    IMAGE_SIZES,
    IMAGE_SUFFIXES,
    MAX_CLASSES,
    ImageSet,
    ImageSetError,
    extract_zip,
    load_image_set,
    scan_folder,
)

UPLOADED, COLLECTED = "uploaded", "collected"
# a set's key, optionally with the side its images are prepared at ("@64"; default: the library's)
KEY_PATTERN = re.compile(rf"({UPLOADED}/zip-[0-9a-f]{{16}}|{COLLECTED}/[0-9a-f]{{16}})"
                         rf"(?:@({'|'.join(map(str, IMAGE_SIZES))}))?")
OWNERS_FILE, NAME_FILE = ".owners", ".name"
MAX_NAME_CHARS = 64
MAX_COLLECTED_IMAGES = 5000  # per collection
MAX_STORED_SIDE = 512  # collected images are stored at most this large (the models see 32 or 64)


@dataclass(frozen=True)
class LibraryEntry:
    """One kept image set, as the Data panel lists it."""

    key: str
    name: str
    kind: str  # UPLOADED or COLLECTED
    counts: dict[str, int]  # images per class (all splits)

    @property
    def label(self) -> str:
        total = sum(self.counts.values())
        kind = "uploaded zip" if self.kind == UPLOADED else "collected here"
        classes = f"{len(self.counts)} class{'es' if len(self.counts) != 1 else ''}"
        return f"{self.name} ({classes}, {total:,} image{'s' if total != 1 else ''}; {kind})"


def clean_name(text, what: str = "name") -> str:
    """A class or set name as typed, made safe for a folder name; ImageSetError says what is wrong."""
    if not isinstance(text, str):
        raise ImageSetError(f"the {what} must be text")
    name = unicodedata.normalize("NFC", " ".join(text.split()))
    if not name:
        raise ImageSetError(f"type a {what} first")
    if len(name) > MAX_NAME_CHARS or any(c in name for c in '/\\:*?"<>|') or name.startswith(".") or \
            any(unicodedata.category(c).startswith("C") for c in name):
        raise ImageSetError(f"{name[:MAX_NAME_CHARS]!r} cannot be a {what}: use at most {MAX_NAME_CHARS} letters, "
                            "digits, spaces and simple punctuation, not starting with a dot "
                            "and without / \\ : * ? \" < > |")
    return name


class ImageSetLibrary:
    """The data-sets directory `root` (see the module docstring). Prepared sets are kept in
    memory (the last `cache_size`), reloaded when their folder changes."""

    def __init__(self, root: str | Path, image_size: int = 32, val_fraction: float = 0.2, cache_size: int = 2):
        self.root = Path(root)
        self.image_size, self.val_fraction, self.cache_size = image_size, val_fraction, cache_size
        self._cache: OrderedDict[tuple, ImageSet] = OrderedDict()
        self._lock = threading.Lock()  # guards the cache and the owner files

    def folder(self, key, owner: str | None) -> Path:
        """The folder of the set `key` if the owner key `owner` may use it (None: the command line,
        which may use any); ImageSetError otherwise."""
        match = KEY_PATTERN.fullmatch(key) if isinstance(key, str) else None
        if match is None:
            raise ImageSetError("unknown data set; pick one from the list")
        folder = self.root / match.group(1)
        if not folder.is_dir() or (owner is not None and owner not in self._owners(folder)):
            raise ImageSetError("unknown data set; pick one from the list (a data set is visible to whoever added it)")
        return folder

    def entries(self, owner: str) -> list[LibraryEntry]:
        """The sets `owner` may use, newest first."""
        found = []
        for kind in (UPLOADED, COLLECTED):
            base = self.root / kind
            if not base.is_dir():
                continue
            for folder in base.iterdir():
                key = f"{kind}/{folder.name}"
                if KEY_PATTERN.fullmatch(key) and folder.is_dir() and owner in self._owners(folder):
                    found.append((folder.stat().st_mtime, LibraryEntry(key, self._name(folder), kind,
                                                                       self._counts(folder))))
        return [entry for _, entry in sorted(found, key=lambda item: -item[0])]

    @staticmethod
    def sized(key: str, size: int) -> str:
        """The key of the set `key` prepared at `size` pixels (explicit, so that a run's config
        names the same images whatever default a later resume runs with)."""
        return f"{KEY_PATTERN.fullmatch(key).group(1)}@{size}"

    def load(self, key: str, owner: str | None, progress: Callable[[int, int], None] | None = None) -> ImageSet:
        """The prepared set (cached in memory and on disk while its files are unchanged)."""
        folder = self.folder(key, owner)
        size = int(KEY_PATTERN.fullmatch(key).group(2) or self.image_size)
        signature = (folder, size, _tree_signature(folder))
        with self._lock:
            if signature in self._cache:
                self._cache.move_to_end(signature)
                return self._cache[signature]
        image_set = load_image_set(folder, self.root, size, self.val_fraction, progress=progress)
        name = self._name(folder)
        image_set = ImageSet(replace(image_set.data, name=name, source=name), image_set.scan, image_set.prepared,
                             image_set.problems)
        with self._lock:
            self._cache[signature] = image_set
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return image_set

    def add_zip(self, zip_path: str | Path, owner: str, name: str | None = None) -> str:
        """Extract an uploaded zip (checked entry by entry) and keep it for `owner`; its key."""
        target = extract_zip(zip_path, self.root / UPLOADED)
        scan_folder(target)  # refuses what cannot be trained on, with the reason
        with self._lock:
            if not (target / NAME_FILE).is_file():
                atomic_write_text(target / NAME_FILE, clean_name(name or Path(zip_path).stem, "data set name"))
            self._add_owner(target, owner)
        return f"{UPLOADED}/{target.name}"

    def new_collection(self, name, owner: str) -> str:
        """An empty collection named `name` for `owner`; its key."""
        name = clean_name(name, "data set name")
        folder = self.root / COLLECTED / secrets.token_hex(8)
        folder.mkdir(parents=True)
        with self._lock:
            atomic_write_text(folder / NAME_FILE, name)
            self._add_owner(folder, owner)
        return f"{COLLECTED}/{folder.name}"

    def add_images(self, key: str, owner: str, class_name, images: list) -> tuple[int, list[str]]:
        """Add images (file paths, bytes or numpy arrays such as webcam frames) to a class of a
        collection (made if new): (how many were added, a message per image that was not)."""
        folder = self.folder(key, owner)
        if folder.parent.name != COLLECTED:
            raise ImageSetError("images can only be added to a data set collected here; "
                                "an uploaded zip stays as it was")
        class_name = clean_name(class_name, "class name")
        existing = {p.name.casefold(): p for p in folder.iterdir() if p.is_dir()}
        class_folder = existing.get(class_name.casefold(), folder / class_name)
        if not class_folder.exists() and len(existing) >= MAX_CLASSES:
            raise ImageSetError(f"a data set has at most {MAX_CLASSES} classes")
        room = MAX_COLLECTED_IMAGES - sum(self._counts(folder).values())
        added, problems = 0, []
        for index, source in enumerate(images):
            if added >= room:
                problems.append(f"the data set is full ({MAX_COLLECTED_IMAGES:,} images); {len(images) - index} "
                                "not added")
                break
            try:
                png = _stored_png(source)
            except ImageError as exc:
                problems.append(str(exc))
                continue
            class_folder.mkdir(exist_ok=True)
            target = class_folder / f"{hashlib.sha256(png).hexdigest()[:20]}.png"
            if target.exists():  # the same picture twice is kept once
                problems.append(f"image {index + 1} is already in {class_folder.name} (the same picture)")
                continue
            atomic_write(target, lambda fh, png=png: fh.write(png))
            added += 1
        return added, problems

    def remove_class(self, key: str, owner: str, class_name) -> None:
        """Delete a class (its folder and images) from a collection."""
        folder = self.folder(key, owner)
        if folder.parent.name != COLLECTED:
            raise ImageSetError("only a data set collected here can be changed")
        class_folder = folder / clean_name(class_name, "class name")
        if class_folder.is_dir():
            for path in class_folder.iterdir():
                path.unlink()
            class_folder.rmdir()

    def counts(self, key: str, owner: str) -> dict[str, int]:
        """Images per class of a set."""
        return self._counts(self.folder(key, owner))

    def write_zip(self, key: str, owner: str, into: str | Path) -> Path:
        """A zip of the set's class folders (as `cifarapp train --data` and this app read them) in `into`."""
        folder = self.folder(key, owner)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:  # images are compressed already
            for path in sorted(folder.rglob("*")):
                if path.is_file() and not path.is_symlink() and not path.name.startswith("."):
                    archive.write(path, str(path.relative_to(folder)))
        target = Path(into) / f"{_file_stem(self._name(folder))}.zip"
        atomic_write(target, lambda fh: fh.write(buffer.getvalue()))
        return target

    def _owners(self, folder: Path) -> set[str]:
        try:
            return set((folder / OWNERS_FILE).read_text().split())
        except OSError:
            return set()

    def _add_owner(self, folder: Path, owner: str) -> None:
        owners = self._owners(folder) | {owner}
        atomic_write_text(folder / OWNERS_FILE, "\n".join(sorted(owners)) + "\n")

    @staticmethod
    def _name(folder: Path) -> str:
        try:
            return (folder / NAME_FILE).read_text().strip() or folder.name
        except OSError:
            return folder.name

    @staticmethod
    def _counts(folder: Path) -> dict[str, int]:
        try:
            scan = scan_folder(folder)
        except ImageSetError:  # an empty or one-class collection so far
            return {p.name: sum(1 for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
                    for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")}
        return {c: sum(by_class[c] for by_class in scan.counts().values()) for c in scan.classes}


def _stored_png(source) -> bytes:
    """An image as PNG bytes, at most MAX_STORED_SIDE on its longer side (checked by the safe loader)."""
    image = array_to_image(source) if isinstance(source, np.ndarray) else open_image(source, MAX_STORED_SIDE)
    with contextlib.suppress(OSError, ValueError, SyntaxError, KeyError, TypeError):  # a broken EXIF block
        image = ImageOps.exif_transpose(image) or image  # stored upright: PNG keeps no orientation tag
    image = to_rgb(image)
    image.thumbnail((MAX_STORED_SIDE, MAX_STORED_SIDE), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _tree_signature(folder: Path) -> tuple:
    return tuple(sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in folder.rglob("*")
                        if p.is_file() and not p.name.startswith(".")))


def _file_stem(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "dataset"
