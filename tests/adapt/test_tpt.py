"""TPT: one step against an independent transcription of the reference algorithm, episodic resets, the
step-1 selection reused, CoOp start, the other orders of work, and building by name."""

import math

import pytest
import torch

from mintclip.adapt import build_method
from mintclip.adapt.tpt import TPT, TPTConfig
from mintclip.model import Tokenizer
from tests.conftest import IMAGE_SIZE, tiny_clip

CLASSES = ["goldfish", "Mexican hairless dog (xoloitzcuintli)", "great white shark", "jay", "tabby cat"]


def frozen_clip():
    model = tiny_clip().requires_grad_(False)
    model.logit_scale.fill_(math.log(100.0))  # a trained CLIP's temperature: sharp, realistic entropies
    return model


def random_views(n=16, seed=3):
    return torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


def make_tpt(model, set_id="I", **overrides):
    method = TPT(TPTConfig(**{"selection": 0.25, **overrides}))
    method.setup(model, CLASSES, set_id)
    return method


def reference_tpt_step(model, views, selection=0.25, lr=5e-3):
    """TPT's tpt_classification.py + custom_clip.py, written out plainly: 77-token padded prompts from
    token embeddings, image features recomputed per forward, marginal entropy from mean probabilities."""
    tokens = Tokenizer()([f"a photo of a {name}." for name in CLASSES])
    embeddings = model.text.token_embedding(tokens)
    ctx = embeddings[0, 1:5].clone().requires_grad_(True)

    def clip_logits(images):
        prompts = torch.cat([embeddings[:, :1], ctx.expand(len(CLASSES), -1, -1), embeddings[:, 5:]], dim=1)
        text = model.text.encode_embeddings(prompts, tokens.argmax(-1), length=77)
        text = text / text.norm(dim=-1, keepdim=True)
        with torch.no_grad():
            image = model.encode_image(images)
            image = image / image.norm(dim=-1, keepdim=True)
        return model.logit_scale.exp() * image @ text.t()

    optimizer = torch.optim.AdamW([ctx], lr=lr)  # weight decay: PyTorch's default 0.01
    logits = clip_logits(views)
    per_view_entropy = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
    chosen = per_view_entropy.argsort()[:int(len(views) * selection)]
    mean_probs = logits[chosen].softmax(1).mean(0)
    loss = -(mean_probs * mean_probs.log()).sum()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        final = clip_logits(views[:1])[0]
    return ctx.detach(), chosen, final


def test_one_step_equals_the_reference_algorithm():
    model, views = frozen_clip(), random_views()
    ref_ctx, ref_chosen, ref_logits = reference_tpt_step(model, views)
    for reuse in (True, False):
        method = make_tpt(model, reuse_step0_graph=reuse)
        start = method.learner.ctx.detach().clone()
        chosen = method.adapt(method.encode_views(views))
        assert len(chosen) == 4 and sorted(chosen.tolist()) == sorted(ref_chosen.tolist())
        assert (method.learner.ctx - start).abs().max() > 1e-3  # it moved (about lr per coordinate)
        # measured: context 2e-9, logits 1e-5 (fp32 on CPU, logits up to ~20)
        torch.testing.assert_close(method.learner.ctx.detach(), ref_ctx, atol=1e-7, rtol=1e-6)
        logits = method.predict(views)
        assert logits.shape == (len(CLASSES),) and logits.dtype == torch.float32
        torch.testing.assert_close(logits, ref_logits, atol=5e-5, rtol=1e-5)


def test_episodic_prediction_ignores_earlier_images_and_leaves_the_start():
    model = frozen_clip()
    x, y = random_views(seed=5), random_views(seed=6)
    fresh = make_tpt(model).predict(x)
    method = make_tpt(model)
    start = method.learner.ctx.detach().clone()
    method.predict(y)
    assert torch.equal(method.learner.ctx.detach(), start)
    assert torch.equal(method.predict(x), fresh)
    assert torch.equal(method.learner.ctx.detach(), start)


@pytest.mark.parametrize("order, tolerance", [({"reuse_step0_graph": False}, 1e-6), ({"reference_order": True}, 5e-5)])
def test_other_orders_of_work_give_the_same_predictions(order, tolerance):
    """The cached step-1 text graph against a fresh forward per image, and the whole fast path against
    the reference's order (77-token text, views re-encoded every step)."""
    model = frozen_clip()
    fast, other = make_tpt(model, steps=2), make_tpt(model, steps=2, **order)
    for seed in (7, 8, 9):
        views = random_views(seed=seed)
        torch.testing.assert_close(fast.predict(views), other.predict(views), atol=tolerance, rtol=1e-5)


def test_later_steps_reuse_the_step1_selection():
    model, views = frozen_clip(), random_views()
    method = make_tpt(model, steps=3)
    calls = []
    select = method.select
    method.select = lambda logits: calls.append(1) or select(logits)  # spy
    image = method.encode_views(views)
    chosen = method.adapt(image)
    assert len(calls) == 1

    # the same three steps by hand, selecting once
    hand = make_tpt(model, steps=3)
    hand.reset()
    optimizer = torch.optim.AdamW([hand.learner.ctx], lr=5e-3, weight_decay=0.01)
    picked = None
    for _ in range(3):
        logits = hand.logits(image, hand.learner())
        picked = hand.select(logits.detach()) if picked is None else picked
        optimizer.zero_grad()
        hand.objective(logits[picked], None).backward()
        optimizer.step()
    assert torch.equal(chosen, picked)
    torch.testing.assert_close(method.learner.ctx, hand.learner.ctx, atol=1e-7, rtol=1e-6)


def test_fewer_views_than_the_fraction_needs_still_adapts_on_one():
    method = make_tpt(frozen_clip(), selection=0.1)
    assert len(method.adapt(method.encode_views(random_views(n=4)))) == 1
    assert TPT.n_views == 64


def test_a_coop_checkpoint_starts_the_context(tmp_path):
    ctx = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    torch.save({"state_dict": {"ctx": ctx}, "epoch": 50}, tmp_path / "model.pth.tar")
    method = make_tpt(frozen_clip(), coop=str(tmp_path / "model.pth.tar"))
    assert torch.equal(method.learner.ctx.detach(), ctx)
    method.adapt(method.encode_views(random_views()))
    assert not torch.equal(method.learner.ctx.detach(), ctx)
    method.reset()
    assert torch.equal(method.learner.ctx.detach(), ctx)


def test_random_start_and_steps_zero_is_the_prompt_unchanged():
    model, views = frozen_clip(), random_views()
    torch.manual_seed(0)
    method = make_tpt(model, ctx_init="none", steps=0)
    assert method.learner.ctx.std() < 0.05
    with torch.no_grad():
        expected = method.logits(method.encode_views(views)[:1], method.learner())[0]
    torch.testing.assert_close(method.predict(views), expected, atol=0, rtol=0)


def test_build_by_name_parses_string_overrides():
    method = build_method("tpt", {"steps": "2", "lr": "0.01", "coop": "none", "n_views": "8"})
    assert isinstance(method, TPT) and method.name == "tpt" and not method.online
    assert method.config.steps == 2 and method.config.lr == 0.01 and method.config.coop is None
    assert method.views_per_image == 8 and build_method("tpt").views_per_image == 64
    assert method.config.weight_decay == 0.01 and method.config.selection == 0.1
    assert method.config.ctx_init == "a photo of a" and method.config.n_ctx == 4
    assert method.augmix("I") is None  # the dataset's reference default: AugMix for cross-domain sets only

