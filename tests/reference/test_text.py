"""The references' 77-token text pass gives the numbers of the learner's truncated, shared-prefix one,
for one context and for K contexts at once (DynaPrompt's buffer)."""

import torch

from mintclip.adapt.prompts import TextPromptLearner
from mintclip.reference.text import padded_class_features
from tests.helpers import tiny_clip


# Kept here rather than tests.helpers.CLASSES: ImageNet's first four classes, as these tests were written.
CLASSES = ["tench", "goldfish", "great white shark", "hammerhead shark"]


def test_k_contexts_padded_equal_k_contexts_truncated():
    learner = TextPromptLearner(tiny_clip(), CLASSES, ctx_init="a photo of a")
    contexts = learner.ctx_start + 0.1 * torch.randn(3, *learner.ctx_start.shape, generator=torch.Generator().manual_seed(0))
    padded = padded_class_features(learner, contexts)
    assert padded.shape == (3, len(CLASSES), learner.model.config.embed_dim)
    torch.testing.assert_close(padded, learner(contexts), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(padded[1], padded_class_features(learner, contexts[1]), atol=1e-6, rtol=1e-5)
