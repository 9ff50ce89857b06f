"""Tiny CLIP models, built in the tests: no weights, no network, a fraction of a second each."""

from __future__ import annotations

import os

# Tiny tensors: torch's threads mostly wait on each other (one 16-view MINT image measured 4 s with 2
# threads on busy cores, 0.07 s with 1). The variable also reaches the runs that tests start as
# subprocesses, so a killed-and-resumed run computes exactly as the uninterrupted one it is compared with.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from mintclip.model import CLIP, CLIPConfig, Preprocess, TextConfig, VisionConfig

IMAGE_SIZE = 32


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


@pytest.fixture
def vit() -> CLIP:
    return tiny_clip("vit")


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
