"""TPT: one step against an independent transcription of the reference algorithm, episodic resets, the
step-1 selection reused, CoOp start, the other orders of work, and building by name."""


import pytest
import torch

from mintclip.adapt import build_method
from mintclip.adapt.tpt import TPT, TPTConfig
from mintclip.model import Tokenizer
from mintclip.data import TestSet
from tests.helpers import CLASSES, frozen_clip, random_views


def make_tpt(model, set_id="I", **overrides):
    method = TPT(TPTConfig(**{"selection": 0.25, **overrides}))
    method.setup(model, TestSet.named(set_id, CLASSES))
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



# -- several images at once ----------------------------------------------------------------------------


def three_images(n=8):
    return torch.stack([random_views(n=n, seed=seed) for seed in (3, 4, 5)])  # (3, n, 3, H, W)


def one_at_a_time(method, views):
    """The yardstick: one image per call, which is `predict` itself, with its skipped-update count."""
    outputs = [method.predict_batch(image_views[None]) for image_views in views]
    return torch.cat([o.logits for o in outputs]), [o.skipped_updates[0] for o in outputs]


def assert_same_predictions(batched, single):
    # measured on the tiny CLIP: 1e-5 on logits up to ~15 (bmm against mm rounding in the gradients)
    torch.testing.assert_close(batched, single, atol=5e-5, rtol=1e-5)
    assert torch.equal(batched.argmax(-1), single.argmax(-1))


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("reuse", [True, False])
def test_a_batch_of_images_predicts_as_one_at_a_time(steps, reuse):
    model, views = frozen_clip(), three_images()
    method = make_tpt(model, steps=steps, reuse_step0_graph=reuse, precision="fp32")
    start = method.learner.ctx.detach().clone()
    prediction = method.predict_batch(views)
    logits, skipped = prediction.logits, prediction.skipped_updates
    assert logits.shape == (3, len(CLASSES)) and logits.dtype == torch.float32 and skipped == [0, 0, 0]
    torch.testing.assert_close(prediction.view0_features, method.encode_views(views[:, :1])[:, 0])
    assert torch.equal(method.learner.ctx.detach(), start)  # episodic: the batch leaves nothing behind
    single, single_skipped = one_at_a_time(make_tpt(model, steps=steps, reuse_step0_graph=reuse, precision="fp32"),
                                           views)
    assert_same_predictions(logits, single)
    assert single_skipped == skipped


def test_reference_order_and_a_single_image_run_predict_itself():
    model, views = frozen_clip(), three_images()
    for method, batch in [(make_tpt(model, reference_order=True, precision="fp32"), views),
                          (make_tpt(model, precision="fp32"), views[:1])]:
        calls = []
        predict = method.predict
        method.predict = lambda image_views: calls.append(1) or predict(image_views)  # spy
        prediction = method.predict_batch(batch)
        assert len(calls) == len(batch)
        logits, view0 = prediction.logits, prediction.view0_features  # view 0 gathered over the calls
        assert torch.equal(logits, one_at_a_time(method, batch)[0])
        torch.testing.assert_close(view0, method.encode_views(batch[:, :1])[:, 0], atol=1e-6, rtol=1e-5)


def test_one_adamw_over_the_rows_is_a_separate_adamw_per_row():
    """Why one optimiser serves the batch: a fresh AdamW per image with one shared step count is
    elementwise, so each row of the (B, n_ctx, W) context gets its own image's update, bit for bit."""
    generator = torch.Generator().manual_seed(0)
    start, grads = torch.randn(3, 4, 64, generator=generator), torch.randn(2, 3, 4, 64, generator=generator)
    together = start.clone().requires_grad_(True)
    optimizer = torch.optim.AdamW([together], lr=5e-3, weight_decay=0.01)
    rows = [row.clone().requires_grad_(True) for row in start]
    optimizers = [torch.optim.AdamW([row], lr=5e-3, weight_decay=0.01) for row in rows]
    for grad in grads:
        together.grad = grad.clone()
        optimizer.step()
        for row, row_optimizer, row_grad in zip(rows, optimizers, grad):
            row.grad = row_grad.clone()
            row_optimizer.step()
    assert torch.equal(together.detach(), torch.stack(rows).detach())


def test_the_cached_step1_graph_back_propagates_a_batch_as_one_image_each():
    """Why the step-1 graph serves a batch: its batched backward (one call, B cotangents) gives each
    image's own gradient, as B backward passes would, up to float rounding (measured on CPU: 3.4e-7 of
    the largest gradient, where the length buckets' gradients reach the shared prefix in another order)."""
    method = make_tpt(frozen_clip(), precision="fp32")
    with method.autocast():
        start, graph = method.learner.start_graph()
    cotangents = torch.randn(3, *graph.shape, generator=torch.Generator().manual_seed(0))
    batched, = torch.autograd.grad(graph, start, cotangents, retain_graph=True, is_grads_batched=True)
    one_by_one = torch.stack([torch.autograd.grad(graph, start, c, retain_graph=True)[0] for c in cotangents])
    torch.testing.assert_close(batched, one_by_one, atol=1e-6 * float(one_by_one.abs().max()), rtol=1e-6)


@pytest.mark.parametrize("reuse", [True, False])
def test_a_nan_in_one_images_loss_skips_exactly_its_updates(reuse):
    """Image 1 has a NaN view, and with every view selected its loss is NaN at both steps: those two
    steps are skipped, the other images adapt as they would alone, and the counts are one at a time's."""
    model, views = frozen_clip(), three_images()
    views[1, 5] = float("nan")  # not view 0, so the prediction itself stays finite
    settings = {"steps": 2, "selection": 1.0, "reuse_step0_graph": reuse, "precision": "fp32"}
    prediction = make_tpt(model, **settings).predict_batch(views)
    logits, skipped = prediction.logits, prediction.skipped_updates
    single, single_skipped = one_at_a_time(make_tpt(model, **settings), views)
    assert skipped == single_skipped == [0, 2, 0]
    assert_same_predictions(logits, single)
    unadapted = make_tpt(model, **{**settings, "steps": 0}).predict(views[1])
    torch.testing.assert_close(logits[1], unadapted, atol=0, rtol=0)  # the starting prompt, never stepped
