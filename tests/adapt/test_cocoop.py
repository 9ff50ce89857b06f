"""CoCoOp: each image's context is CoOp's shifted by a meta-net of its feature; the fast text pass equals
CoCoOp's own per-image loop, released checkpoints load, and it refuses to run untrained."""

import pytest
import torch
import torch.nn.functional as F

from mintclip.adapt import build_method
from mintclip.adapt.cocoop import CoCoOpPromptLearner
from mintclip.adapt.coop import save_prompts
from mintclip.adapt.prompts import get_tokenizer, prompt_text
from mintclip.data import TestSet
from tests.helpers import CLASSES, frozen_clip, random_views


@pytest.fixture(scope="module")
def model():
    return frozen_clip()


def official_cocoop_logits(model, classnames, ctx, meta_net, image_features):
    """KaiyangZhou/CoOp trainers/cocoop.py, transcribed: bias = meta_net(f) per image; for each image its
    prompts [SOS][ctx + bias][class tokens][.][EOT] padded to 77 tokens go through the text encoder on
    their own; logits_i = s * f_i @ T_i.T."""
    tokens = get_tokenizer()([prompt_text(" ".join(["X"] * len(ctx)) + " {}.", name) for name in classnames])
    embedding = model.text.token_embedding(tokens)
    prefix, suffix = embedding[:, :1], embedding[:, 1 + len(ctx):]
    scale = model.logit_scale.exp()
    rows = []
    for f in image_features:
        shifted = (ctx + meta_net(f)).expand(len(classnames), -1, -1)
        prompts = torch.cat([prefix, shifted, suffix], dim=1)  # (C, 77, W)
        text = F.normalize(model.text.encode_embeddings(prompts, tokens.argmax(-1), length=77), dim=-1)
        rows.append(scale * f @ text.T)
    return torch.stack(rows)


def trained_looking(model, seed=0):
    """A learner with a non-trivial context and meta-net, as training leaves them."""
    torch.manual_seed(seed)
    learner = CoCoOpPromptLearner(model, CLASSES, ctx_vectors=torch.randn(4, model.config.text.width) * 0.02)
    for p in learner.meta_net.parameters():
        p.data.normal_(0, 0.5)
    return learner


def test_the_batched_text_pass_equals_cocoops_per_image_loop(model):
    learner = trained_looking(model)
    features = F.normalize(torch.randn(3, model.config.embed_dim), dim=-1)
    with torch.no_grad():
        expected = official_cocoop_logits(model, CLASSES, learner.ctx, learner.meta_net, features)
        assert torch.allclose(learner.logits(features, model.logit_scale.exp()), expected, atol=1e-4)
    assert set(learner.learned()) == {"ctx", "meta_net.linear1.weight", "meta_net.linear1.bias",
                                      "meta_net.linear2.weight", "meta_net.linear2.bias"}


def test_a_released_checkpoint_predicts_as_the_official_forward(model, tmp_path):
    learner = trained_looking(model, seed=1)
    state = {name: p.detach().clone() for name, p in learner.learned().items()}
    path = tmp_path / "prompt_learner" / "model.pth.tar-10"
    path.parent.mkdir()
    torch.save({"state_dict": {**state, "token_prefix": torch.zeros(1000, 1, 64),
                               "token_suffix": torch.zeros(1000, 72, 64)}, "epoch": 10}, path)
    cocoop = build_method("cocoop", {"prompts": str(tmp_path), "precision": "fp32"})
    cocoop.setup(model, TestSet.named("folder", CLASSES))
    views = random_views(1)
    features = F.normalize(model.encode_image(views), dim=-1)
    with torch.no_grad():
        expected = official_cocoop_logits(model, CLASSES, state["ctx"], learner.meta_net, features)[0]
    assert torch.allclose(cocoop.predict(views), expected, atol=1e-4)


def test_it_refuses_to_run_untrained_or_on_a_coop_file(model, tmp_path):
    with pytest.raises(ValueError, match="needs its trained file"):
        build_method("cocoop").check(model)
    save_prompts(tmp_path / "coop.safetensors", {"ctx": torch.zeros(4, 64)}, {"method": "coop"})
    cocoop = build_method("cocoop", {"prompts": str(tmp_path / "coop.safetensors")})
    with pytest.raises(ValueError, match="not a cocoop file"):
        cocoop.setup(model, TestSet.named("folder", CLASSES))
