"""ZERO: keep the most confident views, one vote each, most votes wins; ties as the official code."""

import pytest
import torch
import torch.nn.functional as F

from mintclip.adapt import build_method
from mintclip.adapt.zero import zero_vote, zero_votes
from mintclip.data import TestSet
from tests.helpers import tiny_clip


# Kept here rather than tests.helpers.CLASSES (five, with a long name): these tests' numbers were
# computed on these four names.
CLASSES = ["goldfish", "great white shark", "jay", "tabby cat"]


def scripted(*views):
    """Logits (V, 4): each view is (class, margin), a peak of that height over zeros; a bigger margin
    is a more confident (lower-entropy) view."""
    logits = torch.zeros(len(views), 4)
    for row, (cls, margin) in zip(logits, views):
        row[cls] = margin
    return logits


def votes(scores):
    return scores.floor().long().tolist()  # the confidence term is below one vote


def test_only_the_confident_views_vote():
    # 10 views, int(10 * 0.3) = 3 kept: views 2, 5 and 7.
    # The seven unsure views all say class 0 and count for nothing.
    logits = scripted((0, 1), (0, 1), (1, 10), (0, 1), (0, 1), (1, 8), (0, 1), (3, 9), (0, 1), (0, 1))
    scores = zero_vote(logits, gamma=0.3)
    assert votes(scores) == [0, 2, 0, 1]
    assert scores.argmax() == 1
    assert scores[0] > scores[2]  # equal votes rank by mean confidence: class 0 is every unsure view's top


def test_a_tie_goes_to_the_most_confident_discarded_view_that_names_a_tied_class():
    # Kept (3 of 10): views 0, 1, 2 vote 2, 3, 0, a three-way tie. At c609f7c the code walks the discarded
    # views from most to least confident (`greedy_break(ties, l[full_idx[k:]])`): view 9 (margin 5) comes
    # first and says 0 -> class 0 wins and gets one more vote.
    # Before cbd7949 it walked views 3.. in input order: view 3 says 1 (not tied), view 4 says 3 -> class 3.
    logits = scripted((2, 20), (3, 19), (0, 18), (1, 2), (3, 1), (1, 2), (1, 2), (1, 2), (1, 2), (0, 5))
    by_confidence = zero_vote(logits, gamma=0.3)
    assert votes(by_confidence) == [2, 0, 1, 1] and by_confidence.argmax() == 0
    in_order = zero_vote(logits, gamma=0.3, tie_break="view_order")
    assert votes(in_order) == [1, 0, 1, 2] and in_order.argmax() == 3


def fallback_case():
    """14 views, int(14 * 0.3) = 4 kept: views 0-3 vote 0, 0, 3, 3 (a tie of classes 0 and 3). Every
    discarded view says class 1, untied; the most confident of them (view 4, margin 4) scores
    class 1 > class 0 > class 3 > class 2."""
    logits = scripted((0, 20), (0, 19), (3, 18), (3, 17), (1, 4), *[(1, 2)] * 9)
    logits[4, 0], logits[4, 3], logits[4, 2] = 3.0, 2.0, 1.0
    return logits


def test_when_no_discarded_view_names_a_tied_class_the_code_masks_the_mirrored_classes():
    # break_sample_tie: `ties` is an int tensor [0, 3], so `logit[~ties] = -inf` writes indices -1 and -4,
    # i.e. classes 3 and 0 of 4: the tied ones are masked, and view 4's argmax over classes 1 and 2 is
    # class 1, which gets the extra vote though it was not tied (votes 2, 1, 0, 2).
    scores = zero_vote(fallback_case(), gamma=0.3)
    assert votes(scores) == [2, 1, 0, 2]
    # the intent, tie_fallback="tied_classes": view 4's best tied class, class 0, wins outright
    intent = zero_vote(fallback_case(), gamma=0.3, tie_fallback="tied_classes")
    assert votes(intent) == [3, 0, 0, 2] and intent.argmax() == 0


def test_the_fallback_in_view_order_decides_among_the_classes_the_code_leaves():
    # Kept views vote 0, 2, 3: a tie of three of 4 classes, so the code masks classes 3, 1 and 0 and only
    # class 2 is left for view 3 (the first later view in input order): class 2 wins either way.
    logits = scripted((0, 20), (2, 19), (3, 18), (1, 2), (1, 2), (1, 2), (1, 2), (1, 2), (1, 2), (1, 2))
    logits[3, 2], logits[3, 0] = 1.0, 0.5
    for fallback in ("reference", "tied_classes"):
        scores = zero_vote(logits, gamma=0.3, tie_break="view_order", tie_fallback=fallback)
        assert votes(scores) == [1, 0, 2, 1] and scores.argmax() == 2


