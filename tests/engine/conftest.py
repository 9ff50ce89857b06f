"""The tiny CLIP as a checkpoint file, shared by the engine's tests."""

from pathlib import Path

import pytest

import mintclip
from tests.helpers import tiny_clip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    mintclip.save_clip(tiny_clip(), path)
    return path
