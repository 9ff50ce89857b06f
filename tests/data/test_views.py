"""mintclip.data.views against TPT's PIL pipeline (AugMixAugmenter + augmix_ops.py) and torchvision's RRC rule.

Pixel differences are in uint8 levels (1/255). Bounds were measured with Pillow 13 / torch 2.13 on CPU and are
set with headroom, not at the measured value; each says what it was measured at.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mintclip.constants import OPENAI_MEAN, OPENAI_STD
from mintclip.data.reference_views import pil_augmix, pil_augmix_op
from mintclip.data.views import AUGMIX_OPS, ViewMaker, ViewParams, augmix_op, sample_crops, view_generator

MEAN = torch.tensor(OPENAI_MEAN).view(3, 1, 1)
STD = torch.tensor(OPENAI_STD).view(3, 1, 1)


def smooth_image(height: int, width: int, seed: int = 0, cells: int = 12) -> torch.Tensor:
    """uint8 (3, H, W): upsampled noise, so resamplers see texture but not only aliasing."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, cells, cells * width // height + 1, generator=g)
    fine = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0]
    return (fine.clamp(0, 1) * 255).round().to(torch.uint8)


def noise_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (3, height, width), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def to_pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray(x.permute(1, 2, 0).numpy())


def from_pil(image: Image.Image) -> torch.Tensor:
    """ToTensor: (3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255


def levels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| in uint8 levels, for tensors in [0, 1]."""
    return (a - b).abs() * 255


def two_pass(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Independent statement of PIL's resize: antialiased horizontal then vertical pass, each rounded to uint8."""
    q = lambda t: (t.clamp(0, 1) * 255).round() / 255  # noqa: E731
    x = q(F.interpolate(x[None], size=(x.shape[-2], size[1]), mode=mode, antialias=True, align_corners=False))
    return q(F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False))[0]


# ---- shapes, view 0 ----

def test_shape_dtype_device_and_input_types():
    image = smooth_image(90, 120)
    maker = ViewMaker(n_views=8, size=48)
    views = maker(image, seed=0, index=0)
    assert views.shape == (8, 3, 48, 48) and views.dtype == torch.float32 and views.device.type == "cpu"
    assert torch.equal(views, maker(to_pil(image), seed=0, index=0))  # PIL and uint8 tensor agree
    assert torch.equal(views, ViewMaker(n_views=8, size=48, device="cpu")(image, 0, 0))
    assert ViewMaker(n_views=1, size=48)(image, 0, 0).shape == (1, 3, 48, 48)
    with pytest.raises(ValueError):
        maker(image.float(), 0, 0)


@pytest.mark.parametrize("height, width", [(300, 400), (375, 500), (301, 451), (500, 375)])
def test_view0_is_resize_then_centre_crop(height, width):
    image = smooth_image(height, width)
    view0 = ViewMaker(n_views=1, size=224)(image, 0, 0)[0]
    short, long = min(height, width), max(height, width)
    new = (224, int(224 * long / short)) if height <= width else (int(224 * long / short), 224)
    resized = two_pass(image.float() / 255, new, "bicubic")
    top, left = int(round((new[0] - 224) / 2.0)), int(round((new[1] - 224) / 2.0))
    expected = resized[:, top:top + 224, left:left + 224]
    assert torch.equal(view0, (expected - MEAN) / STD)

    reference = from_pil(to_pil(image).resize(new[::-1], Image.BICUBIC).crop((left, top, left + 224, top + 224)))
    diff = levels(view0 * STD + MEAN, reference)
    # Measured: at most 0.1% of values one level off (PIL's 22-bit fixed-point weights), none two off. A single
    # rounded pass instead of two would give ~18% off by one and up to 5 off (PIL clamps between passes).
    assert diff.max() < 2.5 and diff.mean() < 0.02


# ---- random resized crops ----

