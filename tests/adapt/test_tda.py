"""TDA: the caches checked item by item against hand-worked streams, the logits against the formula, and
the method through setup, predict, reset and resume on a tiny model."""

import math
import random

import pytest
import torch
import torch.nn.functional as F

from mintclip.adapt import build_method
from mintclip.adapt.losses import entropy, marginal_entropy
from mintclip.adapt.tda import ClassSlots, Observation
from mintclip.data import TestSet
from tests.helpers import IMAGE_SIZE, random_views, tiny_clip


# Kept here rather than tests.helpers.CLASSES (five, with a long name): these tests' numbers were
# computed on these four names.
CLASSES = ["goldfish", "great white shark", "jay", "tabby cat"]


def tagged(i: int, dim: int = 4) -> torch.Tensor:
    """A feature that says which stream item it was: i in its first coordinate."""
    return torch.tensor([float(i)] + [0.0] * (dim - 1))


def tags(cache: ClassSlots, label: int) -> list[int]:
    """The stream items a class holds, in slot order (valid slots only)."""
    return [int(f[0]) for f, v in zip(cache.features[label], cache.valid[label]) if v]


def losses(cache: ClassSlots, label: int) -> list[float]:
    return [float(x) for x, v in zip(cache.losses[label], cache.valid[label]) if v]


def observation(feature, loss, pred, classes=len(CLASSES), prob_map=None):
    prob_map = torch.full((classes,), 1 / classes) if prob_map is None else prob_map
    return Observation(feature, torch.zeros(classes), torch.tensor(loss), prob_map, torch.tensor(pred))


def by_the_book(stream, capacity):
    """tda_runner.py update_cache as plain lists: append while there is room, else replace the last entry
    if the new loss is strictly lower; then a stable sort by loss."""
    cache = {}
    for tag, loss, label in stream:
        entries = cache.setdefault(label, [])
        if len(entries) < capacity:
            entries.append((tag, loss))
        elif loss < entries[-1][1]:
            entries[-1] = (tag, loss)
        entries.sort(key=lambda entry: entry[1])
    return cache


# -- the caches ----------------------------------------------------------------------------------------------


def test_positive_cache_keeps_the_lowest_losses_per_class_sorted():
    cache = ClassSlots.empty(classes=3, capacity=3, dim=4)
    stream = [(1, 0.5, 1), (2, 0.3, 1), (3, 0.7, 1),  # class 1 fills up: sorted 2, 1, 3
              (4, 0.2, 0),  # class 0 gets its first entry
              (5, 0.9, 1),  # worse than the worst (0.7): ignored
              (6, 0.7, 1),  # equal to the worst: ignored (strictly lower is needed)
              (7, 0.4, 1),  # replaces item 3 (0.7): 2, 7, 1
              (8, 0.3, 1)]  # ties item 2 (0.3): goes after it, and item 1 (0.5) drops
    for tag, loss, label in stream:
        cache.add(label, tagged(tag), torch.tensor(loss))
    assert tags(cache, 0) == [4] and losses(cache, 0) == pytest.approx([0.2])
    assert tags(cache, 1) == [2, 8, 7] and losses(cache, 1) == pytest.approx([0.3, 0.3, 0.4])
    assert tags(cache, 2) == [] and cache.valid.sum() == 4
    assert torch.isinf(cache.losses[2]).all() and torch.isinf(cache.losses[0, 1:]).all()


def test_caches_equal_the_codes_lists_on_a_long_stream_with_ties():
    rng = random.Random(0)
    stream = [(i, rng.choice([0.1, 0.2, 0.3, 0.4, 0.5]), rng.randrange(3)) for i in range(1, 200)]
    for capacity in (1, 2, 3):
        cache = ClassSlots.empty(classes=3, capacity=capacity, dim=4)
        for tag, loss, label in stream:
            cache.add(label, tagged(tag), torch.tensor(loss))
        expected = by_the_book(stream, capacity)
        for label in range(3):
            assert tags(cache, label) == [tag for tag, _ in expected[label]], (capacity, label)


def test_negative_cache_takes_only_the_normalised_entropy_window():
    """4 classes: normalised entropy = loss / log2(4) = loss / 2 (nats over bits, as get_entropy), and the
    window (0.2, 0.5) is strict at both ends. Every item is predicted as class 2."""
    method = build_method("tda")
    method.reset(len(CLASSES), 4, "cpu")
    stream = [(1, 0.375), (2, 1.0), (3, 0.5), (4, 0.875), (5, 0.625), (6, 0.4375)]
    #  normalised: 0.1875 out, 0.5 out (upper bound), 0.25 in, 0.4375 in, 0.3125 in, 0.21875 in
    for tag, loss in stream:
        method.update(observation(tagged(tag), loss, pred=2, prob_map=torch.tensor([0.1, 0.2, 0.3, tag / 10])))
    negative, positive = method.negative, method.positive
    assert tags(negative, 2) == [6, 3] and losses(negative, 2) == [0.4375, 0.5]  # capacity 2: 4, then 5 dropped
    assert negative.prob_maps[2, :, 3].tolist() == pytest.approx([0.6, 0.3])  # each item's own prob map
    assert negative.valid.sum() == 2
    assert tags(positive, 2) == [1, 6, 3]  # every item competes for the positive cache, capacity 3
    assert positive.valid.sum() == 3


