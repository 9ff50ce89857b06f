"""ImageNet (I) and its shifted variants A, V, R, K, with the label spaces of the reference code.

A and R are 200-way over their wnid subsets, in sorted-wnid order (TPT's `imagenet_a_mask`, the
`imagenet_r_mask`). V's folders `0..999` are ImageNet class indices: the label is the folder's number,
never its position in a string sort (what TPT's `imagenet_v_mask` permutation undoes). I and K are
1000-way. Class names are CLIP's curated ImageNet names, duplicates included (missile, sunglasses).
"""

from __future__ import annotations

import re
from pathlib import Path

from .folders import DatasetError, ImageDataset, class_samples, find_class_trees, scan_class_folders, skipped_note
from .templates import imagenet_assets

WNID = re.compile(r"^n\d{8}$")
INDEX = re.compile(r"^\d{1,4}$")

# Where each reference repository expects each set, relative to the data root (docs/datasets.md
# § ImageNet and its shifts).
LAYOUTS: dict[str, tuple[tuple[str, str], ...]] = {
    "I": (("ImageNet/val", "TPT, MTA"), ("imagenet/images/val", "DynaPrompt, TDA"), ("imagenet/val", "ZERO"),
          ("imagenet", "MINT"), ("ImageNet", "MINT")),
    "A": (("imagenet-a", "TPT, MINT, DynaPrompt, ZERO"), ("imagenet-a/images", "MTA"),
          ("imagenet-adversarial/imagenet-a", "TDA")),
    "R": (("imagenet-r", "TPT, MINT, DynaPrompt, ZERO"), ("imagenet-r/images", "MTA"),
          ("imagenet-rendition/imagenet-r", "TDA")),
    "V": (("imagenetv2-matched-frequency-format-val", "TPT, MINT, DynaPrompt, ZERO"),
          ("imagenetv2-matched-frequency-format-val/images", "MTA"),
          ("imagenetv2/imagenetv2-matched-frequency-format-val", "TDA"),
          ("imagenetv2-matched-frequency", "MINT README")),
    "K": (("ImageNet-Sketch", "TPT"), ("imagenet-sketch", "MINT, ZERO"), ("imagenet-sketch/images", "DynaPrompt, TDA"),
          ("ImageNet-Sketch/images", "MTA"), ("ImageNet-Sketch/sketch", "the archive as distributed"),
          ("imagenet-sketch/sketch", "the archive as distributed")),
}
# ImageNet's train split, which only prompt learners read (`mintclip train-prompts --train_set I`).
TRAIN_LAYOUTS = (("imagenet/images/train", "CoOp"), ("ImageNet/train", "as ImageNet/val"),
                 ("imagenet/train", "as imagenet/val"), ("train", "the ImageNet folder itself"))
TITLES = {"I": "ImageNet validation set", "A": "ImageNet-A", "R": "ImageNet-R",
          "V": "ImageNetV2 matched-frequency", "K": "ImageNet-Sketch"}


def label_space(set_id: str) -> tuple[list[str], dict[str, int]]:
    """Class names in label order, and the folder name -> label map."""
    assets = imagenet_assets()
    names, wnids = assets["classnames"], assets["wnids"]
    if set_id == "V":
        return list(names), {str(i): i for i in range(1000)}
    subset = {"A": assets["imagenet_a_wnids"], "R": assets["imagenet_r_wnids"]}.get(set_id, wnids)
    index = {w: i for i, w in enumerate(wnids)}
    return [names[index[w]] for w in subset], {w: i for i, w in enumerate(subset)}


def _has_class_folders(folder: Path, pattern: re.Pattern) -> bool:
    return folder.is_dir() and any(p.is_dir() and pattern.match(p.name) for p in folder.iterdir())


def open_imagenet_train(data_root: Path) -> ImageDataset:
    """ImageNet's train split: the 1000 wnid folders, labelled as the validation set."""
    return open_imagenet_set(data_root, "I", TRAIN_LAYOUTS, "ImageNet train split")


def open_imagenet_set(data_root: Path, set_id: str, layouts: tuple[tuple[str, str], ...] | None = None,
                      title: str | None = None) -> ImageDataset:
    pattern = INDEX if set_id == "V" else WNID
    classnames, labels = label_space(set_id)
    title = title or TITLES[set_id]
    what = "ImageNet class indices 0..999" if set_id == "V" else f"{title} class wnids"
    layouts = layouts or LAYOUTS[set_id]
    candidates = layouts + ((".", "the set folder itself"),)
    for relative, used_by in candidates:
        folder = (data_root / relative).resolve()
        if _has_class_folders(folder, pattern):
            scan = scan_class_folders(folder, set(labels), what)
            samples = class_samples(folder, scan, labels.__getitem__)
            notes = ["folder names are ImageNet class indices: label = int(folder name)"] if set_id == "V" else []
            return ImageDataset(set_id, folder, f"{relative} ({used_by})", classnames, samples,
                                notes=notes + skipped_note(folder, scan.skipped),
                                skipped_files=scan.skipped, class_keys=sorted(labels, key=labels.__getitem__))
    expected = ", ".join(relative for relative, _ in layouts)
    found = [p for p in find_class_trees(data_root, lambda name: bool(pattern.match(name)))]
    hint = f"; class folders found at {found[0]}, which is not one of these places" if found else ""
    raise DatasetError(f"{data_root}: no {title} here: expected its class folders directly inside "
                       f"one of {expected} (or the root itself){hint}")
