"""The dataset type every set opens into, the validation of class-folder trees, and users' own data
(any ImageFolder tree, or a CSV of path,label).

The files of a tree (every set read from class folders) and the rows of a CSV follow one rule:

- A file is an image by its content, not its name: its first 16 bytes carry the signature of a format
  in decode.IMAGE_FORMATS (see decode.image_format). A PNG named .jpg is an image; Thumbs.db, a .txt
  and a zero-byte file are not, whatever their names. Non-images (and broken links) are skipped and
  listed in `ImageDataset.skipped_files` and a note, never refusing the set, unless `strict=True`,
  where they are a DatasetError. Images that cannot be decoded (truncated, corrupt, too large) stay
  samples: the run records each as a skip (decode.DecodeError).
- Names starting with "." are ignored at every level (.DS_Store, macOS ._ files, .ipynb_checkpoints).
- Beside the class folders, BENIGN_FILES (README, classnames.txt, ...) are ignored, other non-images are
  skipped as above, and an image is an error: it belongs to no class.
- Images in nested folders of a class folder belong to that class (ImageFolder semantics), links
  followed. A symlink loop (a link to a folder that contains it) is an error, whatever `strict`: the
  tree is broken, and walking it would count the same images again and again.

A `folder` tree needs at least two class folders, and is refused when it is one level off: when no
class folder holds an image directly and two of them share a sub-folder name, they are domains holding
the same classes (the PACS, OfficeHome, DomainNet layout), and the error names the ids to pass instead.
Sub-folders with names of their own (n01.., n02.. under coarse classes) are nested folders of genuine
classes.

`classnames.txt` in a `folder` tree names its classes, in one of three forms:

- `folder<TAB>name` lines, chosen as soon as one line holds a TAB;
- `folder name` lines (the first word a class folder, the rest its name, as shiftbench writes them),
  chosen as soon as one line starts with a class folder followed by more words;
- otherwise plain names, one per class folder in sorted folder order: the count must match, and a
  name that is another folder's own name (a reordered file) is an error.

In the pair forms the order of lines does not matter, every class folder is named exactly once and any
other folder name is an error. `ImageDataset.mapping_preview()` shows the first pairs for check-data.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from PIL import Image

from .decode import image_format, load_image

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
    notes: list[str] = field(default_factory=list)
    skipped_files: list[Path] = field(default_factory=list)  # files that are not images by content
    class_keys: list[str] = field(default_factory=list)  # how the data names each class (folder, CSV label)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int, str]:
        return self.load(index)

    def load(self, index: int, min_side: int | None = None) -> tuple[Image.Image, int, str]:
        """Raises DecodeError for an unusable image; the stream records it as a skip."""
        path, label = self.samples[index]
        return load_image(path, min_side=min_side), label, str(path)

    def summary(self) -> str:
        skipped = f", {len(self.skipped_files)} non-image file(s) skipped" if self.skipped_files else ""
        return (f"{self.set_id}: {len(self.samples)} images, {len(self.classnames)} classes, "
                f"layout {self.layout} at {self.root}{skipped}")

    def mapping_preview(self, n: int = 3) -> str:
        """The first classes as the data names them -> the names prompted: a wrong mapping shows at a glance."""
        if self.class_keys:
            shown = [f"{key} -> {name}" for key, name in zip(self.class_keys, self.classnames)]
        else:
            shown = list(self.classnames)
        more = ", ..." if len(shown) > n else ""
        return f"classes: {', '.join(shown[:n])}{more} ({len(self.classnames)})"


class ClassFolders(NamedTuple):
    images: dict[str, list[Path]]  # class folder name -> its images by content, in ImageFolder's walk order
    skipped: list[Path]  # files of the tree that are not images by content


def examples(items: Iterable[object], limit: int = 3) -> str:
    items = [str(i) for i in items]
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def relative_to(paths: Iterable[Path], root: Path) -> list[Path]:
    """Paths as shown in messages: relative to root where they lie under it."""
    return [path.relative_to(root) if path.is_relative_to(root) else path for path in paths]


def non_images(root: Path, skipped: list[Path]) -> str:
    return f"{len(skipped)} file(s) that are not images (by their first bytes): {examples(relative_to(skipped, root))}"


def non_image_error(root: Path, skipped: list[Path], what_to_do: str) -> DatasetError:
    return DatasetError(f"{root}: {non_images(root, skipped)}; {what_to_do}")


def skipped_note(root: Path, skipped: list[Path]) -> list[str]:
    return [f"skipped {non_images(root, skipped)}"] if skipped else []


def _scandir(folder: Path) -> list[os.DirEntry]:
    """The visible entries of a folder, sorted by name."""
    try:
        entries = list(os.scandir(folder))
    except OSError as e:
        raise DatasetError(f"{folder}: cannot list the folder ({e.strerror or e})") from None
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _enter(folder: str | Path, ancestors: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    """The folders from the root down to `folder`, by (device, inode); a link back to one of them is a loop,
    caught once here instead of walked 40 levels deep."""
    stat = os.stat(folder)
    if (stat.st_dev, stat.st_ino) in ancestors:
        raise DatasetError(f"{folder}: a symlink loop, it leads back to {os.path.realpath(folder)}, which "
                           "contains it; remove or fix the link")
    return (*ancestors, (stat.st_dev, stat.st_ino))


def walk_class_folder(folder: Path, images: list[Path], skipped: list[Path],
                      ancestors: tuple[tuple[int, int], ...]) -> None:
    """Append the images under one class folder to `images` (files sorted, then sub-folders sorted, links
    followed: ImageFolder's order) and its other files to `skipped`. `ancestors`: see _enter."""
    subfolders = []
    for entry in _scandir(folder):
        if entry.is_dir():
            subfolders.append(entry)
        elif entry.is_file() and image_format(entry.path):
            images.append(Path(entry.path))
        else:  # not an image by content, or a broken link, a socket, a fifo (never read: it would block)
            skipped.append(Path(entry.path))
    for entry in subfolders:
        walk_class_folder(Path(entry.path), images, skipped, _enter(entry.path, ancestors))


def scan_class_folders(root: Path, expected: set[str], what: str) -> ClassFolders:
    """The images and non-image files of a tree whose sub-folders are classes, validated against the
    expected folder names: missing or unknown class folders, and images beside them, are errors."""
    entries = _scandir(root)
    folders = {e.name for e in entries if e.is_dir()}
    unknown, missing = sorted(folders - expected), sorted(expected - folders)
    if unknown:
        raise DatasetError(f"{root}: {len(unknown)} folder(s) that are not {what}: {examples(unknown)}")
    if missing:
        raise DatasetError(f"{root}: {len(missing)} of {len(expected)} class folders missing: {examples(missing)}")
    skipped = [Path(e.path) for e in entries if not e.is_dir() and e.name.lower() not in BENIGN_FILES]
    if loose_images := [path for path in skipped if image_format(path)]:
        raise DatasetError(f"{root}: {len(loose_images)} image(s) beside the class folders, in no class: "
                           f"{examples(p.name for p in loose_images)}; move them into their class folder")
    images: dict[str, list[Path]] = {}
    top = _enter(root, ())
    for name in sorted(folders):
        images[name] = []
        walk_class_folder(root / name, images[name], skipped, _enter(root / name, top))
    return ClassFolders(images, skipped)


def class_samples(root: Path, scan: ClassFolders, label_of: Callable[[str], int]) -> list[tuple[Path, int]]:
    """(path, label) in label order, as ImageFolder's sorted classes; a class without images is an error."""
    if empty := [name for name, paths in scan.images.items() if not paths]:
        raise DatasetError(f"{root}: {len(empty)} empty class folder(s), without any image: {examples(empty)}")
    return [(path, label_of(name)) for name in sorted(scan.images, key=label_of) for path in scan.images[name]]


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


def check_class_level(root: Path, images: dict[str, list[Path]]) -> None:
    """Refuse a tree of one class, or whose class folders are one level down (domains: see the module doc)."""
    holding = [name for name, paths in images.items() if paths]
    # stops at the first image directly in its class folder: at once in a genuine tree (files come first)
    direct = any(path.parent == root / name for name in holding for path in images[name])
    children = {} if direct else {name: {path.relative_to(root / name).parts[0] for path in images[name]}
                                  for name in holding}
    if len(images) == 1:
        (name,) = images
        if holding and not direct:
            raise DatasetError(f"{root}: one class folder, {name}, whose images are all in its sub-folders "
                               f"({examples(sorted(children[name]))}): the class folders seem to be one level "
                               f"down; open {root / name} instead")
        raise DatasetError(f"{root}: only one class folder ({name}), and accuracy over a single class means "
                           "nothing; an ImageFolder tree has one sub-folder per class, at least two")
    shared = sorted(child for child, count in Counter(c for parts in children.values() for c in parts).items()
                    if count > 1)
    if len(holding) > 1 and not direct and shared:
        ids = "/".join(f"folder:{name}" for name in holding)
        raise DatasetError(f"{root}: {examples(holding)} look like domains, not classes: none holds an image "
                           f"directly and they share sub-folders ({examples(shared)}); each domain is an "
                           f"ImageFolder tree of its own: keep {root} as the data root and pass --test_sets {ids}")


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from None


def read_classnames(names_file: Path, folders: list[str]) -> dict[str, str]:
    """Class folder -> class name from classnames.txt, in one of the forms of the module docstring."""
    lines = [(number, line.strip()) for number, line in enumerate(read_text(names_file).splitlines(), 1)
             if line.strip()]
    known = set(folders)
    if any("\t" in line for _, line in lines):
        separator, form = "\t", "folder<TAB>name"
    elif any(len(words := line.split(maxsplit=1)) == 2 and words[0] in known for _, line in lines):
        separator, form = None, "folder name"
    else:
        return _plain_classnames(names_file, [line for _, line in lines], folders)
    names: dict[str, str] = {}
    for number, line in lines:
        parts = line.split(separator, 1)
        if len(parts) != 2 or not parts[1].strip():
            raise DatasetError(f"{names_file}:{number}: expected '{form}' as on the other lines, got {line!r}")
        folder, name = parts[0].strip(), parts[1].strip()
        if folder not in known:
            raise DatasetError(f"{names_file}:{number}: {folder!r} is not a class folder beside it")
        if folder in names:
            raise DatasetError(f"{names_file}:{number}: class folder {folder!r} is named a second time")
        names[folder] = name
    if unnamed := [f for f in folders if f not in names]:
        raise DatasetError(f"{names_file}: no name for {len(unnamed)} of {len(folders)} class folders: "
                           f"{examples(unnamed)}")
    return names


def _plain_classnames(names_file: Path, lines: list[str], folders: list[str]) -> dict[str, str]:
    """Names by position: the count must match, and a line that names another folder is a reordered file."""
    if len(lines) != len(folders):
        raise DatasetError(f"{names_file}: {len(lines)} names for {len(folders)} class folders; give one name per "
                           "class folder in sorted folder order, or 'folder<TAB>name' lines")

    def normal(name: str) -> str:
        return name.lower().replace("_", " ")

    position = {normal(folder): i for i, folder in enumerate(folders)}
    for i, name in enumerate(lines):
        if position.get(normal(name), i) != i:
            raise DatasetError(f"{names_file}: line {i + 1} is {name!r}, the name of folder "
                               f"{folders[position[normal(name)]]!r}, but names by position go to folder "
                               f"{folders[i]!r}; list names in sorted folder order, or write 'folder<TAB>name' lines")
    return dict(zip(folders, lines))


def open_image_folder(root: Path, set_id: str = "folder") -> ImageDataset:
    """Any ImageFolder tree: classes are the sorted sub-folders, named by `classnames.txt` in the root when
    present, else by their folder names."""
    folders = sorted(e.name for e in _scandir(root) if e.is_dir())
    if not folders:
        raise DatasetError(f"{root}: no class folders (an ImageFolder tree has one sub-folder per class)")
    scan = scan_class_folders(root, set(folders), "class folders")
    check_class_level(root, scan.images)
    names_file = root / "classnames.txt"
    names = read_classnames(names_file, folders) if names_file.is_file() else {f: f.replace("_", " ") for f in folders}
    index = {f: i for i, f in enumerate(folders)}
    samples = class_samples(root, scan, index.__getitem__)
    return ImageDataset(set_id, root, "ImageFolder tree", [names[f] for f in folders], samples,
                        notes=skipped_note(root, scan.skipped),
                        skipped_files=scan.skipped, class_keys=folders)


def _read_rows(csv_path: Path) -> list[tuple[int, str, str]]:
    """(line number, path, label) of each row; a row without either is an error naming its line."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not {"path", "label"} <= set(reader.fieldnames or ()):
                raise DatasetError(f"{csv_path}: expected a header with columns path,label")
            rows = [(reader.line_num, (row["path"] or "").strip(), (row["label"] or "").strip()) for row in reader]
    except (UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{csv_path}: not a UTF-8 CSV of path,label rows ({e})") from None
    except OSError as e:
        raise DatasetError(f"{csv_path}: cannot read ({e.strerror or e})") from None
    if not rows:
        raise DatasetError(f"{csv_path}: no rows below the path,label header")
    if incomplete := [number for number, path, label in rows if not path or not label]:
        raise DatasetError(f"{csv_path}: {len(incomplete)} row(s) without a path or a label, on line(s) "
                           f"{examples(incomplete)}")
    return rows


def open_csv(csv_path: Path, set_id: str = "csv") -> ImageDataset:
    """A CSV with columns `path,label` (paths relative to the CSV). Integer labels need `classnames.txt`
    beside the CSV, one name per line in label order; class-name labels give sorted classes. Rows whose
    file is not an image by content are skipped."""
    if csv_path.is_dir():
        raise DatasetError(f"{csv_path}: csv expects a CSV file of path,label rows, got a directory")
    rows = _read_rows(csv_path)
    names_file = csv_path.parent / "classnames.txt"
    labels = [label for _, _, label in rows]
    if all(label.lstrip("-").isdigit() for label in labels):
        if not names_file.is_file():
            raise DatasetError(f"{csv_path}: integer labels need class names in {names_file}, one per line")
        classnames = [line.strip() for line in read_text(names_file).splitlines() if line.strip()]
        numeric = [int(label) for label in labels]
        if bad := [label for label in numeric if not 0 <= label < len(classnames)]:
            raise DatasetError(f"{csv_path}: labels outside 0..{len(classnames) - 1}: {examples(sorted(set(bad)))}")
        keys = [str(i) for i in range(len(classnames))]
    else:
        classnames = sorted(set(labels))
        numeric = [classnames.index(label) for label in labels]
        keys = []
    if len(classnames) < 2:
        raise DatasetError(f"{csv_path}: only one class ({classnames[0]!r}), and accuracy over a single class "
                           "means nothing; label the rows with at least two classes")
    listed = [((csv_path.parent / path).resolve(), label) for (_, path, _), label in zip(rows, numeric)]
    if missing := [p for p, _ in listed if not p.is_file()]:
        raise DatasetError(f"{csv_path}: {len(missing)} listed image(s) do not exist: {examples(missing)}")
    formats = {path: image_format(path) for path, _ in listed}
    skipped = [path for path, found in formats.items() if not found]
    samples = [(path, label) for path, label in listed if formats[path]]
    if not samples:
        raise DatasetError(f"{csv_path}: none of its {len(rows)} rows is an image (by the files' first bytes)")
    return ImageDataset(set_id, csv_path.parent, "CSV path,label", classnames, samples,
                        notes=skipped_note(csv_path.parent, skipped), skipped_files=skipped,
                        class_keys=keys)
