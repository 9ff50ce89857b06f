"""What several test modules build: tiny CLIP models (no weights, no network, a fraction of a second
each), test images as views or files, image trees in every layout, and runs killed part-way.

A support module, not a test module: tests import from here, never from one another."""

from __future__ import annotations

import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mintclip.engine.records import read_records
from mintclip.model import CLIP, CLIPConfig, Preprocess, TextConfig, VisionConfig

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 32
# the classes of the prompt-tuning tests; the second is ImageNet's longest name in BPE tokens
CLASSES = ["goldfish", "Mexican hairless dog (xoloitzcuintli)", "great white shark", "jay", "tabby cat"]


# -- models ------------------------------------------------------------------------------------------------

def tiny_config(kind: str = "vit", act: str = "quick_gelu") -> CLIPConfig:
    """Head width 64 as in every real CLIP, so heads follow from widths alone."""
    if kind == "vit":
        vision = VisionConfig("vit", width=128, layers=3, heads=2, image_size=IMAGE_SIZE, patch_size=8)
    else:
        vision = VisionConfig("resnet", width=16, layers=(1, 2, 1, 1), heads=8, image_size=64)
    return CLIPConfig(embed_dim=32, vision=vision, text=TextConfig(width=64, layers=2, heads=1), act=act,
                      preprocess=Preprocess(vision.image_size))


def tiny_clip(kind: str = "vit", act: str = "quick_gelu", seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    model = CLIP(tiny_config(kind, act)).eval()
    if kind == "resnet":  # give BatchNorm non-trivial statistics, as a trained network has
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.data.uniform_(0.5, 1.5)
                module.bias.data.normal_(0, 0.1)
    return model


def frozen_clip(temperature: float = 100.0) -> CLIP:
    """The tiny CLIP as `load_clip` returns a checkpoint: frozen, at a trained CLIP's temperature of 100,
    which gives sharp, realistic entropies."""
    model = tiny_clip().requires_grad_(False)
    model.logit_scale.fill_(math.log(temperature))
    return model


def random_views(n: int = 16, seed: int = 3) -> torch.Tensor:
    """(n, 3, IMAGE_SIZE, IMAGE_SIZE) views of one test image."""
    return torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


# -- image files and trees -------------------------------------------------------------------------------------

def write_image(path: Path, color=(120, 30, 200)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), color).save(path)


def make_tree(root: Path, folders, per_class: int = 1) -> Path:
    for folder in folders:
        for i in range(per_class):
            write_image(root / folder / f"img_{i}.jpg")
    return root


def random_images(folder: Path, classes: list[str], per_class: int, seed: int = 0) -> Path:
    """An ImageFolder tree of random 48x40 PNGs."""
    rng = np.random.default_rng(seed)
    for name in classes:
        for i in range(per_class):
            (folder / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / name / f"{i}.png")
    return folder


def make_coop_set(folder: Path, classes, split_name: str, image_dir: str, per_class: int = 2,
                  split_dir: Path | None = None) -> list:
    """A cross-domain set in CoOp's layout: images under folder/image_dir, split_zhou_<split_name>.json."""
    test = []
    for label, name in enumerate(classes):
        for i in range(per_class):
            rel = f"{name}/{name}_{i}.jpg"
            write_image(folder / image_dir / rel)
            test.append([rel, label, name])
    split_dir = split_dir or folder
    split_dir.mkdir(parents=True, exist_ok=True)
    (split_dir / f"split_zhou_{split_name}.json").write_text(json.dumps({"train": [], "val": [], "test": test}))
    return test


def write_png(path: Path, width: int, height: int, bit_depth: int, color_type: int, pixels=None) -> Path:
    """A PNG written by hand: Pillow cannot write 16-bit RGB, and a header can claim any size cheaply."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"" if pixels is None else b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


# -- runs --------------------------------------------------------------------------------------------------

def run_args(root, checkpoint, out, method, *extra) -> list[str]:
    """`mintclip run` on the ImageFolder tree `root`, quietly, without worker processes."""
    return ["run", str(root), "--test_sets", "folder", "--method", method, "--weights", str(checkpoint),
            "--out", str(out), "--workers", "0", "--no-progress", *extra]


def comparable(out: Path) -> dict:
    """Everything a run wrote that must not depend on being interrupted (times excluded)."""
    records = {str(p.relative_to(out)): read_records(p)
               for p in sorted(out.glob("seed*/*/records.jsonl"))}
    return {"records": records, "summary": (out / "summary.csv").read_text()}


def kill_part_way(args: list[str], records: Path, at_least: int, prelude: str = "") -> None:
    """Start `mintclip` with `args` in a process of its own and SIGKILL it once `records` holds
    `at_least` lines."""
    code = f"{prelude}import sys; from mintclip.cli import main; sys.exit(main(sys.argv[1:]))"
    process = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if records.is_file() and records.read_bytes().count(b"\n") >= at_least:
            break
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
