"""Checks that need a GPU (marked `cuda`; `tools/gpu_check.sh` runs them): bf16 autocast predicts as
fp32, views made on the GPU equal views made on the CPU, `--compile` and `--batch-images 8` predict as
eager, and TPT and MINT fit ViT-B/16 x 1000 classes in 4 GB. Without a GPU they skip;
MINTCLIP_CUDA_TESTS_ON=cpu runs all but the memory check on the CPU, to check their logic."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from mintclip.adapt import build_method
from mintclip.adapt.cocoop import CoCoOpPromptLearner
from mintclip.adapt.coop import save_prompts
from mintclip.adapt.maple import MaPLePromptLearner
from mintclip.adapt.metatpt import MetaTPTLearner
from mintclip.cli import main
from mintclip.data import TestSet, ViewMaker
from mintclip.engine.records import read_records
from mintclip.engine.run import cxx_compiler
from mintclip.model import save_clip
from tests.helpers import CLASSES, frozen_clip, random_images, random_views, run_args, tiny_clip

DEVICE = "cuda" if torch.cuda.is_available() else os.environ.get("MINTCLIP_CUDA_TESTS_ON")
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(DEVICE is None, reason="needs a CUDA GPU "
                                                    "(MINTCLIP_CUDA_TESTS_ON=cpu runs the logic on the CPU)")]
NEAR_TIE = 0.1  # fp32 top-1 minus top-2 probability below which bf16 may pick the other class
TINY_VIT = {"mint": {"query_layers": "0,1,2", "bank_size": 16}, "sar": {"batch_size": 2}}
METHODS = ["zeroshot", "ensemble", "coop", "cocoop", "maple", "tpt", "metatpt", "ctpt", "sar", "zero", "mta", "mint",
           "tda", "dynaprompt"]
LEARNERS = {"cocoop": ("prompts", CoCoOpPromptLearner), "maple": ("prompts", MaPLePromptLearner),
            "metatpt": ("meta", MetaTPTLearner)}  # what these read from a trained file; untrained ones serve


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, dict[str, str]]:
    """name -> the hyper-parameter naming a prompt file of an untrained learner (their parts at random)."""
    folder, files = tmp_path_factory.mktemp("prompts"), {}
    for name, (key, learner) in LEARNERS.items():
        torch.manual_seed(0)
        save_prompts(folder / f"{name}.safetensors", learner(frozen_clip(), CLASSES).learned(), {"method": name})
        files[name] = {key: str(folder / f"{name}.safetensors")}
    return files


def predictions(name: str, precision: str, trained: dict[str, dict[str, str]]) -> torch.Tensor:
    """Six images of 16 views (one for one-view methods), streamed through a fresh method: (6, C)."""
    method = build_method(name, {"precision": precision, **TINY_VIT.get(name, {}), **trained.get(name, {})})
    method.setup(frozen_clip().to(DEVICE), TestSet.named("A", CLASSES))
    views = min(method.views_per_image, 16)
    return torch.stack([method.predict(random_views(n=views, seed=s).to(DEVICE)) for s in range(6)]).float().cpu()


@pytest.mark.parametrize("name", METHODS)
def test_bf16_autocast_predicts_as_fp32_up_to_near_ties(name, trained):
    fp32, bf16 = predictions(name, "fp32", trained), predictions(name, "bf16", trained)
    top2 = fp32.softmax(-1).topk(2).values
    decided = top2[:, 0] - top2[:, 1] >= NEAR_TIE
    assert torch.equal(fp32.argmax(-1)[decided], bf16.argmax(-1)[decided])


def test_views_made_on_the_gpu_equal_views_made_on_the_cpu_to_one_grey_level():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8))
    for augmix in (False, True):
        cpu = ViewMaker(n_views=16, size=64, augmix=augmix, device="cpu")
        here = ViewMaker(n_views=16, size=64, augmix=augmix, device=DEVICE)
        grey_levels = ((cpu(image, 0, 7) - here(image, 0, 7).cpu()) * cpu.std * 255).abs()
        assert grey_levels.max() <= 1.0 + 1e-3, augmix


def top1(out) -> list[int]:
    return [r["top5"][0][0] for r in read_records(out / "seed0" / "folder" / "records.jsonl")]


@pytest.mark.parametrize("options", [["--compile"], ["--batch-images", "8"]])
def test_compile_and_batches_of_8_predict_as_eager(options, tmp_path):
    if "--compile" in options and DEVICE == "cpu" and not cxx_compiler():
        pytest.skip("torch.compile on a CPU needs a C++ compiler")
    tree = random_images(tmp_path / "tree", ["cat", "dog", "fox"], per_class=4)
    checkpoint = tmp_path / "tiny.safetensors"
    save_clip(tiny_clip(), checkpoint)
    device = ["--device", DEVICE]
    for method, hp in (("zero", []), ("tpt", ["--hp", "n_views=16"])):
        eager, other = tmp_path / f"{method}-eager", tmp_path / f"{method}-other"
        assert main(run_args(tree, checkpoint, eager, method, *device, *hp)) == 0
        assert main(run_args(tree, checkpoint, other, method, *device, *options, *hp)) == 0
        assert top1(eager) == top1(other), (method, options)


@pytest.mark.parametrize("name", ["tpt", "mint"])
def test_tpt_and_mint_fit_vit_b16_with_1000_classes_in_4_gb(name):
    if DEVICE != "cuda":
        pytest.skip("peak GPU memory needs a GPU")
    from mintclip.bench import time_method

    timing = time_method(name, "mintclip", "ViT-B/16", 1000, 64, images=2, warmup=1, device="cuda", precision="auto")
    assert timing.peak_mib < 4096, f"{name}: {timing.peak_mib:.0f} MiB above the model and text side"