def reference_crop(height: int, width: int, rng: random.Random) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop.get_params, in plain Python."""
    for _ in range(10):
        target = height * width * rng.uniform(0.08, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    raise AssertionError("fallback not expected here")


def ks_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = a.double().sort().values, b.double().sort().values
    grid = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, grid, right=True) / len(a)
    cdf_b = torch.searchsorted(b, grid, right=True) / len(b)
    return (cdf_a - cdf_b).abs().max().item()


def test_crop_distribution_matches_torchvision_rule():
    height, width, n = 375, 500, 20_000  # wide enough that some attempts are rejected (h > height)
    ours = sample_crops(height, width, n, torch.Generator().manual_seed(0)).double()
    rng = random.Random(0)
    ref = torch.tensor([reference_crop(height, width, rng) for _ in range(n)], dtype=torch.float64)
    top, left, h, w = ours.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    # KS at n = m = 20,000: the 0.1% critical value is 1.95 * sqrt(2 / n) = 0.0195; measured below 0.01.
    for stat in (lambda c: c[:, 2] * c[:, 3] / (height * width), lambda c: torch.log(c[:, 3] / c[:, 2])):
        assert ks_statistic(stat(ours), stat(ref)) < 0.02
    free = h < height  # where the crop could move: its position is uniform over the free range
    assert abs((top[free] / (height - h[free])).mean().item() - 0.5) < 0.01
    assert abs((left / (width - w).clamp(min=1)).mean().item() - 0.5) < 0.01


@pytest.mark.parametrize("height, width, expected", [(10, 1000, (0, 493, 10, 13)), (1000, 10, (493, 0, 13, 10))])
def test_crop_fallback_is_central_with_clipped_ratio(height, width, expected):
    crops = sample_crops(height, width, 5, torch.Generator().manual_seed(0))  # no random box can fit
    assert crops.tolist() == [list(expected)] * 5


def test_crop_params_are_where_the_views_come_from():
    image = smooth_image(120, 160)
    maker = ViewMaker(n_views=3, size=32)
    params = ViewParams(crops=torch.tensor([[5, 7, 40, 60], [50, 90, 70, 70]]), flips=torch.tensor([False, True]))
    views = maker.apply(image, params)
    x = image.float() / 255
    assert torch.equal(views[1], (two_pass(x[:, 5:45, 7:67], (32, 32), "bilinear") - MEAN) / STD)
    assert torch.equal(views[2], (two_pass(x[:, 50:120, 90:160], (32, 32), "bilinear").flip(-1) - MEAN) / STD)


def test_crops_match_pil_resized_crop_and_flip():
    image = smooth_image(300, 400)
    maker = ViewMaker(n_views=64, size=224)
    params = maker.sample(300, 400, seed=0, index=3)
    ours = maker.apply(image, params)[1:] * STD + MEAN
    pil = to_pil(image)
    means = []
    for view, (top, left, h, w), flip in zip(ours, params.crops.tolist(), params.flips.tolist()):
        ref = pil.crop((left, top, left + w, top + h)).resize((224, 224), Image.BILINEAR)
        diff = levels(view, from_pil(ref.transpose(Image.FLIP_LEFT_RIGHT) if flip else ref))
        means.append(diff.mean())
        # Measured over 5 x 63 crops: max 2 levels; mean per crop <= 0.08, highest where the scale is a simple
        # fraction (112 -> 224, 168 -> 224) and PIL's fixed-point weights break rounding ties the other way.
        assert diff.max() < 2.5 and diff.mean() < 0.15
    assert sum(means) / len(means) < 0.02  # measured 0.007: well under 1% of values one level off


def test_flips_happen_half_the_time_and_do_flip():
    maker = ViewMaker(n_views=64, size=32)
    flips = torch.cat([maker.sample(100, 150, seed=0, index=i).flips for i in range(50)])
    assert 0.45 <= flips.float().mean().item() <= 0.55  # 3,150 draws: sd 0.009
    ramp = torch.linspace(0, 255, 150).round().to(torch.uint8).expand(3, 100, 150).contiguous()  # bright right
    views = maker(ramp, seed=0, index=0)[1:]
    right_brighter = views[..., 16:].mean((1, 2, 3)) > views[..., :16].mean((1, 2, 3))
    assert torch.equal(right_brighter, ~maker.sample(100, 150, seed=0, index=0).flips)


# ---- AugMix ops against PIL ----

def op_test_images(size: int = 96) -> torch.Tensor:
    """Noise, smooth, low-contrast, and one with a constant and a two-valued channel (PIL's special cases)."""
    special = noise_image(size, size, 3)
    special[0] = 77
    special[1] = torch.where(special[1] > 128, 200, 20)
    low = noise_image(size, size, 2) // 5 + 90
    return torch.stack([noise_image(size, size, 1), smooth_image(size, size, 1), low, special])


@pytest.mark.parametrize("name", AUGMIX_OPS)
def test_ops_match_pil(name):
    images = op_test_images()
    params = [(0.1, 1.0), (0.55, -1.0), (0.999, 1.0), (0.72, -1.0)]  # (sample_level(1), sign) per image
    level, sign = (torch.tensor(p, dtype=torch.float64) for p in zip(*params))
    ours = augmix_op(name, images.float() / 255, level, sign)
    ref = torch.stack([from_pil(pil_augmix_op(name, to_pil(im), l, s)) for im, (l, s) in zip(images, params)])
    diff = levels(ours, ref)
    if name in ("rotate", "shear_x", "shear_y", "translate_x", "translate_y"):
        # grid_sample in float64 with PIL's rule (clamped neighbours, black outside) and truncation to uint8.
        # Measured: translations exact; rotate/shear at most 0.05% of values one level off (points a hair
        # from a pixel boundary, where PIL's double arithmetic and ours round differently).
        assert diff.max() < 1.5 and (diff > 0.5).float().mean() < 0.002
    else:
        assert torch.equal(ours, ref)  # LUT ops: exact (autocontrast's LUT in PIL's float64 order)


def test_every_op_is_drawn():
    maker = ViewMaker(n_views=64, size=32, augmix=True)
    p = maker.sample(100, 100, seed=0, index=0)
    used = p.ops[(p.depths[..., None] > torch.arange(3))]  # ops that actually run
    assert set(used.tolist()) == set(range(len(AUGMIX_OPS)))
    assert set(p.depths.flatten().tolist()) == {1, 2, 3} and set(p.signs.flatten().tolist()) == {-1.0, 1.0}
    assert (p.levels >= 0.1).all() and (p.levels < 1).all()
    assert torch.allclose(p.weights.sum(1), torch.ones(63)) and (p.weights > 0).all()
    assert (p.keep >= 0).all() and (p.keep < 1).all()


def test_augmix_views_match_tpt_with_pil():
    image = smooth_image(120, 160)
    maker = ViewMaker(n_views=16, size=64, augmix=True)
    params = maker.sample(120, 160, seed=1, index=2)
    ours = maker.apply(image, params)
    plain = ViewMaker(n_views=16, size=64)(image, seed=1, index=2)
    assert torch.isfinite(ours).all() and torch.equal(ours[0], plain[0])
    assert all(not torch.allclose(ours[i], plain[i]) for i in range(1, 16))
    # Start PIL from our crops (tested above), so that this compares the ops, chains and mixing alone.
    crops = (plain[1:] * STD + MEAN).mul(255).round().to(torch.uint8)
    mean, std = np.array(OPENAI_MEAN, dtype=np.float32), np.array(OPENAI_STD, dtype=np.float32)
    ref = torch.stack([torch.from_numpy(pil_augmix(to_pil(crop), params, i, mean, std)) for i, crop in enumerate(crops)])
    diff = levels(ours[1:] * STD, ref * STD)  # in levels of the [0, 1] image, after the mixing weights
    # Measured over 5 x 63 views: max 0.08, mean < 1e-5 (a rare one-level shear/rotate difference, scaled by
    # its chain weight); an op or mixing mistake moves whole views by many levels.
    assert diff.max() < 1.5 and diff.mean() < 0.01


# ---- determinism ----

def test_views_depend_only_on_seed_and_index():
    image = smooth_image(90, 120)
    maker = ViewMaker(n_views=8, size=32, augmix=True)
    torch.manual_seed(0)
    first = maker(image, seed=0, index=3)
    torch.manual_seed(1)  # the global RNG plays no part
    assert torch.equal(first, maker(image, seed=0, index=3))
    assert not torch.equal(first[1:], maker(image, seed=0, index=4)[1:])
    assert not torch.equal(first[1:], maker(image, seed=1, index=3)[1:])
    fresh = ViewMaker(n_views=8, size=32, augmix=True)
    fresh(image, seed=0, index=5)  # call history plays no part either
    assert torch.equal(first, fresh(image, seed=0, index=3))


def test_generator_mixes_seed_and_index():
    draw = lambda s, i: torch.rand(4, generator=view_generator(s, i))  # noqa: E731
    assert torch.equal(draw(3, 7), draw(3, 7))
    assert not torch.equal(draw(0, 1), draw(1, 0)) and not torch.equal(draw(1, 2), draw(2, 1))


def test_view0_follows_the_checkpoints_interpolation():
    image = smooth_image(120, 160)
    bicubic = ViewMaker(n_views=1, size=64)(image, seed=0, index=0)[0]
    bilinear = ViewMaker(n_views=1, size=64, interpolation="bilinear")(image, seed=0, index=0)[0]
    resized = two_pass(image.float() / 255, (64, 85), "bilinear")[:, :, 10:74]
    assert torch.equal(bilinear, (resized - MEAN) / STD) and not torch.equal(bilinear, bicubic)
    with pytest.raises(ValueError, match="bicubic or bilinear"):
        ViewMaker(interpolation="lanczos")