# -- the logits ----------------------------------------------------------------------------------------------


def test_logits_are_clip_plus_positive_minus_negative_by_hand():
    method = build_method("tda", {"pos_alpha": 2.0, "pos_beta": 5.0})
    method.reset(3, 2, "cpu")
    method.pos_alpha, method.pos_beta = method.positive_params(TestSet.named("DTD", CLASSES))
    s = 0.6  # keys at cos 1, 0.6 and 0 from the query (1, 0)
    method.positive.add(0, torch.tensor([1.0, 0.0]), torch.tensor(0.1))
    method.positive.add(0, torch.tensor([s, 0.8]), torch.tensor(0.2))
    method.positive.add(2, torch.tensor([0.0, 1.0]), torch.tensor(0.3))
    method.negative.add(1, torch.tensor([s, 0.8]), torch.tensor(0.5), torch.tensor([0.02, 0.5, 0.48]))
    method.negative.add(2, torch.tensor([1.0, 0.0]), torch.tensor(0.6), torch.tensor([0.97, 0.03, 0.0]))
    clip_logits = torch.tensor([1.0, 2.0, 3.0])
    logits = method.adapted_logits(Observation(torch.tensor([1.0, 0.0]), clip_logits, torch.tensor(0.0),
                                               torch.zeros(3), torch.tensor(0)))
    pos = [2.0 * (math.exp(-5.0 * 0) + math.exp(-5.0 * (1 - s))), 0.0, 2.0 * math.exp(-5.0)]
    # masks 0.03 < p < 1.0 (strict): [0, 1, 1] for the first item and [1, 0, 0] for the second
    w1, w2 = 0.117 * math.exp(-1.0 * (1 - s)), 0.117 * math.exp(0.0)
    neg = [w2, w1, w1]
    expected = torch.tensor([c + p - n for c, p, n in zip(clip_logits.tolist(), pos, neg)])
    torch.testing.assert_close(logits, expected)


def test_the_sample_is_cached_before_it_is_predicted(images):
    """With empty caches, a sample's own feature (cos 1 with itself) adds alpha to its zero-shot class."""
    model = tiny_clip()
    method = build_method("tda", {"neg_enabled": "false"})
    method.setup(model, TestSet.named("DTD", CLASSES))
    logits = method.predict(images[:1])
    with torch.no_grad():
        feature = F.normalize(model.encode_image(images[:1]), dim=-1)[0]
    zero_shot = 100 * feature @ method.text.T  # utils.py get_clip_logits scales by a constant 100
    alpha = 2.0  # dtd.yaml positive.alpha
    torch.testing.assert_close(logits, zero_shot + alpha * F.one_hot(zero_shot.argmax(), len(CLASSES)),
                               atol=1e-4, rtol=1e-5)
    assert method.positive.valid.sum() == 1 and method.positive.valid[zero_shot.argmax(), 0]


def test_the_trace_gives_the_caches_fill_after_each_image(images):
    method = build_method("tda", {"neg_enabled": "false"})
    assert method.sample_trace() == {}
    method.setup(tiny_clip(), TestSet.named("DTD", CLASSES))
    method.predict(images[:1])
    assert method.sample_trace() == {"positive_entries": 1, "negative_entries": 0}


# -- views and sets ------------------------------------------------------------------------------------------


