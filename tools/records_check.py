"""Records of every method and path on a small tree, for checking that a change alters no number.

Builds a tiny random CLIP and a data root holding one set of each family (ImageNet-A's 200 classes,
the cross-domain DTD in CoOp's layout, a user folder), then runs each method in each of its orders of
work through the CLI and keeps the records. Run it before and after a change and compare the folders:

    python tools/records_check.py /tmp/before        # on the old commit
    python tools/records_check.py /tmp/after         # on the new one
    python tools/records_check.py --compare /tmp/before /tmp/after

The comparison is byte for byte (`filecmp`, as `cmp`), file by file.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from mintclip.cli import main  # noqa: E402
from mintclip.data.templates import imagenet_assets  # noqa: E402
from mintclip.model import CLIP, CLIPConfig, Preprocess, TextConfig, VisionConfig, save_clip  # noqa: E402

TINY_VIT = ["query_layers=0,1,2", "bank_size=16"]  # MINT on a 3-block ViT
RUNS: dict[str, tuple[str, list[str], list[str]]] = {  # name: (method, --hp, other options)
    "zeroshot": ("zeroshot", [], []),
    "ensemble": ("ensemble", [], []),
    "tpt": ("tpt", [], []),
    "tpt-b3": ("tpt", [], ["--batch-images", "3"]),
    "tpt-reference": ("tpt", ["reference_order=true"], []),
    "tpt-reference-b3": ("tpt", ["reference_order=true"], ["--batch-images", "3"]),
    "tpt-steps2-b3": ("tpt", ["steps=2"], ["--batch-images", "3"]),
    "ctpt": ("ctpt", [], []),
    "zero": ("zero", [], []),
    "mta": ("mta", [], []),
    "mint": ("mint", TINY_VIT, []),
    "mint-reference": ("mint", [*TINY_VIT, "fast=false"], []),
    "tda": ("tda", [], []),
    "dynaprompt": ("dynaprompt", [], []),
    "dynaprompt-reference-order": ("dynaprompt", ["reference_order=true"], []),
    "dynaprompt-paper": ("dynaprompt", ["variant=paper"], []),
    "dynaprompt-paper-reference-order": ("dynaprompt", ["variant=paper", "reference_order=true"], []),
    "dynaprompt-stable": ("dynaprompt", ["tie_order=stable"], []),
}
SETS = "A/DTD/folder:mine"


def image(path: Path, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)


def build(root: Path) -> Path:
    """The data root and the checkpoint, the same bytes on every call."""
    rng = np.random.default_rng(0)
    for wnid in imagenet_assets()["imagenet_a_wnids"]:
        image(root / "imagenet-a" / wnid / "0.png", rng)
    test = []
    for label, name in enumerate(["banded", "dotted", "zigzagged"]):
        for i in range(2):
            image(root / "dtd" / "images" / name / f"{i}.png", rng)
            test.append([f"{name}/{i}.png", label, name])
    (root / "dtd" / "split_zhou_DescribableTextures.json").write_text(json.dumps({"train": [], "val": [], "test": test}))
    for name in ["cat", "dog", "fox"]:
        for i in range(2):
            image(root / "mine" / name / f"{i}.png", rng)
    torch.manual_seed(0)
    vision = VisionConfig("vit", width=128, layers=3, heads=2, image_size=32, patch_size=8)
    model = CLIP(CLIPConfig(embed_dim=32, vision=vision, text=TextConfig(width=64, layers=2, heads=1),
                            act="quick_gelu", preprocess=Preprocess(32))).eval()
    weights = root / "tiny.safetensors"
    save_clip(model, weights)
    return weights


def record_all(out: Path, data: Path, only: list[str]) -> None:
    weights = build(data)
    for name, (method, hp, options) in RUNS.items():
        if only and name not in only:
            continue
        args = ["run", str(data), "--test_sets", SETS, "--method", method, "--weights", str(weights),
                "--out", str(out / "runs" / name), "--workers", "0", "--no-progress", "--limit", "6",
                *options, "--hp", "precision=fp32", *hp]
        if main(args) != 0:
            raise SystemExit(f"{name}: the run failed")


def compare(a: Path, b: Path) -> int:
    """Prints each run's verdict; returns the number of runs whose records differ."""
    differ = 0
    for name in RUNS:
        left = sorted((a / "runs" / name).glob("seed*/*/records.jsonl"))
        right = sorted((b / "runs" / name).glob("seed*/*/records.jsonl"))
        if not left or not right:
            if left or right:
                print(f"{name}: in one folder only")
            continue
        names = [p.relative_to(a) for p in left]
        same = names == [p.relative_to(b) for p in right] and all(
            filecmp.cmp(x, y, shallow=False) for x, y in zip(left, right))
        differ += not same
        print(f"{name}: {'identical' if same else 'DIFFERENT'} ({len(left)} record files)")
    return differ


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--compare", action="store_true", help="compare two folders written by this script")
    parser.add_argument("--only", default="", help="comma-separated run names")
    parser.add_argument("--data", type=Path, default=Path("/tmp/mintclip-records-data"),
                        help="where the tree is built: the records name its files, so keep it between runs")
    args = parser.parse_args()
    if args.compare:
        sys.exit(1 if compare(*args.folders) else 0)
    record_all(args.folders[0], args.data, [n for n in args.only.split(",") if n])
