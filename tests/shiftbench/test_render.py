"""shiftbench's renderer: files that are a function of their arguments and open as ImageFolder trees, varied
captions, and domains that differ in the way each is meant to."""

import re
from collections import Counter
from functools import lru_cache

import numpy as np
import pytest

from mintclip.data import open_dataset
from mintclip.shiftbench.render import CLASSES, DOMAINS, SHIFTED, caption, image_rng, render, write_domains


@lru_cache
def draws(domain, count=40, seed=0):
    """(image as a float array, scene) for `count` renders of domain, going round the classes."""
    out = []
    for index in range(count):
        label = index % len(CLASSES)
        image, scene = render(label, domain, image_rng(seed, domain, label, index))
        out.append((np.asarray(image, float), scene))
    return out


def brightness_and_saturation(images):
    """Mean grey level, and mean spread between a pixel's strongest and weakest channel."""
    return (np.mean([px.mean() for px, _ in images]),
            np.mean([(px.max(2) - px.min(2)).mean() for px, _ in images]))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("shiftbench")
    write_domains(root, DOMAINS, per_class=2, seed=3)
    return root


def test_the_same_arguments_write_the_same_bytes_and_another_seed_does_not(tree, tmp_path):
    assert write_domains(tmp_path / "again", per_class=2, seed=3) == {d: tmp_path / "again" / d for d in SHIFTED}
    write_domains(tmp_path / "other", ["hard"], per_class=2, seed=4)
    files = sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*.png"))
    assert len(files) == len(SHIFTED) * len(CLASSES) * 2
    assert all((tree / f).read_bytes() == (tmp_path / "again" / f).read_bytes() for f in files)
    hard = [f for f in files if f.parts[0] == "hard"]
    assert all((tree / f).read_bytes() != (tmp_path / "other" / f).read_bytes() for f in hard)


def test_rewriting_with_fewer_images_leaves_exactly_per_class(tmp_path):
    write_domains(tmp_path, ["sketch"], per_class=2)
    write_domains(tmp_path, ["sketch"], per_class=1)
    assert [p.name for p in (tmp_path / "sketch" / "lightning_bolt").iterdir()] == ["sketch_0000.png"]
    with pytest.raises(ValueError, match="unknown domain"):
        write_domains(tmp_path, ["photo"])


@pytest.mark.parametrize("domain", DOMAINS)
def test_render_is_a_function_of_the_generator(domain):
    first, scene = render(7, domain, np.random.default_rng(11))
    again, same_scene = render(7, domain, np.random.default_rng(11))
    other, _ = render(7, domain, np.random.default_rng(12))
    assert first.mode == "RGB" and first.size == (96, 96) and scene == same_scene and scene.label == 7
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(other))


def test_unknown_domains_are_refused():
    with pytest.raises(ValueError, match="unknown domain 'photo'"):
        render(0, "photo", np.random.default_rng(0))


def test_each_image_has_its_own_generator():
    def value(*args):
        return image_rng(*args).random()

    assert value(1, "hard", 3, 4) == value(1, "hard", 3, 4)
    assert len({value(1, "hard", 3, 4), value(2, "hard", 3, 4), value(1, "sketch", 3, 4), value(1, "hard", 5, 4),
                value(1, "hard", 3, 5)}) == 5


@pytest.mark.parametrize("domain", DOMAINS)
def test_every_domain_opens_as_an_image_folder_with_every_class(tree, domain):
    dataset = open_dataset(tree / domain, "folder")
    assert dataset.classnames == sorted(CLASSES, key=lambda name: name.replace(" ", "_"))  # sorted folders
    assert "lightning bolt" in dataset.classnames  # named by classnames.txt, not by its folder
    assert Counter(dataset.classnames[label] for _, label in dataset.samples) == {name: 2 for name in CLASSES}
    image, label, path = dataset[0]
    assert image.size == (96, 96) and path.endswith(f"{domain}_0000.png")


def test_captions_name_the_class_once_and_vary():
    rng = np.random.default_rng(0)
    captions = []
    for _, scene in draws("source") * 5:
        text = caption(scene, rng)
        assert text.count(CLASSES[scene.label]) == 1 and text.endswith(".")
        assert not re.search(r"\ba [aeiou]", text), text  # "an orange", "an arrow"
        captions.append(text)
    assert len(set(captions)) > 150
    assert any(re.fullmatch(rf"an? photo of an? ({'|'.join(CLASSES)})\.", text) for text in captions)


def test_sketches_are_dark_strokes_on_near_white_paper():
    sketches = draws("sketch")
    brightness, saturation = brightness_and_saturation(sketches)
    assert brightness > 210 and saturation < 10
    assert all(px.min() < 100 for px, _ in sketches)  # every one has pencil lines
    assert brightness_and_saturation(draws("source"))[1] > 50  # while photos are colourful


def test_hard_objects_are_smaller_and_off_centre():
    hard, source = draws("hard"), draws("source")
    assert all(scene.size != "large" and scene.position != "in the centre" for _, scene in hard)
    assert sum(scene.size == "small" for _, scene in hard) > 2 * sum(scene.size == "small" for _, scene in source)
    assert sum(scene.size == "large" for _, scene in source) > len(source) / 4


def test_resampled_photos_are_darker_and_duller_than_the_source():
    brightness, saturation = brightness_and_saturation(draws("resampled"))
    source_brightness, source_saturation = brightness_and_saturation(draws("source"))
    assert brightness < source_brightness - 5 and saturation < 0.8 * source_saturation


def test_renditions_mix_their_styles():
    assert {scene.fill for _, scene in draws("rendition")} == {"cartoon", "painting", "neon", "pastel", "inverted"}
