"""The dataset type every set opens into, the validation of class-folder trees, and users' own data
(any ImageFolder tree, or a CSV of path,label)."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .decode import load_image

# What torchvision's ImageFolder accepts, which is what every reference repository reads with.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Files that ship beside class folders in the real sets (ImageNet-A's README, TDA's classnames.txt).
BENIGN_FILES = {"readme.txt", "readme.md", "classnames.txt", "license", "license.txt", "labels.txt"}


class DatasetError(ValueError):
    """A test set that cannot be read as asked; one line naming the place and the problem."""


@dataclass
class ImageDataset:
    """`ds[i] -> (image, label, path)`; labels index `classnames`, the classes the logits range over."""

    set_id: str
    root: Path  # the folder the layout was recognised in
    layout: str  # which layout, e.g. "imagenet-a (TPT, MINT, DynaPrompt, ZERO)"
    classnames: list[str]
    samples: list[tuple[Path, int]]
    templates: list[str]  # the prompt templates this set uses in the references (see templates.py)
    augmix: bool  # the reference default: AugMix views for the cross-domain sets, not for I/A/V/R/K
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int, str]:
        return self.load(index)

    def load(self, index: int, min_side: int | None = None) -> tuple[Image.Image, int, str]:
        """Raises DecodeError for an unusable image; the stream records it as a skip."""
        path, label = self.samples[index]
        return load_image(path, min_side=min_side), label, str(path)

    def summary(self) -> str:
        return (f"{self.set_id}: {len(self.samples)} images, {len(self.classnames)} classes, "
                f"layout {self.layout} at {self.root}")


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_class_folder(folder: Path) -> tuple[list[Path], list[Path]]:
    """Images under one class folder, recursively and sorted as ImageFolder walks; and stray files."""
    images, strays = [], []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            if is_image(name):
                images.append(Path(dirpath) / name)
            elif not name.startswith("."):
                strays.append(Path(dirpath) / name)
    return images, strays


def examples(items: Iterable[object], limit: int = 3) -> str:
    items = [str(i) for i in items]
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def read_class_folders(root: Path, label_of: Callable[[str], int | None], expected: set[str],
                       what: str) -> list[tuple[Path, int]]:
    """Samples of a tree whose sub-folders are classes, validated against the expected folder names.

    label_of maps a folder name to its label. Missing, unknown or empty class folders, and stray
    non-image files, are errors.
    """
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    folders = {e.name for e in entries if e.is_dir() and not e.name.startswith(".")}
    stray = [e.name for e in entries if e.is_file() and not e.name.startswith(".") and e.name.lower() not in BENIGN_FILES]
    unknown, missing = sorted(folders - expected), sorted(expected - folders)
    if unknown:
        raise DatasetError(f"{root}: {len(unknown)} folder(s) that are not {what}: {examples(unknown)}")
    if missing:
        raise DatasetError(f"{root}: {len(missing)} of {len(expected)} class folders missing: {examples(missing)}")
    if stray:
        raise DatasetError(f"{root}: stray file(s) among the class folders: {examples(stray)}")
    samples: list[tuple[Path, int]] = []
    empty, strays = [], []
    for name in sorted(folders, key=lambda n: label_of(n)):  # label order, as ImageFolder's sorted classes
        images, stray_files = list_class_folder(root / name)
        empty += [] if images else [name]
        strays += stray_files
        samples += [(path, label_of(name)) for path in images]
    if empty:
        raise DatasetError(f"{root}: {len(empty)} empty class folder(s): {examples(empty)}")
    if strays:
        raise DatasetError(f"{root}: non-image file(s) inside class folders: {examples(strays)}")
    return samples


def find_class_trees(root: Path, looks_like_class: Callable[[str], bool], depth: int = 3,
                     budget: int = 500) -> list[Path]:
    """Folders below root (up to depth, at most `budget` of them scanned) whose sub-folders look like
    classes: the hint for a root that is one level off."""
    found, frontier, scanned = [], [root], 0
    for _ in range(depth + 1):
        next_frontier = []
        for folder in frontier[: max(0, budget - scanned)]:
            scanned += 1
            try:
                subdirs = sorted((e for e in os.scandir(folder) if e.is_dir()), key=lambda e: e.name)
            except OSError:
                continue
            if subdirs and sum(looks_like_class(e.name) for e in subdirs) >= max(1, len(subdirs) // 2):
                found.append(folder)
            else:
                next_frontier += [Path(e.path) for e in subdirs]
        frontier = next_frontier
    return found


def open_image_folder(root: Path, set_id: str = "folder") -> ImageDataset:
    """Any ImageFolder tree: classes are the sorted sub-folders. Names come from `classnames.txt` in the
    root when present (one name per line in folder order, or `folder name` pairs), else from folder names."""
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not folders:
        raise DatasetError(f"{root}: no class folders (an ImageFolder tree has one sub-folder per class)")
    names = {f: f.replace("_", " ") for f in folders}
    names_file = root / "classnames.txt"
    if names_file.is_file():
        lines = [line.strip() for line in names_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        pairs = dict(line.split(maxsplit=1) for line in lines if len(line.split(maxsplit=1)) == 2)
        if set(folders) <= pairs.keys():
            names = {f: pairs[f] for f in folders}
        elif len(lines) == len(folders):
            names = dict(zip(folders, lines))
        else:
            raise DatasetError(f"{names_file}: {len(lines)} names for {len(folders)} class folders, and it does "
                               "not pair every folder with a name")
    index = {f: i for i, f in enumerate(folders)}
    samples = read_class_folders(root, index.get, set(folders), "class folders")
    return ImageDataset(set_id, root, "ImageFolder tree", [names[f] for f in folders], samples,
                        ["a photo of a {}."], augmix=False)


def open_csv(csv_path: Path, set_id: str = "csv") -> ImageDataset:
    """A CSV with columns `path,label` (paths relative to the CSV). Integer labels need `classnames.txt`
    beside the CSV, one name per line in label order; class-name labels give sorted classes."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"path", "label"} <= rows[0].keys():
        raise DatasetError(f"{csv_path}: expected a header with columns path,label")
    names_file = csv_path.parent / "classnames.txt"
    labels = [row["label"].strip() for row in rows]
    if all(label.lstrip("-").isdigit() for label in labels):
        if not names_file.is_file():
            raise DatasetError(f"{csv_path}: integer labels need class names in {names_file}, one per line")
        classnames = [line.strip() for line in names_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        numeric = [int(label) for label in labels]
        if bad := [label for label in numeric if not 0 <= label < len(classnames)]:
            raise DatasetError(f"{csv_path}: labels outside 0..{len(classnames) - 1}: {examples(sorted(set(bad)))}")
    else:
        classnames = sorted(set(labels))
        numeric = [classnames.index(label) for label in labels]
    samples = [((csv_path.parent / row["path"]).resolve(), label) for row, label in zip(rows, numeric)]
    if missing := [p for p, _ in samples if not p.is_file()]:
        raise DatasetError(f"{csv_path}: {len(missing)} listed image(s) do not exist: {examples(missing)}")
    return ImageDataset(set_id, csv_path.parent, "CSV path,label", classnames, samples, ["a photo of a {}."],
                        augmix=False)
