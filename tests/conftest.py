"""The test session's threads, and the fixtures every package's tests share (the builders are in helpers.py)."""

from __future__ import annotations

import os

# Tiny tensors: torch's threads mostly wait on each other (one 16-view MINT image measured 4 s with 2
# threads on busy cores, 0.07 s with 1). The variable also reaches the runs that tests start as
# subprocesses, so a killed-and-resumed run computes exactly as the uninterrupted one it is compared with.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from mintclip.model import CLIP  # noqa: E402
from tests.helpers import IMAGE_SIZE, tiny_clip  # noqa: E402


@pytest.fixture
def vit() -> CLIP:
    return tiny_clip("vit")


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