def official_votes(logits, gamma=0.3):
    """The vote counts of ZERO's code at c609f7c, re-derived step by step: entropy -(p log p) at the
    model's temperature, argsort ascending, int(V * gamma) kept, one vote each, then for a tie the walk
    over the rest of the argsort and break_sample_tie with its int-tensor `~`."""
    n_views, n_classes = logits.shape
    probs = logits.softmax(1)
    full = torch.argsort(-(probs * probs.log()).sum(1))
    k = int(n_views * gamma)
    counts = [0] * n_classes
    for view in full[:k].tolist():
        counts[int(logits[view].argmax())] += 1
    tied = [c for c in range(n_classes) if counts[c] == max(counts)]
    if len(tied) > 1:
        walked = logits[full[k:]]
        winner = next((int(p) for p in walked.argmax(1) if int(p) in tied), None)
        if winner is None:
            first = walked[0].clone()
            first[[-t - 1 for t in tied]] = float("-inf")
            winner = int(first.argmax())
        counts[winner] += 1
    return counts


def test_votes_equal_the_official_codes_on_random_images_with_many_ties():
    generator = torch.Generator().manual_seed(0)
    ties = 0
    for _ in range(300):
        logits = 3 * torch.randn(14, 4, generator=generator)
        expected = official_votes(logits)
        ties += sum(expected) == 5
        assert votes(zero_vote(logits)) == expected
    assert ties > 50  # the walk (and its fallback) really was exercised


def test_edge_cases_one_view_is_zero_shot_and_all_views_kept():
    single = torch.tensor([[0.1, 3.0, 0.2]])
    assert zero_vote(single).argmax() == 1  # int(1 * 0.3) = 0 kept: the tie of all classes falls to view 0
    everyone = scripted((1, 5), (2, 5))
    assert zero_vote(everyone, gamma=1.0).argmax() == 1  # a tie with no view left: the first tied class


def test_predict_votes_on_the_views_of_a_tiny_clip():
    model = tiny_clip()
    method = build_method("zero")
    assert (method.n_views, method.config.gamma, method.augmix(TestSet.named("DTD", CLASSES))) == (64, 0.3, False)
    method.setup(model, TestSet.named("I", CLASSES))
    views = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    scores = method.predict(views)
    assert scores.shape == (len(CLASSES),) and scores.dtype == torch.float32
    with torch.no_grad():
        cosines = F.normalize(model.encode_image(views), dim=-1) @ method.text.T
    torch.testing.assert_close(scores, zero_vote(model.logit_scale.exp() * cosines))
    assert sum(votes(scores)) in (19, 20)  # 19 kept views, +1 if a tie was broken


def test_config_overrides_and_errors():
    assert (build_method("zero").config.tie_break, build_method("zero").config.tie_fallback) == ("confidence", "reference")
    method = build_method("zero", {"gamma": "0.1", "tie_break": "view_order", "templates": "simple_7"})
    assert (method.config.gamma, method.config.tie_break) == (0.1, "view_order")
    with pytest.raises(ValueError, match="tie_break"):
        build_method("zero", {"tie_break": "random"})
    with pytest.raises(ValueError, match="tie_fallback"):
        build_method("zero", {"tie_fallback": "random"})


def test_votes_of_a_batch_are_each_images_own_ties_included():
    # a clear winner, a tie broken by a discarded view, a tie no discarded view names
    batch = torch.stack([
        scripted((0, 1), (0, 1), (1, 10), (0, 1), (0, 1), (1, 8), (0, 1), (3, 9), (0, 1), (0, 1), *[(0, 1)] * 4),
        scripted((2, 20), (3, 19), (0, 18), (1, 2), (3, 1), (1, 2), (1, 2), (1, 2), (1, 2), (0, 5), *[(1, 2)] * 4),
        fallback_case(),
    ])
    for tie_break in ("view_order", "confidence"):
        for fallback in ("reference", "tied_classes"):
            expected = torch.stack([zero_vote(logits, 0.3, tie_break, fallback) for logits in batch])
            torch.testing.assert_close(zero_votes(batch, 0.3, tie_break, fallback), expected, atol=0, rtol=0)


def test_a_batch_of_images_predicts_as_one_at_a_time():
    method = build_method("zero", {"precision": "fp32"})
    method.setup(tiny_clip(), TestSet.named("I", CLASSES))
    views = torch.randn(3, 8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prediction = method.predict_batch(views)
    scores = prediction.logits
    single = torch.stack([method.predict(image_views) for image_views in views])
    assert prediction.skipped_updates == [0, 0, 0] and scores.shape == (3, len(CLASSES))
    torch.testing.assert_close(prediction.view0_features, method.encode_views(views[:, :1])[:, 0])
    torch.testing.assert_close(scores, single, atol=1e-6, rtol=1e-5)
    assert torch.equal(scores.floor(), single.floor()) and torch.equal(scores.argmax(-1), single.argmax(-1))
