"""Procedural images of the 20 shiftbench classes: a photo-like source style and four shifted domains.

The classes' polygons come from shapes.py in a unit frame (y down); one transform places them, so the same
geometry gives the filled object, the pencil outline and the occlusion check. All randomness comes from the
generator passed in, so an image is a pure function of (seed, domain, label, index). Images are composed as float
arrays channel-first, (3, H, W): colours are (3, 1, 1) and masks (H, W), which broadcast fast.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .shapes import CLASSES, SHAPES, Parts, rect, regular, rotation

DOMAINS: tuple[str, ...] = ("source", "sketch", "rendition", "hard", "resampled")
SHIFTED: tuple[str, ...] = DOMAINS[1:]
SS = 2  # supersampling: polygons are drawn at SS times the size, then box-filtered down (antialiasing)
REF = 96  # lengths in pixels (stroke widths, blur radii) are for a REF px image and scale with the size


# --- placing and drawing one object -------------------------------------------------------------------------

@dataclass
class Scene:
    """What was drawn; the captions are made from it."""

    label: int
    colour: str
    size: str  # "small" | "medium" | "large"
    position: str
    background: str
    fill: str


POSITIONS = (("at the top left", "at the top", "at the top right"),
             ("on the left", "in the centre", "on the right"),
             ("at the bottom left", "at the bottom", "at the bottom right"))


@dataclass
class _Shape:
    """One placed object. x, y are each pixel's offset from its centre in object radii; u, v the same in the
    object's own turned frame, so fill patterns turn with it while the light stays put."""

    polys: Parts  # in supersampled pixels
    alpha: np.ndarray  # antialiased silhouette and detail masks in [0, 1]
    detail: np.ndarray
    x: np.ndarray
    y: np.ndarray
    u: np.ndarray
    v: np.ndarray
    centre: np.ndarray
    half: float
    size: str
    position: str


@lru_cache
def _grid(size: int) -> np.ndarray:
    """(y, x) of the pixel centres in [0, 1]; shared, never written to."""
    return ((np.mgrid[0:size, 0:size] + 0.5) / size).astype(np.float32)


def _place(label: int, rng: np.random.Generator, size: int, turn: float, scales: tuple[float, float],
           off_centre: bool = False) -> _Shape:
    """Turns by up to `turn` degrees, spans a `scales` fraction of the image, and stays (mostly) inside it."""
    scale = rng.uniform(*scales)
    half = scale * size / 2
    room = size / 2 - half
    if off_centre:
        direction = rng.uniform(0, 2 * np.pi)
        offset = rng.uniform(0.5, 1) * room * np.array([np.cos(direction), np.sin(direction)])
    else:
        offset = rng.uniform(-0.6, 0.6, 2) * room
    centre = size / 2 + offset
    rot = rotation(np.radians(rng.uniform(-turn, turn)))
    stretch = np.array([1, rng.uniform(0.85, 1.15)])
    polys = [(kind, ((pts * stretch) @ rot * half + centre) * SS) for kind, pts in SHAPES[CLASSES[label]](rng)]
    y, x = (_grid(size) * size - centre[::-1, None, None]) / half
    back = rot.T / stretch  # pixel offsets back into the unit frame
    row, col = np.digitize(centre[::-1], [0.42 * size, 0.58 * size])
    return _Shape(polys, *_raster(polys, size), x, y, x * back[0, 0] + y * back[1, 0],
                  x * back[0, 1] + y * back[1, 1], centre, half,
                  "small" if scale < 0.42 else "medium" if scale < 0.62 else "large", POSITIONS[row][col])


