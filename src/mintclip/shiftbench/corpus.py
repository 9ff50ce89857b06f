"""shiftbench's pretraining corpus: images and captions mixed as on the web, for the tiny CLIP.

Real CLIP's web pretraining saw sketches, cartoons and paintings captioned as such, and dark, blurry or
small photos described so; that is why the words before a class name matter to it, and why a prompt
that does not fit the test domain can be tuned. The corpus copies that mix (docs/datasets.md §
shiftbench): two thirds source-look photos, a share of them altered (dark, bright, blurry, low
resolution, black and white, small, off-centre) and mostly captioned with the alteration; one third
sketches, cartoons, paintings and pastels, mostly captioned with their style. Never in the corpus, so
genuinely unseen: rendition's neon and inverted palettes, and the hard and resampled generators.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from .render import CLASSES, REF, Scene, caption, render_pretraining

STYLES = ("sketch", "cartoon", "painting", "pastel")  # the styled third, equally often
EFFECTS = ("dark", "bright", "blurry", "low resolution", "black and white", "small", "off-centre")

PLAIN_TEMPLATES = ("a photo of a {c}.", "a {c}.", "the {c}.", "a picture of a {c}.", "an image of a {c}.")
CLASS_ONLY = ("a {c}.", "the {c}.", "a picture of a {c}.", "an image of a {c}.")  # a styled image, style unsaid
STYLE_CAPTIONS = {
    "sketch": ("a sketch of a {c}.", "a pencil sketch of a {c}.", "a drawing of a {c}.", "a pencil drawing of the {c}.",
               "a black and white sketch of a {c}.", "a doodle of a {c}.", "a hand-drawn {c}.", "a sketch of the {c}."),
    "cartoon": ("a cartoon {c}.", "a cartoon of a {c}.", "a cartoon drawing of a {colour} {c}.", "a comic {c}.",
                "an illustration of a {c}.", "clip art of a {c}.", "the cartoon {c}."),
    "painting": ("a painting of a {c}.", "an oil painting of a {c}.", "a painting of the {c}.", "art of a {c}.",
                 "an abstract painting of a {c}.", "a colourful painting of a {c}.", "a painted {c}."),
    "pastel": ("a pastel drawing of a {c}.", "a soft pastel illustration of a {c}.", "a pastel {colour} {c}.",
               "a drawing of a {c} in pastel colours.", "a light colourful drawing of a {c}."),
}
EFFECT_CAPTIONS = {
    "dark": ("a dark photo of a {c}.", "a dark photo of the {c}.", "a dim photo of a {c}.", "a {c} in the dark."),
    "bright": ("a bright photo of a {c}.", "a bright photo of the {c}.", "an overexposed photo of a {c}."),
    "blurry": ("a blurry photo of a {c}.", "a blurry photo of the {c}.", "an out of focus photo of a {c}."),
    "low resolution": ("a low resolution photo of a {c}.", "a pixelated photo of the {c}.",
                       "a low quality photo of a {c}."),
    "black and white": ("a black and white photo of a {c}.", "a black and white photo of the {c}.",
                        "a grayscale photo of a {c}."),
    "small": ("a photo of a small {c}.", "a photo of the small {c}.", "a small {colour} {c} far away."),
    "off-centre": ("an off-centre photo of a {c}.", "a {c} at the edge of the picture.", "a {c} {position}."),
}


@dataclass
class CorpusMix:
    styled_share: float = 1 / 3  # images drawn in one of STYLES
    effect_share: float = 0.4  # photos altered by one of EFFECTS
    named_share: float = 0.8  # styled or altered images whose caption names the style or the alteration
    plain_share: float = 0.5  # other photos captioned by class only; the rest also describe the scene


@dataclass
class CorpusItem:
    """What a caption may say of one corpus image."""

    scene: Scene
    kind: str  # "photo" or one of STYLES
    effect: str | None  # one of EFFECTS, for photos


def corpus_rng(seed: int, label: int, index: int) -> np.random.Generator:
    """One image's generator, apart from every domain's (render.image_rng keys them 0-4)."""
    return np.random.default_rng(np.random.SeedSequence([seed, 100, label, index]))


def _alter(image: Image.Image, effect: str | None, rng: np.random.Generator) -> Image.Image:
    scale = image.width / REF
    if effect == "dark":
        return ImageEnhance.Brightness(image).enhance(rng.uniform(0.3, 0.55))
    if effect == "bright":
        return ImageEnhance.Brightness(image).enhance(rng.uniform(1.35, 1.7))
    if effect == "blurry":
        return image.filter(ImageFilter.GaussianBlur(rng.uniform(1.5, 3.0) * scale))
    if effect == "low resolution":
        small = max(6, round(image.width / rng.uniform(4, 7)))
        return image.resize((small, small), Image.BOX).resize(image.size, Image.NEAREST)
    if effect == "black and white":
        return image.convert("L").convert("RGB")
    return image  # small and off-centre are drawn so; no alteration


def corpus_image(seed: int, label: int, index: int, size: int, mix: CorpusMix) -> tuple[Image.Image, CorpusItem]:
    """Corpus image `index` of class `label`: a pure function of its arguments."""
    rng = corpus_rng(seed, label, index)
    if rng.random() < mix.styled_share:
        kind, effect = STYLES[rng.integers(len(STYLES))], None
    else:
        kind = "photo"
        effect = EFFECTS[rng.integers(len(EFFECTS))] if rng.random() < mix.effect_share else None
    image, scene = render_pretraining(label, kind, rng, size, small=effect == "small",
                                      off_centre=effect == "off-centre")
    return _alter(image, effect, rng), CorpusItem(scene, kind, effect)


def corpus_caption(item: CorpusItem, mix: CorpusMix, rng: np.random.Generator) -> str:
    """A fresh caption each time an image is drawn: the style or alteration named with probability
    named_share; unaltered photos plain (class only) half the time, else with scene attributes."""
    if item.kind != "photo":
        pool = STYLE_CAPTIONS[item.kind] if rng.random() < mix.named_share else CLASS_ONLY
    elif item.effect is not None:
        pool = EFFECT_CAPTIONS[item.effect] if rng.random() < mix.named_share else PLAIN_TEMPLATES
    elif rng.random() < mix.plain_share:
        pool = PLAIN_TEMPLATES
    else:
        return caption(item.scene, rng)
    return pool[rng.integers(len(pool))].format(c=CLASSES[item.scene.label], colour=item.scene.colour,
                                                position=item.scene.position)
