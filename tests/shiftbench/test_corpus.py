"""The pretraining corpus of shiftbench's CLIP: mixed like web data in the stated shares, every image a
function of its arguments, alterations that do what their captions say, and nothing of the held-out
styles."""

from collections import Counter
from functools import lru_cache

import numpy as np
import pytest

from mintclip.shiftbench.corpus import (CLASS_ONLY, EFFECT_CAPTIONS, EFFECTS, STYLE_CAPTIONS, STYLES, CorpusMix,
                                        corpus_caption, corpus_image)
from mintclip.shiftbench.render import CLASSES, image_rng, render

MIX = CorpusMix()


@lru_cache
def corpus(count: int = 2000):
    """(image as a float array, item) for the first `count` images, going round the classes."""
    return [(np.asarray(image, float), item) for image, item in
            (corpus_image(0, index % len(CLASSES), index, 64, MIX) for index in range(count))]


def test_an_image_is_a_function_of_seed_label_and_index():
    image, item = corpus_image(0, 3, 5, 64, MIX)
    again, same = corpus_image(0, 3, 5, 64, MIX)
    assert image.tobytes() == again.tobytes() and item == same
    assert corpus_image(1, 3, 5, 64, MIX)[0].tobytes() != image.tobytes()
    source, _ = render(3, "source", image_rng(0, "source", 3, 5), 64)
    assert source.tobytes() != image.tobytes()  # its own generator, apart from the domains'


def test_the_mix_has_the_stated_shares_and_no_held_out_style():
    items = [item for _, item in corpus()]
    kinds = Counter(item.kind for item in items)
    assert set(kinds) == {"photo", *STYLES} and not {"neon", "inverted"} & set(kinds)
    assert abs(sum(kinds[s] for s in STYLES) / len(items) - MIX.styled_share) < 0.04  # 4 sigma
    photos = [item for item in items if item.kind == "photo"]
    assert abs(sum(item.effect is not None for item in photos) / len(photos) - MIX.effect_share) < 0.05
    assert {item.effect for item in photos} == {None, *EFFECTS}


def mean_of(effect, statistic):
    return np.mean([statistic(px) for px, item in corpus() if item.kind == "photo" and item.effect == effect])


def grey(px):
    return px.mean()


def saturation(px):
    return (px.max(2) - px.min(2)).mean()


def sharpness(px):
    return np.abs(np.diff(px, axis=1)).mean()


def test_alterations_do_what_their_captions_say():
    assert mean_of("dark", grey) < 0.7 * mean_of(None, grey) < mean_of("bright", grey)
    assert mean_of("black and white", saturation) == 0
    assert mean_of("blurry", sharpness) < 0.6 * mean_of(None, sharpness)
    assert all(item.scene.size == "small" for _, item in corpus() if item.effect == "small")


@pytest.mark.parametrize("kind", STYLES)
def test_styled_captions_name_the_style_at_the_stated_rate_and_never_say_photo(kind):
    rng = np.random.default_rng(0)
    item = next(item for _, item in corpus() if item.kind == kind)
    captions = [corpus_caption(item, MIX, rng) for _ in range(400)]
    named = {t.format(c=CLASSES[item.scene.label], colour=item.scene.colour) for t in STYLE_CAPTIONS[kind]}
    assert abs(sum(c in named for c in captions) / len(captions) - MIX.named_share) < 0.06
    unnamed = {t.format(c=CLASSES[item.scene.label]) for t in CLASS_ONLY}
    assert all(c in named | unnamed for c in captions) and not any("photo" in c for c in captions)


def test_an_altered_photo_is_mostly_captioned_with_its_alteration():
    rng = np.random.default_rng(0)
    item = next(item for _, item in corpus() if item.effect == "dark")
    captions = [corpus_caption(item, MIX, rng) for _ in range(400)]
    named = {t.format(c=CLASSES[item.scene.label]) for t in EFFECT_CAPTIONS["dark"]}
    assert abs(sum(c in named for c in captions) / len(captions) - MIX.named_share) < 0.06
    assert all(CLASSES[item.scene.label] in c for c in captions)
