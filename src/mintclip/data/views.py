"""TPT's test-time views (AugMixAugmenter), batched in torch and deterministic per (seed, index).

Reference: TPT `data/datautils.py` (AugMixAugmenter, augmix) and `data/augmix_ops.py`, copied verbatim by
MINT, DynaPrompt and MTA. The reference works on PIL uint8 images; here every step works on float32 in [0, 1]
on any device and lands on the 1/255 grid wherever PIL would hold a uint8 image, so the views match PIL's up
to its fixed-point rounding. All randomness is drawn up front (`ViewMaker.sample`) from one CPU generator
seeded from (seed, index): views depend on nothing else, not the device, the worker or the call history.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from mintclip.constants import OPENAI_MEAN, OPENAI_STD

AUGMIX_OPS = ("autocontrast", "equalize", "posterize", "rotate", "solarize",
              "shear_x", "shear_y", "translate_x", "translate_y")  # augmix_ops.augmentations, in its order
ATTEMPTS = 10  # boxes torchvision's RandomResizedCrop tries before falling back to a central crop
CHAINS = MAX_DEPTH = 3  # AugMix: 3 chains of 1-3 ops each


def _uniform(generator: torch.Generator, *shape: int) -> Tensor:
    """U[0, 1) in float64, so that thresholds such as int(level * 30 / 10) come out as in Python."""
    return torch.rand(*shape, generator=generator, dtype=torch.float64)


def keyed_generator(*key: int) -> torch.Generator:
    """A CPU generator that is a function of `key` alone; hashing keeps (0, 1) and (1, 0) apart."""
    digest = hashlib.blake2b(":".join(map(str, key)).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little"))


def view_generator(seed: int, index: int) -> torch.Generator:
    """The CPU generator for image `index` of run `seed`."""
    return keyed_generator(seed, index)


def sample_crops(height: int, width: int, n: int, generator: torch.Generator,
                 scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Tensor:
    """torchvision's RandomResizedCrop.get_params for n crops at once -> (n, 4) int64 top, left, h, w.

    Every crop draws all ATTEMPTS boxes and keeps the first that fits, which is what the sequential loop
    accepts; crops where none fits take torchvision's central fallback."""
    target = height * width * (scale[0] + (scale[1] - scale[0]) * _uniform(generator, n, ATTEMPTS))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * _uniform(generator, n, ATTEMPTS))
    w = torch.sqrt(target * aspect).round()  # half to even, as Python's round
    h = torch.sqrt(target / aspect).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # (n, ATTEMPTS)
    first = fits.int().argmax(1, keepdim=True)  # argmax returns the first maximum
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    top = (_uniform(generator, n) * (height - h + 1)).floor()  # torch.randint(0, height - h + 1)
    left = (_uniform(generator, n) * (width - w + 1)).floor()
    if width / height < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif width / height > max(ratio):
        fw, fh = round(height * max(ratio)), height
    else:
        fw, fh = width, height
    fallback = torch.tensor([(height - fh) // 2, (width - fw) // 2, fh, fw], dtype=torch.float64)
    return torch.where(fits.any(1, keepdim=True), torch.stack([top, left, h, w], 1), fallback).long()


# ---- AugMix ops: x (N, 3, S, S) float on the 1/255 grid -> same, as PIL computes them on uint8 ----

def _apply_lut(x: Tensor, lut: Tensor) -> Tensor:
    """Map uint8 values through lut (N, 3 or 1, 256) of integers, like Image.point."""
    idx = x.flatten(2).mul(255).round().long()  # (N, 3, S*S)
    return lut.to(x).expand(x.shape[0], 3, 256).gather(2, idx).view_as(x) / 255


def autocontrast(x: Tensor) -> Tensor:
    """ImageOps.autocontrast: stretch each channel's [min, max] to [0, 255], truncating as PIL's float LUT."""
    v = x.flatten(2).mul(255).round().double()
    lo, hi = v.amin(2, keepdim=True), v.amax(2, keepdim=True)  # (N, 3, 1)
    scale = torch.full_like(hi, 255.0) / (hi - lo)  # a true division: `255.0 / t` multiplies by 1 / t
    bins = torch.arange(256, dtype=torch.float64, device=x.device)
    lut = (bins * scale + (-lo * scale)).trunc().clamp(0, 255)  # same double ops, in the same order, as PIL
    return _apply_lut(x, torch.where(hi > lo, lut, bins))


def equalize(x: Tensor) -> Tensor:
    """ImageOps.equalize: per-channel histogram equalisation with PIL's integer LUT."""
    idx = x.flatten(2).mul(255).round().long()  # (N, 3, S*S)
    hist = idx.new_zeros(*idx.shape[:2], 256).scatter_add_(2, idx, torch.ones_like(idx))  # (N, 3, 256)
    bins = torch.arange(256, device=x.device)
    last = torch.where(hist > 0, bins, -1).amax(2, keepdim=True)  # highest non-empty bin
    step = (idx.shape[2] - hist.gather(2, last)) // 255  # (N, 3, 1)
    below = hist.cumsum(2) - hist  # pixels in lower bins
    lut = ((step // 2 + below) // step.clamp(min=1)).clamp(max=255)
    return _apply_lut(x, torch.where(step > 0, lut, bins))


def posterize(x: Tensor, bits: Tensor) -> Tensor:
    """ImageOps.posterize: keep the top `bits` (N,) bits of each value."""
    bins = torch.arange(256, device=x.device)
    mask = 256 - 2 ** (8 - bits.to(x.device).long())  # ~(2 ** (8 - bits) - 1) within a byte
    return _apply_lut(x, (bins & mask[:, None])[:, None])


def solarize(x: Tensor, threshold: Tensor) -> Tensor:
    """ImageOps.solarize: invert values >= threshold (N,)."""
    bins = torch.arange(256, device=x.device)
    return _apply_lut(x, torch.where(bins < threshold.to(x.device)[:, None], bins, 255 - bins)[:, None])


def _pil_affine(x: Tensor, coeffs: Tensor) -> Tensor:
    """Image.transform(size, AFFINE, coeffs (N, 6), BILINEAR) on square images.

    PIL maps output pixel centre (X, Y) to input (aX + bY + c, dX + eY + f) in pixel units, fills points
    outside the image with 0 but clamps the bilinear neighbours of points inside it (grid_sample's "border"
    plus a mask), and truncates to uint8."""
    n, s = x.shape[0], x.shape[-1]
    a, b, c, d, e, f = coeffs.double().unbind(1)
    theta = torch.stack([a, b, a + b - 1 + 2 * c / s, d, e, d + e - 1 + 2 * f / s], 1).view(n, 2, 3)
    grid = F.affine_grid(theta.to(x.device), [n, 3, s, s], align_corners=False)  # (N, S, S, 2) input, in [-1, 1]
    out = F.grid_sample(x.double(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    inside = ((grid >= -1) & (grid < 1)).all(-1)[:, None]  # (N, 1, S, S)
    return out.mul_(inside).mul_(255).add_(1e-6).floor_().div_(255).to(x.dtype)  # float64: exact on whole shifts


def _affine_coeffs(**entries: Tensor) -> Tensor:
    """(N, 6) PIL affine data: the identity, with the given entries (each (N,)) replaced."""
    n = len(next(iter(entries.values())))
    coeffs = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], dtype=torch.float64).repeat(n, 1)
    for name, value in entries.items():
        coeffs[:, "abcdef".index(name)] = value.double().cpu()
    return coeffs


def rotate(x: Tensor, degrees: Tensor) -> Tensor:
    """Image.rotate(degrees (N,), BILINEAR): counter-clockwise about the centre, black corners."""
    r = -torch.deg2rad(degrees.double().cpu())
    cos, sin, centre = torch.cos(r), torch.sin(r), x.shape[-1] / 2
    return _pil_affine(x, _affine_coeffs(a=cos, b=sin, c=centre - (cos + sin) * centre,
                                         d=-sin, e=cos, f=centre - (cos - sin) * centre))


def shear_x(x: Tensor, shear: Tensor) -> Tensor:
    return _pil_affine(x, _affine_coeffs(b=shear))  # output (X, Y) reads input (X + shear Y, Y)


def shear_y(x: Tensor, shear: Tensor) -> Tensor:
    return _pil_affine(x, _affine_coeffs(d=shear))


def translate_x(x: Tensor, pixels: Tensor) -> Tensor:
    return _pil_affine(x, _affine_coeffs(c=pixels))  # output (X, Y) reads input (X + pixels, Y)


def translate_y(x: Tensor, pixels: Tensor) -> Tensor:
    return _pil_affine(x, _affine_coeffs(f=pixels))


OPS = {"autocontrast": autocontrast, "equalize": equalize, "posterize": posterize, "rotate": rotate,
       "solarize": solarize, "shear_x": shear_x, "shear_y": shear_y, "translate_x": translate_x,
       "translate_y": translate_y}
_ARGUMENT = {  # augmix_ops.py at severity 1, from level = sample_level(1) (int() is floor: level > 0)
    "posterize": lambda level, sign, size: 4 - (level * 4 / 10).floor(),  # bits
    "rotate": lambda level, sign, size: sign * (level * 30 / 10).floor(),  # degrees
    "solarize": lambda level, sign, size: 256 - (level * 256 / 10).floor(),  # threshold
    "shear_x": lambda level, sign, size: sign * (level * 0.3 / 10),
    "shear_y": lambda level, sign, size: sign * (level * 0.3 / 10),
    "translate_x": lambda level, sign, size: sign * (level * (size / 3) / 10).floor(),  # pixels
    "translate_y": lambda level, sign, size: sign * (level * (size / 3) / 10).floor(),
}


def augmix_op(name: str, x: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    """Op `name` at severity 1 on x (N, 3, S, S), given sample_level(1) (N,) and a random sign (N,)."""
    if name in _ARGUMENT:
        return OPS[name](x, _ARGUMENT[name](level, sign, x.shape[-1]))  # IMAGE_SIZE = S
    return OPS[name](x)


# ---- the views ----

@dataclass
class ViewParams:
    """Everything random about the n_views - 1 random views (V) of one image, drawn on the CPU."""
    crops: Tensor  # (V, 4) int64 top, left, h, w in the full-resolution image
    flips: Tensor  # (V,) bool, horizontal flip after the crop
    weights: Tensor | None = None  # AugMix only: (V, 3) Dirichlet(1, 1, 1) weights of the chains
    keep: Tensor | None = None  # (V,) m ~ Beta(1, 1), weight of the plain crop against the chains' mix
    depths: Tensor | None = None  # (V, 3) int64 in {1, 2, 3}, ops per chain
    ops: Tensor | None = None  # (V, 3, 3) int64 [view, chain, step], index into AUGMIX_OPS
    levels: Tensor | None = None  # (V, 3, 3) float64 sample_level(1) ~ U(0.1, 1)
    signs: Tensor | None = None  # (V, 3, 3) float64 +-1, for the ops with a direction


def image_to_tensor(image: Image.Image) -> Tensor:
    """A PIL image -> uint8 (3, H, W), contiguous (PIL's HWC layout would make every later op strided)."""
    return torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _to_grid(x: Tensor) -> Tensor:
    """Round to uint8 levels, as PIL does whenever it writes a uint8 image."""
    return x.clamp(0, 1).mul(255).round().div(255)


def pil_resize(x: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """PIL's antialiased resize of a uint8 image, x (N, 3, H, W) -> (N, 3, *size): like PIL's Resample.c, a
    horizontal pass then a vertical one, each rounded (and for bicubic clamped) to uint8."""
    wide = _to_grid(F.interpolate(x, size=(x.shape[-2], size[1]), mode=mode, antialias=True, align_corners=False))
    return _to_grid(F.interpolate(wide, size=size, mode=mode, antialias=True, align_corners=False))


def centre_view(image: Tensor, size: int, interpolation: str = "bicubic") -> Tensor:
    """View 0: Resize(size) on the short side + CenterCrop(size); image (3, H, W) -> (3, S, S). Bicubic, as
    TPT and CLIP preprocess; a checkpoint that states bilinear (some open_clip models) gets bilinear."""
    height, width = image.shape[-2:]
    short, long = sorted((height, width))
    new_long = int(size * long / short)
    new_h, new_w = (size, new_long) if height <= width else (new_long, size)
    resized = pil_resize(image[None], (new_h, new_w), interpolation)[0]
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))  # Python's round, as torchvision
    return resized[:, top:top + size, left:left + size]


class ViewMaker:
    """TPT's AugMixAugmenter: view 0 is the resized centre crop, the rest random resized crops, flipped half
    the time, and with augmix=True (the cross-domain sets) AugMixed."""

    def __init__(self, n_views: int = 64, size: int = 224, augmix: bool = False, mean=OPENAI_MEAN,
                 std=OPENAI_STD, device: str | torch.device | None = None, interpolation: str = "bicubic") -> None:
        if interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"view 0 interpolation must be bicubic or bilinear, got {interpolation!r}")
        self.n_views, self.size, self.augmix, self.device = n_views, size, augmix, device
        self.interpolation = interpolation
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: Image.Image | Tensor, seed: int, index: int) -> Tensor:
        """image: PIL RGB or uint8 (3, H, W) -> float32 (n_views, 3, size, size), normalised; view 0 = original."""
        if isinstance(image, Image.Image):
            image = image_to_tensor(image)
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a PIL image or uint8 (3, H, W), got {image.dtype} {tuple(image.shape)}")
        return self.apply(image, self.sample(image.shape[1], image.shape[2], seed, index))

    def sample(self, height: int, width: int, seed: int, index: int) -> ViewParams:
        """Draw the views' parameters, always in the same order, from view_generator(seed, index)."""
        g, v = view_generator(seed, index), self.n_views - 1
        crops = sample_crops(height, width, v, g)
        flips = _uniform(g, v) < 0.5
        if not self.augmix:
            return ViewParams(crops, flips)
        gamma = -torch.log1p(-_uniform(g, v, CHAINS))  # Exp(1) = Gamma(1); normalised, a Dirichlet(1, 1, 1)
        weights = (gamma / gamma.sum(1, keepdim=True)).float()
        keep = _uniform(g, v).float()
        depths = torch.randint(1, MAX_DEPTH + 1, (v, CHAINS), generator=g)
        ops = torch.randint(len(AUGMIX_OPS), (v, CHAINS, MAX_DEPTH), generator=g)
        levels = 0.1 + 0.9 * _uniform(g, v, CHAINS, MAX_DEPTH)
        signs = 1 - 2 * (_uniform(g, v, CHAINS, MAX_DEPTH) > 0.5).double()  # augmix_ops: negate if U > 0.5
        return ViewParams(crops, flips, weights, keep, depths, ops, levels, signs)

    def apply(self, image: Tensor, params: ViewParams) -> Tensor:
        """uint8 (3, H, W) + params -> (n_views, 3, S, S) normalised, on self.device (default: the image's)."""
        device = image.device if self.device is None else torch.device(self.device)
        image = image.contiguous().to(device).float().div(255)  # (3, H, W) in [0, 1]
        mean, std = self.mean.to(device), self.std.to(device)
        crops = self.crops(image, params)  # (V, 3, S, S)
        views = self._augmix(crops, params, mean, std) if self.augmix else (crops - mean) / std
        return torch.cat([((centre_view(image, self.size, self.interpolation) - mean) / std)[None], views])

    def crops(self, image: Tensor, params: ViewParams) -> Tensor:
        """RandomResizedCrop (PIL's antialiased bilinear) + RandomHorizontalFlip: (V, 3, S, S) in [0, 1]."""
        s = self.size
        out = image.new_empty(len(params.crops), 3, s, s)
        for i, (top, left, h, w) in enumerate(params.crops.tolist()):  # crops differ in size: one kernel each
            out[i] = pil_resize(image[None, :, top:top + h, left:left + w], (s, s), "bilinear")[0]
        flipped = params.flips.nonzero()[:, 0].to(image.device)
        out[flipped] = out[flipped].flip(-1)
        return out

    def _augmix(self, crops: Tensor, params: ViewParams, mean: Tensor, std: Tensor) -> Tensor:
        """m * norm(crop) + (1 - m) * sum_i w_i * norm(chain_i(crop)), each chain 1-3 random ops.

        Step by step, each op runs once on all (view, chain) pairs that drew it: at most 27 batched calls."""
        v, s = crops.shape[0], self.size
        chains = crops.repeat_interleave(CHAINS, 0)  # (V * 3, 3, S, S), row = view * 3 + chain
        depths, ops = params.depths.flatten(), params.ops.flatten(0, 1)  # (V * 3,), (V * 3, 3)
        levels, signs = params.levels.flatten(0, 1), params.signs.flatten(0, 1)
        for step in range(MAX_DEPTH):
            for k, name in enumerate(AUGMIX_OPS):
                rows = ((depths > step) & (ops[:, step] == k)).nonzero()[:, 0]  # CPU indices
                if len(rows):
                    at = rows.to(crops.device)
                    chains[at] = augmix_op(name, chains[at], levels[rows, step], signs[rows, step])
        normed = chains.sub_(mean).div_(std).view(v, CHAINS, 3, s, s)  # normalise, then mix, as TPT does
        weights = params.weights.to(crops.device).view(v, CHAINS, 1, 1, 1)
        mix = torch.zeros_like(crops)
        for chain in range(CHAINS):  # elementwise, not a matmul that TF32 settings could round
            mix.addcmul_(weights[:, chain], normed[:, chain])
        keep = params.keep.to(crops.device).view(v, 1, 1, 1)
        return mix.mul_(1 - keep).add_(keep * (crops - mean) / std)