def _raster(polys: Parts, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Antialiased silhouette and detail masks in [0, 1]: parts drawn in order, cuts erase both."""
    sil, det = Image.new("L", (size * SS,) * 2), Image.new("L", (size * SS,) * 2)
    draw_sil, draw_det = ImageDraw.Draw(sil), ImageDraw.Draw(det)
    for kind, pts in polys:
        draw_sil.polygon(pts.ravel().tolist(), fill=0 if kind == "cut" else 255)
        if kind != "add":
            draw_det.polygon(pts.ravel().tolist(), fill=255 if kind == "detail" else 0)
    return tuple(np.asarray(m.resize((size, size), Image.BOX), np.float32) / 255 for m in (sil, det))


def _blur(mask: np.ndarray, radius: float) -> np.ndarray:
    radius *= mask.shape[-1] / REF
    blurred = Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(blurred, np.float32) / 255


def _edge(mask: np.ndarray, width: float) -> np.ndarray:
    """A stroke about `width` pixels wide along the mask's boundary, in [0, 1]."""
    b = _blur(mask, width / 2)
    return np.clip(5 * b * (1 - b), 0, 1)


def _wobble(pts: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """A hand-drawn copy of a closed polygon: edges cut into short steps, each moved by smooth noise, and the
    whole shifted a little."""
    px = SS * size / REF
    nxt = np.roll(pts, -1, 0)
    counts = np.maximum(1, np.linalg.norm(nxt - pts, axis=1) // (2.5 * px)).astype(int)
    t = np.concatenate([np.arange(c) / c for c in counts])[:, None]
    idx = np.repeat(np.arange(len(pts)), counts)
    noise = rng.normal(0, 0.6 * px, (len(idx), 2))
    noise = sum(np.roll(noise, k, 0) for k in range(-2, 3)) / np.sqrt(5)
    return pts[idx] + (nxt - pts)[idx] * t + noise + rng.normal(0, px, 2)


# --- colours and textures -----------------------------------------------------------------------------------

def _rgb(values: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.asarray(values, np.float32).reshape(3, 1, 1)


PALETTE = {name: _rgb(rgb) for name, rgb in {
    "red": (200, 40, 40), "orange": (240, 135, 25), "yellow": (240, 210, 50), "green": (60, 165, 70),
    "blue": (45, 90, 205), "purple": (135, 60, 175), "pink": (240, 130, 185), "brown": (125, 80, 40),
    "white": (242, 242, 236), "black": (35, 35, 38)}.items()}
VIVID = {name: _rgb(rgb) for name, rgb in {
    "red": (240, 30, 40), "orange": (255, 140, 0), "yellow": (255, 225, 0), "green": (30, 210, 60),
    "blue": (30, 110, 255), "purple": (160, 50, 230), "pink": (255, 60, 180)}.items()}
FILLS = ("solid", "striped", "dotted", "gradient")


def _colour(rng: np.random.Generator, behind: np.ndarray) -> tuple[str, np.ndarray]:
    """A palette colour that stands out from what lies behind the object, slightly jittered."""
    names = [name for name, rgb in PALETTE.items() if np.linalg.norm(rgb - behind) > 110]
    name = names[rng.integers(len(names))]
    return name, np.clip(PALETTE[name] + _rgb(rng.uniform(-15, 15, 3)), 0, 255)


def _smooth(rng: np.random.Generator, size: int, rows: int, cols: int | None = None) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a rows x cols grid of random values stretched bicubically."""
    grid = Image.fromarray(rng.random((rows, cols or rows), dtype=np.float32))
    return np.clip(np.asarray(grid.resize((size, size), Image.BICUBIC)), 0, 1)


def _background(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A natural-looking photo background."""
    y, x = _grid(size)
    low = _smooth(rng, size, 3) - 0.5
    if kind == "grassy":
        green = _rgb([rng.uniform(50, 110), rng.uniform(120, 180), rng.uniform(30, 70)])
        return green * (0.75 + 0.3 * _smooth(rng, size, 4, size // 3) + 0.4 * low)
    if kind == "cloudy":
        sky = _rgb([70, 130, 215]) + y * _rgb([90, 70, 25])
        return sky + (245 - sky) * np.clip(3 * (_smooth(rng, size, 4) - 0.55), 0, 1)
    if kind == "sandy":
        return _rgb([205, 180, 130] + rng.uniform(-20, 20, 3)) + 40 * low + rng.normal(0, 7, (size, size))
    if kind == "wooden":
        wood = _rgb([140, 95, 55] + rng.uniform(-25, 25, 3)) + 22 * np.sin((y * rng.uniform(6, 12) + low) * 2 * np.pi)
        return wood if rng.random() < 0.5 else wood.transpose(0, 2, 1)
    angle = rng.uniform(0, 2 * np.pi)
    t = x * np.cos(angle) + y * np.sin(angle)
    t = (t - t.min()) / np.ptp(t)
    c0, c1 = _rgb(rng.uniform(80, 225, 3)), _rgb(rng.uniform(80, 225, 3))
    img = c0 + (c1 - c0) * t + 30 * low
    if kind == "striped":
        img += 22 * np.sin(t * rng.uniform(4, 8) * 2 * np.pi)
    elif kind == "dotted":
        f = rng.uniform(6, 10) * 2 * np.pi
        img -= 35 * np.clip(4 * (np.sin(x * f) * np.sin(y * f) - 0.5), 0, 1)
    return img


def _busy(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A high-contrast background for the hard domain."""
    y, x = _grid(size)
    c0, c1 = _rgb(rng.uniform(0, 255, 3)), _rgb(rng.uniform(0, 255, 3))
    if kind == "striped":
        angle = rng.uniform(0, np.pi)
        t = np.sin((x * np.cos(angle) + y * np.sin(angle)) * rng.uniform(5, 12) * 2 * np.pi)
        return c0 + (c1 - c0) * np.clip(2 * t + 0.5, 0, 1)
    if kind == "checked":
        iy, ix = (_grid(size) * size / rng.integers(5, 13)).astype(int)
        return c0 + (c1 - c0) * ((ix + iy) % 2)
    if kind == "colourful":
        return 255 * np.stack([_smooth(rng, size, 6) for _ in range(3)])
    return _background(kind, rng, size)


def _paint(img: np.ndarray, shape: _Shape, rng: np.random.Generator, rgb: np.ndarray) -> str:
    """Composites a patterned, lit object with a drop shadow onto img (in place); returns the fill word."""
    fill = FILLS[rng.integers(len(FILLS))]
    angle = rng.uniform(0, np.pi)
    w = shape.u * np.cos(angle) + shape.v * np.sin(angle)
    if fill == "striped":
        pattern = 0.5 + 0.5 * np.tanh(3 * np.sin(w * rng.uniform(8, 13)))
    elif fill == "dotted":
        f = rng.uniform(8, 11)
        pattern = np.clip(5 * (np.sin(shape.u * f) * np.sin(shape.v * f) - 0.4), 0, 1)
    else:
        pattern = np.clip((w + 1) / 2, 0, 1) if fill == "gradient" else 0
    second = rgb * 0.45 if rgb.mean() > 110 else rgb + (255 - rgb) * 0.55
    light = 1 - 0.25 * np.clip(shape.x ** 2 + shape.y ** 2, 0, 1)  # darker toward the rim, a glossy spot
    gloss = rng.uniform(25, 80) * np.exp(-((shape.x + 0.4) ** 2 + (shape.y + 0.4) ** 2) / 0.15)
    obj = (rgb + (second - rgb) * pattern) * light + gloss
    d = max(1, round(rng.uniform(1, 3.5) * img.shape[1] / REF))
    img[:, d:, d:] *= 1 - 0.4 * _blur(shape.alpha, 2)[:-d, :-d]
    img[:] = img * (1 - shape.alpha) + obj * shape.alpha
    img[:] = img * (1 - shape.detail) + (rgb * 0.3 if rgb.mean() > 80 else 210) * shape.detail
    return fill


def _finish(img: np.ndarray, rng: np.random.Generator, blur: tuple[float, float] | None,
            noise: tuple[float, float]) -> Image.Image:
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8).transpose(1, 2, 0))
    if blur:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(*blur) * img.shape[1] / REF))
    grain = rng.standard_normal((img.shape[1], img.shape[2], 3), dtype=np.float32) * rng.uniform(*noise)
    return Image.fromarray(np.clip(np.asarray(out, np.float32) + grain, 0, 255).astype(np.uint8))


# --- the domains --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Look:
    """Generation statistics of a photo-like domain: resampled is the source with these shifted."""

    turn: float  # degrees either way
    scales: tuple[float, float]
    backgrounds: dict[str, float]  # kind -> probability
    dull: float  # how far colours move toward a darker grey
    exposure: tuple[float, float]
    blur: tuple[float, float]
    noise: tuple[float, float]


LOOKS = {
    "source": _Look(30, (0.4, 0.8), {"grassy": 0.25, "cloudy": 0.25, "plain": 0.2, "striped": 0.1, "sandy": 0.1,
                                     "wooden": 0.1}, 0.0, (0.95, 1.05), (0.2, 0.6), (1, 4)),
    "resampled": _Look(60, (0.3, 0.6), {"grassy": 0.1, "cloudy": 0.1, "plain": 0.15, "striped": 0.2,
                                        "sandy": 0.15, "wooden": 0.15, "dotted": 0.15}, 0.45, (0.7, 0.9),
                       (0.5, 1.0), (3, 7)),
}


SMALL_SCALES = (0.22, 0.4)  # a "small" photo of the corpus: the source look's objects span 0.4-0.8


def _photo(label: int, rng: np.random.Generator, size: int, look: _Look,
           off_centre: bool = False) -> tuple[Image.Image, Scene]:
    """A lit, patterned object with a drop shadow on a natural-looking background."""
    shape = _place(label, rng, size, look.turn, look.scales, off_centre)
    kinds = list(look.backgrounds)
    background = kinds[rng.choice(len(kinds), p=list(look.backgrounds.values()))]
    img = _background(background, rng, size)
    word, rgb = _colour(rng, img.mean((1, 2), keepdims=True))
    rgb = (rgb + (rgb.mean() - rgb) * look.dull) * (1 - 0.4 * look.dull)
    fill = _paint(img, shape, rng, rgb)
    img *= rng.uniform(*look.exposure)
    return (_finish(img, rng, look.blur, look.noise),
            Scene(label, word, shape.size, shape.position, background, fill))


def _sketch(label: int, rng: np.random.Generator, size: int) -> tuple[Image.Image, Scene]:
    """Pencil outlines (one or two wobbly passes, sometimes hatching) on faintly textured paper."""
    shape = _place(label, rng, size, 30, (0.45, 0.8))
    paper = rng.uniform(232, 250) + 10 * (_smooth(rng, size, 3) - 0.5) + rng.uniform(0, 4) * _rgb([1, 0, -1])
    ink = np.zeros((size, size), np.float32)
    for strength in (1.0, 0.55)[: 1 + (rng.random() < 0.5)]:
        sil, det = _raster([(kind, _wobble(pts, rng, size)) for kind, pts in shape.polys], size)
        width = rng.uniform(1.0, 2.2)
        ink = np.maximum(ink, strength * np.maximum(_edge(sil, width), _edge(det, width)))
    fill = "outline"
    if rng.random() < 0.4:
        fill = "hatched"
        angle = rng.uniform(0, np.pi)
        lines = np.sin((shape.x * np.cos(angle) + shape.y * np.sin(angle)) * rng.uniform(10, 16))
        ink = np.maximum(ink, 0.45 * np.clip(4 * (lines - 0.6), 0, 1) * shape.alpha)
    ink *= 0.6 + 0.4 * _smooth(rng, size, 4)  # pencil pressure
    lead = rng.uniform(20, 80)
    return (_finish(paper * (1 - ink) + lead * ink, rng, None, (1, 3)),
            Scene(label, "black" if lead < 50 else "grey", shape.size, shape.position, "white", fill))


RENDITION_STYLES = ("cartoon", "painting", "neon", "pastel", "inverted")


def _rendition(label: int, rng: np.random.Generator, size: int, style: str | None = None) -> tuple[Image.Image, Scene]:
    """One of: cartoon, painting, neon on black, pastel, or an inverted photo (drawn from rng unless given)."""
    shape = _place(label, rng, size, 30, (0.4, 0.8))
    style = style or RENDITION_STYLES[rng.integers(5)]
    word, other = (list(VIVID)[i] for i in rng.choice(len(VIVID), 2, replace=False))
    rgb, a, d = VIVID[word], shape.alpha, shape.detail
    if style in ("painting", "inverted"):
        background = ("grassy", "cloudy", "plain", "sandy", "wooden")[rng.integers(5)]
        img = _background(background, rng, size)
        _paint(img, shape, rng, rgb)
        img = 255 - img if style == "inverted" else _painterly(img, rng)
    elif style == "neon":
        background = "black"
        line = np.maximum(_edge(a, 1.5), _edge(d, 1.5))
        img = rng.uniform(0, 25) + (rgb * 0.9 + 40) * np.clip(0.2 * a + line + 0.5 * _edge(a, 6), 0, 1)
    else:  # flat colours, outlined: thick and black (cartoon) or thin and soft (pastel)
        pastel = style == "pastel"
        background = "pastel" if pastel else "flat"
        img = VIVID[other] + (255 - VIVID[other]) * (0.7 if pastel else rng.uniform(0.6, 0.85))
        if not pastel and rng.random() < 0.5:  # a simple ground line
            img = img - 60 * (_grid(size)[0] > rng.uniform(0.5, 0.85))
        obj = rgb + (255 - rgb) * 0.5 if pastel else rgb
        img = img * (1 - a) + obj * a
        img = img * (1 - d) + (obj * 0.7 if pastel else 20) * d
        edge = np.maximum(_edge(a, 1.2 if pastel else rng.uniform(2, 3.2)), _edge(d, 1.2 if pastel else 2))
        img = img * (1 - (0.3 if pastel else 1) * edge) + (0 if pastel else 15) * edge
    return _finish(img, rng, None, (0.5, 2)), Scene(label, word, shape.size, shape.position, background, style)


def _painterly(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Swapped, rescaled colour channels, brush-stroke streaks, and posterised colours."""
    size = img.shape[1]
    img = img[rng.permutation(3)] * _rgb(rng.uniform(0.7, 1.3, 3))
    strokes = np.stack([_smooth(rng, size, size // 8, 3) for _ in range(3)])
    img = img + 50 * ((strokes if rng.random() < 0.5 else strokes.transpose(0, 2, 1)) - 0.5)
    levels = rng.integers(4, 7)
    return np.round(np.clip(img, 0, 255) / 255 * (levels - 1)) / (levels - 1) * 255


def _hard(label: int, rng: np.random.Generator, size: int) -> tuple[Image.Image, Scene]:
    """A smallish off-centre object among clutter, partly occluded 40% of the time, on a busy or natural
    background, now and then in a colour close to what lies behind it."""
    shape = _place(label, rng, size, 45, (0.35, 0.55), off_centre=True)
    background = ("striped", "checked", "colourful", "grassy", "wooden", "grassy", "wooden")[rng.integers(7)]
    img = _clutter(_busy(background, rng, size), rng, size)
    behind = (img * shape.alpha).sum((1, 2), keepdims=True) / shape.alpha.sum()
    if rng.random() < 0.15:  # low contrast: the palette colour nearest to what lies behind, pulled toward it
        word = min(PALETTE, key=lambda name: np.linalg.norm(PALETTE[name] - behind))
        rgb = (PALETTE[word] + behind) / 2
    else:
        word, rgb = _colour(rng, behind)
    fill = _paint(img, shape, rng, rgb)
    if rng.random() < 0.4:
        _occlude(img, shape, rng)
    return (_finish(img, rng, (0.2, 0.6), (2, 6)),
            Scene(label, word, shape.size, shape.position, background, fill))


def _clutter(img: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """One to three lumpy blobs, bent strokes and slivers: busy, yet none is a class's silhouette."""
    layer = Image.new("RGBA", (size * SS,) * 2)
    draw = ImageDraw.Draw(layer)
    for _ in range(rng.integers(1, 4)):
        colour = tuple(rng.integers(0, 256, 3).tolist()) + (255,)
        centre, r = rng.uniform(0, size * SS, 2), rng.uniform(0.03, 0.09) * size * SS
        kind = rng.integers(3)
        if kind == 0:
            t = np.sort(rng.uniform(0, 2 * np.pi, 9))
            pts = centre + (r * rng.uniform(0.4, 1, 9))[:, None] * np.stack([np.cos(t), np.sin(t)], 1)
            draw.polygon(pts.ravel().tolist(), fill=colour)
        elif kind == 1:
            pts, width = centre + rng.normal(0, r, (3, 2)), round(rng.uniform(2, 5) * SS * size / REF)
            draw.line(pts.ravel().tolist(), fill=colour, width=width, joint="curve")
        else:
            pts = centre + rng.normal(0, r, (4, 2)) * [1, 0.3] @ rotation(rng.uniform(0, np.pi))
            draw.polygon(pts.ravel().tolist(), fill=colour)
    layer = np.asarray(layer.resize((size, size), Image.BOX), np.float32).transpose(2, 0, 1)
    cover = layer[3] / 255
    return img * (1 - cover) + layer[:3] * cover


def _occlude(img: np.ndarray, shape: _Shape, rng: np.random.Generator) -> None:
    """Covers part of the object (at most about 30%) with a flat bar or patch, in place."""
    bar = rng.random() < 0.5
    for shrink in (1.0, 0.75, 0.55, 0.4, 0.3):
        if bar:
            pts = rect(-1.5, -1, 1.5, 1) * [1, rng.uniform(0.1, 0.2) * shrink] @ rotation(rng.uniform(0, np.pi))
            pts = pts + rng.uniform(-0.5, 0.5, 2)
        else:
            pts = (regular(4, rng.uniform(0.3, 0.55) * shrink) @ rotation(rng.uniform(0, np.pi))
                   + 0.7 * rotation(rng.uniform(0, 2 * np.pi))[0])
        cover = _raster([("add", (pts * shape.half + shape.centre) * SS)], img.shape[1])[0]
        if (cover * shape.alpha).sum() <= 0.3 * shape.alpha.sum():
            break
    img[:] = img * (1 - cover) + _rgb(rng.uniform(0, 255, 3)) * cover


def render_pretraining(label: int, kind: str, rng: np.random.Generator, size: int, small: bool = False,
                       off_centre: bool = False) -> tuple[Image.Image, Scene]:
    """An image for the pretraining corpus (corpus.py): a source-look photo (smaller or off-centre on
    request), a sketch, or one rendition style, drawn by the same code as the domains."""
    if kind == "photo":
        look = replace(LOOKS["source"], scales=SMALL_SCALES) if small else LOOKS["source"]
        return _photo(label, rng, size, look, off_centre)
    if kind == "sketch":
        return _sketch(label, rng, size)
    if kind not in RENDITION_STYLES:
        raise ValueError(f"unknown kind {kind!r}; expected photo, sketch or one of {', '.join(RENDITION_STYLES)}")
    return _rendition(label, rng, size, kind)


def render(label: int, domain: str, rng: np.random.Generator, size: int = 96) -> tuple[Image.Image, Scene]:
    """One RGB image of class `label` in `domain`, all randomness from rng."""
    if domain in LOOKS:
        return _photo(label, rng, size, LOOKS[domain])
    styles = {"sketch": _sketch, "rendition": _rendition, "hard": _hard}
    if domain not in styles:
        raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")
    return styles[domain](label, rng, size)


# --- captions and files -------------------------------------------------------------------------------------

TEMPLATES = (
    "a photo of a {c}.", "a photo of a {colour} {c}.", "a {size} {c} on a {background} background.",
    "a {fill} {colour} {c} {position}.", "the {c}.", "a picture of a {size} {colour} {c}.",
    "a {colour} {c} {position}.", "a {c} {position}.", "a {fill} {c}.",
    "an image of a {c} on a {background} background.", "a photo of the {size} {c}.",
    "there is a {colour} {c} {position}.", "a {size} {fill} {c}.", "a {colour} {c} on a {background} background.",
    "a photo of a {c}, {size} and {colour}.", "a close-up photo of a {fill} {c}.",
)


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A varied training caption naming the class once, with some of the scene's attributes."""
    text = TEMPLATES[rng.integers(len(TEMPLATES))].format(c=CLASSES[scene.label], **vars(scene))
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def image_rng(seed: int, domain: str, label: int, index: int) -> np.random.Generator:
    """The generator of one image, from (seed, domain, label, index) only: the same in every process."""
    return np.random.default_rng(np.random.SeedSequence([seed, DOMAINS.index(domain), label, index]))


def write_domains(root: str | Path, domains: Sequence[str] = SHIFTED, per_class: int = 25, seed: int = 1,
                  size: int = 96) -> dict[str, Path]:
    """Writes root/<domain>/<class folder>/<domain>_<index:04d>.png and root/<domain>/classnames.txt, an
    ImageFolder tree (`open_dataset(root / domain, "folder")`); returns {domain: folder}. Same arguments,
    byte-identical files; images beyond per_class left by an earlier run are removed."""
    if unknown := set(domains) - set(DOMAINS):
        raise ValueError(f"unknown domain(s) {', '.join(sorted(unknown))}; expected some of {', '.join(DOMAINS)}")
    folders = {name: name.replace(" ", "_") for name in CLASSES}
    written = {}
    for domain in domains:
        written[domain] = top = Path(root) / domain
        top.mkdir(parents=True, exist_ok=True)
        (top / "classnames.txt").write_text("".join(sorted(f"{f} {n}\n" for n, f in folders.items())), "utf-8")
        for label, name in enumerate(CLASSES):
            (top / folders[name]).mkdir(exist_ok=True)
            files = [top / folders[name] / f"{domain}_{index:04d}.png" for index in range(per_class)]
            for stale in set((top / folders[name]).glob(f"{domain}_*.png")) - set(files):
                stale.unlink()
            for index, path in enumerate(files):
                render(label, domain, image_rng(seed, domain, label, index), size)[0].save(path)
    return written


EMPTY = "empty"  # the out-of-distribution folder: source-look scenes with no object of any class


def write_empty_scenes(root: str | Path, per_kind: int = 10, seed: int = 1, size: int = 96) -> Path:
    """Writes root/empty/<background kind>/empty_<index:04d>.png: the source domain's backgrounds, grain
    and blur with no object in them, the open-set scenario's out-of-distribution images (every test
    image shows one of the classes; these show none). Same arguments, byte-identical files."""
    look, top = LOOKS["source"], Path(root) / EMPTY
    for k, kind in enumerate(look.backgrounds):
        folder = top / kind
        folder.mkdir(parents=True, exist_ok=True)
        files = [folder / f"{EMPTY}_{index:04d}.png" for index in range(per_kind)]
        for stale in set(folder.glob(f"{EMPTY}_*.png")) - set(files):
            stale.unlink()
        for index, path in enumerate(files):
            rng = np.random.default_rng(np.random.SeedSequence([seed, len(DOMAINS), k, index]))  # apart from domains'
            img = _background(kind, rng, size) * rng.uniform(*look.exposure)
            _finish(img, rng, look.blur, look.noise).save(path)
    return top