def test_ood_sets_use_64_augmix_views_and_the_6_most_confident():
    model = tiny_clip()
    method = build_method("tda")
    augmix = {s: method.augmix(TestSet.named(s, CLASSES)) for s in ("A", "K", "DTD", "I", "folder:A")}
    assert augmix == {"A": True, "K": True, "DTD": False, "I": False, "folder:A": False}
    method.setup(model, TestSet.named("A", CLASSES))
    assert method.views_per_image == 64 and (method.pos_alpha, method.pos_beta) == (2.0, 5.0)  # imagenet_a.yaml
    views = random_views(64)
    seen = method.observe(views)
    with torch.no_grad():
        features = F.normalize(model.encode_image(views), dim=-1)
    logits = 100 * features @ method.text.T
    chosen = entropy(logits).argsort()[:6]
    torch.testing.assert_close(seen.feature, features[chosen].mean(0))  # a mean of unit vectors, not renormalised
    assert seen.feature.norm() < 1
    torch.testing.assert_close(seen.clip_logits, logits[chosen].mean(0))
    torch.testing.assert_close(seen.loss, marginal_entropy(logits[chosen]))
    torch.testing.assert_close(seen.prob_map, logits[chosen].softmax(-1).mean(0))
    assert seen.pred == logits[chosen].mean(0).argmax()

    method.setup(model, TestSet.named("DTD", CLASSES))
    assert method.views_per_image == 1 and (method.pos_alpha, method.pos_beta) == (2.0, 3.0)  # dtd.yaml
    method.setup(model, TestSet.named("folder", CLASSES))
    assert method.views_per_image == 1 and (method.pos_alpha, method.pos_beta) == (2.0, 5.0)  # ImageNet's
    assert method.text.shape == (len(CLASSES), model.config.embed_dim)


def test_caches_reset_per_set_or_never(images):
    model = tiny_clip()
    for reset, kept in (("per-set", False), ("never", True)):
        method = build_method("tda", {"reset_state": reset})
        method.setup(model, TestSet.named("DTD", CLASSES))
        for i in range(3):
            method.predict(images[i:i + 1])
        before = method.state_dict()
        method.setup(model, TestSet.named("EuroSAT", CLASSES))  # the same classes
        assert bool(method.positive.valid.any()) == kept, reset
        if kept:
            assert all(torch.equal(v, method.state_dict()[k]) for k, v in before.items())
        method.setup(model, TestSet.named("Pets", CLASSES[:3]))  # other classes: the slots cannot carry over
        assert not method.positive.valid.any() and method.positive.features.shape[0] == 3
        assert reset in " ".join(method.notes())
    with pytest.raises(ValueError, match="reset_state"):
        build_method("tda", {"reset_state": "sometimes"})


# -- state ---------------------------------------------------------------------------------------------------


def test_state_round_trip_gives_identical_predictions(images, tmp_path):
    model = tiny_clip()
    stream = torch.randn(8, 1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(5))
    first = build_method("tda", {"reset_state": "never"})
    first.setup(model, TestSet.named("Pets", CLASSES))
    for views in stream[:5]:
        first.predict(views)
    torch.save(first.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)  # as the engine reads it
    rest = [first.predict(views) for views in stream[5:]]

    within = build_method("tda", {"reset_state": "never"})  # resuming within a set: load after setup
    within.setup(model, TestSet.named("Pets", CLASSES))
    within.load_state_dict(state)
    carried = build_method("tda", {"reset_state": "never"})  # carried from the last set: load before setup
    carried.load_state_dict(state)
    carried.setup(model, TestSet.named("Pets", CLASSES))
    for method in (within, carried):
        for views, expected in zip(stream[5:], rest):
            torch.testing.assert_close(method.predict(views), expected, atol=0, rtol=0)

    fresh, reset = build_method("tda"), build_method("tda")  # per-set: what was carried is dropped at setup
    reset.load_state_dict(state)
    for method in (fresh, reset):
        method.setup(model, TestSet.named("Pets", CLASSES))
    torch.testing.assert_close(reset.predict(stream[0]), fresh.predict(stream[0]), atol=0, rtol=0)

    other = build_method("tda")  # state for other classes is held for the next setup, never predicted with
    other.setup(model, TestSet.named("Pets", CLASSES[:3]))
    other.load_state_dict(state)
    with pytest.raises(RuntimeError, match="other classes"):
        other.predict(stream[0])


# -- through the registry and the engine -------------------------------------------------------------------


def test_build_method_setup_and_predict(images):
    method = build_method("tda", {"pos_alpha": "3.5", "precision": "fp32"})
    cfg = method.config
    assert method.online and method.name == "tda" and cfg.templates == "per_set" and cfg.reset_state == "per-set"
    assert (cfg.pos_capacity, cfg.neg_capacity, cfg.neg_alpha, cfg.neg_beta) == (3, 2, 0.117, 1.0)
    assert (cfg.neg_entropy_lower, cfg.neg_entropy_upper, cfg.neg_mask_lower, cfg.neg_mask_upper) == (0.2, 0.5, 0.03, 1.0)
    assert method.state_dict() == {}
    method.setup(tiny_clip(), TestSet.named("Cars", CLASSES))
    assert (method.pos_alpha, method.pos_beta) == (3.5, 7.0)  # the override, and stanford_cars.yaml's beta
    for i in range(3):
        logits = method.predict(images[i:i + 1])
        assert logits.shape == (len(CLASSES),) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert method.diagnostics().numbers["positive_entries"] == 3
