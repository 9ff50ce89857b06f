"""C-TPT: the dispersion term by hand, λ per set, the loss against TPT's, one step against a plain
transcription, AugMix everywhere, and building by name."""

import math

import torch
import torch.nn.functional as F

from mintclip.adapt import build_method
from mintclip.adapt.ctpt import CTPT, CTPTConfig, atfd
from mintclip.adapt.losses import marginal_entropy
from mintclip.adapt.tpt import TPT, TPTConfig
from mintclip.data import TestSet
from mintclip.reference.text import padded_class_features
from tests.helpers import CLASSES, frozen_clip, random_views


def make_ctpt(model, set_id="A", **overrides):
    method = CTPT(CTPTConfig(**{"selection": 0.25, **overrides}))
    method.setup(model, TestSet.named(set_id, CLASSES))
    return method


def test_atfd_by_hand():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # unit rows; centroid (0, 1/3)
    expected = (2 * math.sqrt(1 + 1 / 9) + 2 / 3) / 3
    torch.testing.assert_close(atfd(features), torch.tensor(expected))
    assert atfd(torch.ones(4, 3) / math.sqrt(3)) == 0  # one feature for every class: no dispersion


def test_lambda_auto_per_set_and_override():
    model = frozen_clip()
    assert make_ctpt(model, "A").lam() == 20.0
    assert make_ctpt(model, "I").lam() == 20.0
    assert make_ctpt(model, "Flower102").lam() == 50.0
    assert make_ctpt(model, "Flower102", lam=7.0).lam() == 7.0
    # a user's own folder is judged by its family, not by the length of its id ('folder:sketch')
    assert make_ctpt(model, "folder:sketch").lam() == 20.0 and make_ctpt(model, "csv").lam() == 20.0
    assert all(CTPT().augmix(TestSet.named(s, CLASSES)) is True for s in ("I", "A", "V", "R", "K", "Flower102", "DTD"))


def test_loss_is_tpt_minus_lambda_atfd():
    model = frozen_clip()
    ctpt, tpt = make_ctpt(model, "A"), TPT(TPTConfig(selection=0.25))
    tpt.setup(model, TestSet.named("A", CLASSES))
    text = ctpt.learner()
    logits = ctpt.logits(ctpt.encode_views(random_views())[:4], text)
    difference = ctpt.objective(logits, text) - tpt.objective(logits, text)
    torch.testing.assert_close(difference, -20.0 * atfd(text))
    assert atfd(text) > 0


def test_one_step_equals_a_plain_transcription():
    model, views = frozen_clip(), random_views()
    method = make_ctpt(model, "Flower102")
    chosen = method.adapt(method.encode_views(views))

    # custom_clip.py inference() + tpt_classification.py test_time_tuning(), run_type tpt_ctpt, λ = 50
    learner = make_ctpt(model, "Flower102").learner
    optimizer = torch.optim.AdamW([learner.ctx], lr=5e-3)
    text = padded_class_features(learner)
    with torch.no_grad():
        image = F.normalize(model.encode_image(views), dim=-1)
    logits = model.logit_scale.exp() * image @ text.t()
    entropies = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
    picked = entropies.argsort()[:4]
    dispersion = torch.linalg.norm(text - text.mean(0), dim=-1).mean()
    loss = marginal_entropy(logits[picked]) - 50.0 * dispersion
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert sorted(chosen.tolist()) == sorted(picked.tolist())
    torch.testing.assert_close(method.learner.ctx.detach(), learner.ctx.detach(), atol=1e-7, rtol=1e-6)

    tpt = TPT(TPTConfig(selection=0.25))
    tpt.setup(model, TestSet.named("Flower102", CLASSES))
    tpt.adapt(tpt.encode_views(views))
    assert not torch.allclose(tpt.learner.ctx, method.learner.ctx)  # the dispersion term moved it elsewhere


def test_build_by_name():
    method = build_method("ctpt", {"lam": "30", "steps": "2"})
    assert isinstance(method, CTPT) and isinstance(method, TPT) and method.name == "ctpt"
    assert method.config.steps == 2
    method.setup(frozen_clip(), TestSet.named("I", CLASSES))
    assert method.lam() == 30.0
    assert build_method("ctpt").config.lam is None
    logits = method.predict(random_views(n=8))
    assert logits.shape == (len(CLASSES),) and torch.isfinite(logits).all()


def test_a_batch_of_images_predicts_as_one_at_a_time():
    model = frozen_clip()
    views = torch.stack([random_views(n=8, seed=seed) for seed in (3, 4, 5)])
    for steps in (1, 2):
        prediction = make_ctpt(model, steps=steps, precision="fp32").predict_batch(views)
        logits = prediction.logits
        single = torch.stack([make_ctpt(model, steps=steps, precision="fp32").predict(v) for v in views])
        assert prediction.skipped_updates == [0, 0, 0]
        torch.testing.assert_close(logits, single, atol=5e-5, rtol=1e-5)
        assert torch.equal(logits.argmax(-1), single.argmax(-1))
