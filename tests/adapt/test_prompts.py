"""The learnable class prompt: exact savings, reset, and the ways to start it."""

import torch

from mintclip.adapt.losses import marginal_entropy, select_confident_views
from mintclip.adapt.prompts import TextPromptLearner, encode_class_prompts, load_coop_context
from mintclip.reference.text import padded_class_features
from tests.helpers import tiny_clip


# Kept here rather than tests.helpers.CLASSES (the same less tabby cat): these tests were written
# on these four.
CLASSES = ["goldfish", "Mexican hairless dog (xoloitzcuintli)", "great white shark", "jay"]


def test_truncated_shared_prefix_equals_the_padded_77_token_path():
    model = tiny_clip().double().requires_grad_(False)
    learner = TextPromptLearner(model, CLASSES)
    assert learner.n_ctx == 4 and learner.length < 77
    torch.testing.assert_close(learner(), padded_class_features(learner), atol=1e-12, rtol=1e-10)
    fast_grad, = torch.autograd.grad(learner().sum(), learner.ctx)
    padded_grad, = torch.autograd.grad(padded_class_features(learner).sum(), learner.ctx)
    torch.testing.assert_close(fast_grad, padded_grad, atol=1e-10, rtol=1e-8)


def test_a_photo_of_a_context_equals_the_hard_prompt():
    model = tiny_clip().requires_grad_(False)
    learner = TextPromptLearner(model, CLASSES, ctx_init="a photo of a")
    torch.testing.assert_close(learner(), encode_class_prompts(model, CLASSES, ["a photo of a {}."]),
                               atol=1e-5, rtol=1e-4)


def test_reset_restores_the_start_and_coop_vectors_load(tmp_path):
    model = tiny_clip().requires_grad_(False)
    ctx = torch.randn(4, 64)
    torch.save({"state_dict": {"ctx": ctx, "token_prefix": torch.zeros(1)}, "epoch": 50}, tmp_path / "coop.pth")
    learner = TextPromptLearner(model, CLASSES, ctx_vectors=load_coop_context(tmp_path / "coop.pth"))
    assert torch.equal(learner.ctx.detach(), ctx)
    with torch.no_grad():
        learner.ctx.add_(1.0)
    learner.reset()
    assert torch.equal(learner.ctx.detach(), ctx)
    random_start = TextPromptLearner(model, CLASSES, ctx_init=None, n_ctx=4)
    assert random_start.ctx.std() < 0.05


def test_confident_views_and_marginal_entropy():
    logits = torch.zeros(64, 10)
    logits[7, 3] = logits[20, 5] = 30.0  # two confident views
    assert select_confident_views(logits, 0.1).tolist()[:2] in ([7, 20], [20, 7])
    assert len(select_confident_views(logits, 0.1)) == 6
    uniform = marginal_entropy(torch.zeros(6, 10))
    torch.testing.assert_close(uniform, torch.log(torch.tensor(10.0)))
    confident_same = marginal_entropy(torch.tensor([[30.0, 0.0], [30.0, 0.0]]))
    assert confident_same < 1e-6
