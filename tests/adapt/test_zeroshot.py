"""Zero-shot CLIP and the template ensemble: each equals its definition computed by hand."""

import pytest
import torch
import torch.nn.functional as F

from mintclip.adapt import build_method
from mintclip.adapt.prompts import get_tokenizer
from mintclip.data import templates
from mintclip.data import TestSet
from tests.helpers import tiny_clip


# Kept here rather than tests.helpers.CLASSES: great_white_shark's underscore is what the method
# must turn into a space before it fills a template (text_features below does the same).
CLASSES = ["goldfish", "great_white_shark", "jay", "tabby cat"]


def text_features(model, template):
    """One template's normalised class embeddings (C, D), straight from the text encoder."""
    tokens = get_tokenizer()([template.format(name.replace("_", " ")) for name in CLASSES])
    with torch.no_grad():
        return F.normalize(model.encode_text(tokens), dim=-1)


def image_features(model, views):
    with torch.no_grad():
        return F.normalize(model.encode_image(views), dim=-1)


def test_zeroshot_is_scaled_cosine_of_view_0_with_a_photo_of_a(images):
    model = tiny_clip()
    method = build_method("zeroshot")
    assert method.n_views == 1 and method.config.templates == "single"
    method.setup(model, TestSet.named("I", CLASSES))
    logits = method.predict(images)  # only view 0 counts
    text = text_features(model, "a photo of a {}.")  # (C, D)
    expected = model.logit_scale.exp() * image_features(model, images[:1])[0] @ text.T
    assert logits.shape == (len(CLASSES),) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_ensemble_averages_normalised_template_features(images, monkeypatch):
    two = ["a photo of a {}.", "art of the {}."]
    monkeypatch.setitem(templates.PER_SET, "Toy", two)
    model = tiny_clip()
    method = build_method("ensemble", {"templates": "per_set"})
    method.setup(model, TestSet.named("Toy", CLASSES))
    average = F.normalize(text_features(model, two[0]) + text_features(model, two[1]), dim=-1)
    expected = model.logit_scale.exp() * image_features(model, images[:1])[0] @ average.T
    torch.testing.assert_close(method.predict(images[:1]), expected, atol=1e-5, rtol=1e-5)


def test_ensemble_defaults_to_clips_80_templates_and_per_set_follows_tda(images):
    assert build_method("ensemble").config.templates == "openai_80"
    model = tiny_clip()
    method = build_method("ensemble", {"templates": "per_set"})
    method.setup(model, TestSet.named("DTD", CLASSES))  # TDA: "{} texture."
    torch.testing.assert_close(method.text, text_features(model, "{} texture."), atol=1e-5, rtol=1e-5)


def test_unknown_template_set_is_one_clear_error_before_any_image():
    with pytest.raises(ValueError, match="templates='imagenet': expected one of single, simple_7, openai_80, per_set"):
        build_method("zeroshot", {"templates": "imagenet"})
