"""TPT's views the way its code makes them: PIL, one view at a time, on the CPU.

Not used by runs. It is the yardstick of the view benchmark and the oracle of the view tests: it
replays the parameters that `ViewMaker.sample` drew, so both paths do the same work on the same crops.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from .views import AUGMIX_OPS, ViewMaker, ViewParams


def pil_augmix_op(name: str, image: Image.Image, level: float, sign: float) -> Image.Image:
    """augmix_ops.py at severity 1, given its sample_level(1) draw `level` and its coin flip as `sign`."""
    size = image.size[0]  # augmix_ops' IMAGE_SIZE
    if name in ("autocontrast", "equalize"):
        return getattr(ImageOps, name)(image)
    if name == "posterize":
        return ImageOps.posterize(image, 4 - int(level * 4 / 10))
    if name == "rotate":
        return image.rotate(sign * int(level * 30 / 10), resample=Image.BILINEAR)
    if name == "solarize":
        return ImageOps.solarize(image, 256 - int(level * 256 / 10))
    data = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    slot = {"shear_x": 1, "shear_y": 3, "translate_x": 2, "translate_y": 5}[name]
    data[slot] = sign * (level * 0.3 / 10 if name.startswith("shear") else int(level * (size / 3) / 10))
    return image.transform((size, size), Image.AFFINE, tuple(data), resample=Image.BILINEAR)


def pil_augmix(crop: Image.Image, params: ViewParams, view: int, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """TPT's augmix() for one cropped and flipped view: (3, S, S) normalised."""
    normalise = lambda im: ((np.asarray(im, dtype=np.float32) / 255 - mean) / std).transpose(2, 0, 1)  # noqa: E731
    mix = np.zeros((3, crop.height, crop.width), dtype=np.float32)
    for chain in range(3):
        augmented = crop.copy()
        for step in range(int(params.depths[view, chain])):
            name = AUGMIX_OPS[int(params.ops[view, chain, step])]
            augmented = pil_augmix_op(name, augmented, params.levels[view, chain, step].item(),
                                      params.signs[view, chain, step].item())
        mix += params.weights[view, chain].item() * normalise(augmented)
    keep = params.keep[view].item()
    return keep * normalise(crop) + (1 - keep) * mix


def pil_views(image: Image.Image, maker: ViewMaker, params: ViewParams) -> np.ndarray:
    """AugMixAugmenter with PIL: view 0, then each random view's crop, resize, flip (and AugMix)."""
    mean, std = maker.mean.view(3).numpy(), maker.std.view(3).numpy()
    normalise = lambda im: ((np.asarray(im, dtype=np.float32) / 255 - mean) / std).transpose(2, 0, 1)  # noqa: E731
    size, (width, height) = maker.size, image.size
    new_long = int(size * max(width, height) / min(width, height))  # torchvision Resize(size), CenterCrop(size)
    resized = image.resize((size, new_long) if width <= height else (new_long, size), Image.BICUBIC)
    left, top = int(round((resized.width - size) / 2.0)), int(round((resized.height - size) / 2.0))
    views = [normalise(resized.crop((left, top, left + size, top + size)))]
    for v, ((t, l, h, w), flip) in enumerate(zip(params.crops.tolist(), params.flips.tolist())):
        crop = image.resize((size, size), Image.BILINEAR, box=(l, t, l + w, t + h))
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT) if flip else crop
        views.append(pil_augmix(crop, params, v, mean, std) if maker.augmix else normalise(crop))
    return np.stack(views)
