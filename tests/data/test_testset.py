"""A test set is a value: its family decides the per-set defaults, whatever its id is spelled like."""

import pytest

from mintclip.data import TestSet, family_of


@pytest.mark.parametrize("set_id, family", [
    ("I", "imagenet"), ("A", "imagenet-shift"), ("V", "imagenet-shift"), ("R", "imagenet-shift"),
    ("K", "imagenet-shift"), ("DTD", "cross-domain"), ("Aircraft", "cross-domain"), ("EuroSAT", "cross-domain"),
    ("folder", "user"), ("folder:A", "user"), ("folder:sketch", "user"), ("csv", "user"),
])
def test_every_set_id_belongs_to_one_family(set_id, family):
    assert family_of(set_id) == family


def test_a_test_set_carries_its_templates_and_augmix_default():
    dtd = TestSet.named("DTD", ["banded", "zigzagged"])
    assert dtd.family == "cross-domain" and dtd.augmix and dtd.templates == ["{} texture."]
    sketch = TestSet.named("K", ["tench"])
    assert not sketch.augmix and len(sketch.templates) == 80  # TDA's choice for ImageNet-Sketch
    mine = TestSet.named("folder:photos", ["cat", "dog"])
    assert (mine.family, mine.augmix, mine.templates) == ("user", False, ["a photo of a {}."])
