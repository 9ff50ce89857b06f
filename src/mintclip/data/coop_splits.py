"""The ten cross-domain sets, read from CoOp's `split_zhou_<Name>.json` test lists (Aircraft from FGVC's
own files), in every folder layout the reference repositories use (docs/datasets.md § Cross-domain sets).

Labels and class names come from the split file itself: each entry is `[relative path, label, class
name]`. Underscores in class names become spaces, as TPT's prompt learner does before tokenising.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .folders import DatasetError, ImageDataset, examples

SPLIT_DIRS = (".", "data_splits", "splits", "data/data_splits")  # where split files are looked for


@dataclass(frozen=True)
class CrossDomainSet:
    set_id: str
    split_name: str  # split_zhou_<split_name>.json
    folders: tuple[str, ...]  # the set's folder under the data root: CoOp's name first, then TPT's, ...
    image_dirs: tuple[str, ...]  # where the split's relative paths start, inside that folder


SETS = {s.set_id: s for s in (
    CrossDomainSet("Flower102", "OxfordFlowers", ("oxford_flowers", "Flower102", "flower102", "flowers102"),
                   ("jpg", "")),
    CrossDomainSet("DTD", "DescribableTextures", ("dtd", "DTD"), ("images", "")),
    CrossDomainSet("Pets", "OxfordPets", ("oxford_pets", "OxfordPets", "pets"), ("images", "")),
    CrossDomainSet("Cars", "StanfordCars", ("stanford_cars", "StanfordCars", "cars"), ("", "images")),
    CrossDomainSet("UCF101", "UCF101", ("ucf101", "UCF101"), ("UCF-101-midframes", "")),
    CrossDomainSet("Caltech101", "Caltech101", ("caltech-101", "caltech101", "Caltech101"),
                   ("101_ObjectCategories", "")),
    CrossDomainSet("Food101", "Food101", ("food-101", "food101", "Food101"), ("images", "")),
    CrossDomainSet("SUN397", "SUN397", ("sun397", "SUN397"), ("SUN397", "")),
    CrossDomainSet("EuroSAT", "EuroSAT", ("eurosat", "EuroSAT"), ("2750", "")),
)}
AIRCRAFT_FOLDERS = ("fgvc_aircraft", "fgvc-aircraft-2013b/data", "fgvc-aircraft-2013b", "aircraft", "Aircraft")


def _split_file(data_root: Path, folder: Path, name: str) -> Path | None:
    for place in [folder, *(data_root / d for d in SPLIT_DIRS)]:
        if (place / name).is_file():
            return place / name
    return None


def _read_split(path: Path) -> tuple[list[tuple[str, int]], list[str]]:
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
        entries = [(rel, int(label), name) for part in ("train", "val", "test") for rel, label, name in split.get(part, [])]
        test = [(rel, int(label)) for rel, label, _ in split["test"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{path}: not a CoOp split file with a 'test' list of [path, label, classname] ({e})")
    names: dict[int, str] = {}
    for _, label, name in entries:
        if names.setdefault(label, name) != name:
            raise DatasetError(f"{path}: label {label} is named both {names[label]!r} and {name!r}")
    if sorted(names) != list(range(len(names))):
        raise DatasetError(f"{path}: labels are not 0..{len(names) - 1}")
    return test, [names[i].replace("_", " ") for i in range(len(names))]


def _locate_images(folder: Path, image_dirs: tuple[str, ...], relative: list[str], split: Path) -> Path:
    """The image dir in which the split's first paths exist; then every listed image must exist."""
    probe = relative[:5]
    for image_dir in image_dirs:
        base = folder / image_dir
        if all((base / rel).is_file() for rel in probe):
            missing = [rel for rel in relative if not (base / rel).is_file()]
            if missing:
                raise DatasetError(f"{split}: {len(missing)} of {len(relative)} test images missing under "
                                   f"{base}: {examples(missing)}")
            return base
    places = " or ".join(str(folder / d) if d else str(folder) for d in image_dirs)
    raise DatasetError(f"{split}: its test images (e.g. {probe[0]}) are not under {places}")


def open_cross_domain_set(data_root: Path, set_id: str) -> ImageDataset:
    if set_id == "Aircraft":
        return open_aircraft(data_root)
    spec = SETS[set_id]
    split_name = f"split_zhou_{spec.split_name}.json"
    first_found = None
    for folder_name in spec.folders + (".",):
        folder = (data_root / folder_name).resolve()
        split = _split_file(data_root, folder, split_name) if folder.is_dir() else None
        if split is None:
            continue
        test, classnames = _read_split(split)
        first_found = first_found or (folder, split, test)
        if not any(all((folder / d / rel).is_file() for rel, _ in test[:5]) for d in spec.image_dirs):
            continue  # another candidate folder may hold the images
        base = _locate_images(folder, spec.image_dirs, [rel for rel, _ in test], split)
        samples = [(base / rel, label) for rel, label in test]
        return ImageDataset(set_id, base, f"{folder_name} + {split.name}", classnames, samples)
    if first_found:  # a split file but no images where it says: say exactly where they were looked for
        folder, split, test = first_found
        _locate_images(folder, spec.image_dirs, [rel for rel, _ in test], split)
    folders = ", ".join(spec.folders)
    raise DatasetError(f"{data_root}: no {set_id} here: expected a folder {folders} holding its images "
                       f"({' or '.join(d or '.' for d in spec.image_dirs)}) and CoOp's {split_name} in that folder "
                       f"or in {', '.join(SPLIT_DIRS)} under the root")


def open_aircraft(data_root: Path) -> ImageDataset:
    """FGVC-Aircraft as CoOp reads it: class = line index in variants.txt, test list images_variant_test.txt."""
    for folder_name in AIRCRAFT_FOLDERS + (".",):
        folder = (data_root / folder_name).resolve()
        if (folder / "variants.txt").is_file() and (folder / "images_variant_test.txt").is_file():
            break
    else:
        raise DatasetError(f"{data_root}: no Aircraft here: expected variants.txt, images_variant_test.txt and "
                           f"images/ in one of {', '.join(AIRCRAFT_FOLDERS)}")
    classnames = [line.strip() for line in (folder / "variants.txt").read_text().splitlines() if line.strip()]
    label_of = {name: i for i, name in enumerate(classnames)}
    samples, unknown, missing = [], [], []
    for line in (folder / "images_variant_test.txt").read_text().splitlines():
        if not line.strip():
            continue
        image_id, _, variant = line.strip().partition(" ")
        path = folder / "images" / f"{image_id}.jpg"
        if variant not in label_of:
            unknown.append(variant)
        elif not path.is_file():
            missing.append(path.name)
        else:
            samples.append((path, label_of[variant]))
    if unknown:
        raise DatasetError(f"{folder / 'images_variant_test.txt'}: variants not in variants.txt: {examples(unknown)}")
    if missing:
        raise DatasetError(f"{folder / 'images'}: {len(missing)} test images missing: {examples(missing)}")
    return ImageDataset("Aircraft", folder / "images", f"{folder_name} (FGVC files, as CoOp)", classnames, samples)
