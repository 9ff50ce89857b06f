"""MaPLe: prompts in both towers, the vision ones coupled to the text ones. Text and prompted image
features equal a transcription of its official forward; released checkpoints (the whole model's
state_dict) load to the same predictions."""

import pytest
import torch
import torch.nn.functional as F

from mintclip.adapt import build_method
from mintclip.adapt.maple import MaPLePromptLearner
from mintclip.adapt.prompts import get_tokenizer, prompt_text
from mintclip.data import TestSet
from tests.helpers import CLASSES, frozen_clip, random_views

DEPTH = 3  # the tiny model has 3 blocks: prompts at the input and replaced before blocks 1 and 2


@pytest.fixture(scope="module")
def model():
    return frozen_clip()


@pytest.fixture(scope="module")
def learner(model):
    torch.manual_seed(0)
    learner = MaPLePromptLearner(model, CLASSES, n_ctx=2, ctx_init="a photo of a", depth=DEPTH)
    for p in learner.learned().values():  # as training leaves them: away from their start
        p.data.add_(torch.randn_like(p) * 0.05)
    return learner


def official_text_features(model, learner):
    """multimodal-prompt-learning trainers/maple.py + clip/model.py, transcribed: "a photo of a {name}."
    padded to 77 tokens, tokens 1..n_ctx replaced by ctx; before text block i >= 1 the hidden states at
    1..n_ctx replaced by compound_prompts_text[i - 1]; pooled at the EOT."""
    tokens = get_tokenizer()([prompt_text("a photo of a {}.", name) for name in CLASSES])
    embedding = model.text.token_embedding(tokens)
    n = len(learner.ctx)
    x = torch.cat([embedding[:, :1], learner.ctx.expand(len(CLASSES), -1, -1), embedding[:, 1 + n:]], dim=1)
    x = x + model.text.positional_embedding
    for i, block in enumerate(model.text.blocks):
        if 1 <= i <= len(learner.compound_prompts_text):
            deep = learner.compound_prompts_text[i - 1].expand(len(CLASSES), -1, -1)
            x = torch.cat([x[:, :1], deep, x[:, 1 + n:]], dim=1)
        x = block(x, causal=True)
    pooled = model.text.ln_final(x[torch.arange(len(CLASSES)), tokens.argmax(-1)]) @ model.text.text_projection
    return F.normalize(pooled, dim=-1)


def official_image_features(model, learner, images):
    """VisionTransformer_MaPLe: proj(ctx) appended after the patch tokens, then ln_pre; before block i >= 1
    the last n_ctx tokens replaced by compound_prompt_projections[i - 1](compound_prompts_text[i - 1])."""
    n = len(learner.ctx)
    x = torch.cat([model.visual.embed(images), learner.proj(learner.ctx).expand(len(images), -1, -1)], dim=1)
    x = model.visual.ln_pre(x)
    for i, block in enumerate(model.visual.blocks):
        if 1 <= i <= len(learner.compound_prompts_text):
            deep = learner.compound_prompt_projections[i - 1](learner.compound_prompts_text[i - 1])
            x = torch.cat([x[:, :-n], deep.expand(len(images), -1, -1)], dim=1)
        x = block(x)
    return F.normalize(model.visual.ln_post(x[:, 0]) @ model.visual.proj, dim=-1)


def test_text_and_image_features_equal_the_official_forward(model, learner):
    images = random_views(3)
    with torch.no_grad():
        assert torch.allclose(learner(), official_text_features(model, learner), atol=1e-5)
        # mintclip puts the prompt tokens after CLS, MaPLe after the patches: attention does not see the order
        assert torch.allclose(learner.image_features(images), official_image_features(model, learner, images),
                              atol=1e-5)
    assert len(learner.compound_prompt_projections) == DEPTH - 1


def test_the_coupling_layers_start_as_copies_of_one_layer(model):
    fresh = MaPLePromptLearner(model, CLASSES, depth=DEPTH)
    first, second = fresh.compound_prompt_projections
    assert torch.equal(first.weight, second.weight) and first.weight is not second.weight


def test_a_released_checkpoint_loads_to_the_same_predictions(model, learner, tmp_path):
    state = {f"prompt_learner.{k}": v.detach().clone() for k, v in learner.learned().items()}
    state["prompt_learner.token_prefix"] = torch.zeros(1000, 1, 64)
    state["image_encoder.conv1.weight"] = torch.zeros(1)  # MaPLe registers its whole model: CLIP's weights too
    path = tmp_path / "MultiModalPromptLearner" / "model.pth.tar-2"
    path.parent.mkdir()
    torch.save({"state_dict": state, "epoch": 2}, path)
    maple = build_method("maple", {"prompts": str(tmp_path), "precision": "fp32"})
    maple.check(model)
    maple.setup(model, TestSet.named("folder", CLASSES))
    views = random_views(1)
    with torch.no_grad():
        expected = model.logit_scale.exp() * official_image_features(model, learner, views[:1])[0] \
            @ official_text_features(model, learner).T
    assert torch.allclose(maple.predict(views), expected, atol=1e-4)


def test_it_refuses_to_run_untrained(model):
    with pytest.raises(ValueError, match="needs its trained file: --hp prompts=PATH"):
        build_method("maple").check(model)
