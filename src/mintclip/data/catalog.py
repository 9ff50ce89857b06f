"""Which images a test set holds and what their labels mean, checked before any image is read.

The commonest way TTA results go wrong is data: a root one level off (TPT#15 got 0.5% on ImageNet-A),
a class order scrambled by a string sort, a class folder missing. Every set is opened through a layout
that is recognised exactly (each one a reference repository uses), and anything else is a one-line
`DatasetError` that says what was expected and where. Never a silent mislabel.

Files that are not images by content are skipped and listed (`ImageDataset.skipped_files`), or refuse
the set with `strict=True`; images that fail to decode are skipped at run time. The rules for trees, CSVs
and classnames.txt are in folders.py.
"""

from __future__ import annotations

from pathlib import Path

from .coop_splits import SETS as CROSS_DOMAIN
from .coop_splits import open_cross_domain_set
from .folders import DatasetError, ImageDataset, non_image_error, open_csv, open_image_folder
from .imagenet import LAYOUTS as IMAGENET_LAYOUTS
from .imagenet import open_imagenet_set

IMAGENET_SETS = tuple(IMAGENET_LAYOUTS)  # I, A, R, V, K
CROSS_DOMAIN_SETS = (*CROSS_DOMAIN, "Aircraft")
SET_IDS = IMAGENET_SETS + CROSS_DOMAIN_SETS
# The spellings of the reference repositories and their command lines (TPT, DynaPrompt, TDA, ...).
ALIASES = {
    "imagenet": "I", "imagenet-a": "A", "imagenet_a": "A", "imagenet-r": "R", "imagenet_r": "R",
    "imagenetv2": "V", "imagenet-v2": "V", "imagenet_v2": "V", "imagenet-sketch": "K", "imagenet_sketch": "K",
    "sketch": "K", "flowers102": "Flower102", "oxford_flowers": "Flower102", "oxford_pets": "Pets",
    "stanford_cars": "Cars", "fgvc": "Aircraft", "fgvc_aircraft": "Aircraft",
}
CUSTOM = ("folder", "csv")
SUBFOLDER = "folder:"  # "folder:NAME": the ImageFolder tree NAME under the data root (several domains, one root)


def resolve_set_id(name: str) -> str:
    """A set id in any reference spelling ('A', 'flower102', 'eurosat', 'oxford_pets') -> mintclip's id."""
    if name in SET_IDS or name in CUSTOM:
        return name
    if name.startswith(SUBFOLDER):
        folder = name[len(SUBFOLDER):]
        if not folder or "/" in folder or "\\" in folder or folder in (".", ".."):
            raise DatasetError(f"{name!r}: 'folder:NAME' names one sub-folder of the data root")
        return name
    by_lower = {s.lower(): s for s in SET_IDS} | ALIASES
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    raise DatasetError(f"unknown set id {name!r}: use one of {', '.join(SET_IDS)}, or 'folder' (any ImageFolder "
                       "tree), 'folder:NAME' (the tree NAME under the root) or 'csv' (a path,label file)")


def set_label(set_id: str) -> str:
    """The set's name in tables and its folder in a run's output: NAME for 'folder:NAME', else the id."""
    return set_id[len(SUBFOLDER):] if set_id.startswith(SUBFOLDER) else set_id


def open_dataset(root: str | Path, set_id: str, strict: bool = False) -> ImageDataset:
    """Open one test set under a data root (for 'folder' and 'csv', root is the tree or the CSV file).

    strict: a file that is not an image (by its first bytes) refuses the set instead of being skipped.
    """
    ds = _open(Path(root).expanduser(), resolve_set_id(set_id))
    if strict and ds.skipped_files:
        raise non_image_error(ds.root, ds.skipped_files, "remove them, or drop --strict to skip them")
    return ds


def _open(root: Path, set_id: str) -> ImageDataset:
    if not root.exists():
        raise DatasetError(f"{root}: no such {'file' if set_id == 'csv' else 'directory'}")
    if set_id == "csv":
        return open_csv(root, set_id)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory")
    if set_id == "folder":
        return open_image_folder(root, set_id)
    if set_id.startswith(SUBFOLDER):
        tree = root / set_label(set_id)
        if not tree.is_dir():
            raise DatasetError(f"{tree}: no such directory (set {set_id!r} is the ImageFolder tree {tree.name} under "
                               f"{root})")
        return open_image_folder(tree, set_id)
    return open_imagenet_set(root, set_id) if set_id in IMAGENET_SETS else open_cross_domain_set(root, set_id)


def check_data(root: str | Path, set_ids: list[str],
               strict: bool = False) -> list[tuple[str, ImageDataset | None, str]]:
    """For each set: (id, the opened dataset or None, a one-line report), without decoding any image."""
    report = []
    for set_id in set_ids:
        try:
            ds = open_dataset(root, set_id, strict)
        except DatasetError as e:
            report.append((set_id, None, f"{set_id}: PROBLEM: {e}"))
        else:
            skipped = "" if ds.skipped_files else ", no non-image files"
            report.append((set_id, ds, f"{ds.summary()}{skipped}; images that fail to decode are skipped at run time"))
    return report
