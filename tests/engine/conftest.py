"""The tiny CLIP as a checkpoint file and a small ImageFolder tree, shared by the engine's tests."""

from pathlib import Path

import pytest

import mintclip
from tests.helpers import random_images, tiny_clip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    mintclip.save_clip(tiny_clip(), path)
    return path


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """Three classes of four random PNGs (test_run, test_outputs)."""
    return random_images(tmp_path_factory.mktemp("data") / "tree", ["cat", "dog", "fox"], per_class=4)
