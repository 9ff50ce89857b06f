"""ZERO: keep the most confident views, one vote each, most votes wins; ties as the official code."""

import pytest
import torch
import torch.nn.functional as F

from mintclip.adapt import build_method
from mintclip.adapt.zero import zero_vote, zero_votes
from tests.conftest import tiny_clip

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


def test_a_tie_goes_to_the_first_later_view_that_names_a_tied_class():
    # Kept: views 0, 1, 2 vote 2, 3, 0, a three-way tie. The code walks views 3.. in input order:
    # view 3 says 1 (not tied), view 4 says 3 -> class 3 wins and gets one more vote.
    # Walking the discarded views by confidence instead (the paper's reading), view 9 (margin 5) comes first and says 0.
    logits = scripted((2, 20), (3, 19), (0, 18), (1, 2), (3, 1), (1, 2), (1, 2), (1, 2), (1, 2), (0, 5))
    in_order = zero_vote(logits, gamma=0.3)
    assert votes(in_order) == [1, 0, 1, 2] and in_order.argmax() == 3
    by_confidence = zero_vote(logits, gamma=0.3, tie_break="confidence")
    assert votes(by_confidence) == [2, 0, 1, 1] and by_confidence.argmax() == 0


def test_when_no_later_view_names_a_tied_class_the_first_later_view_decides_among_them():
    # Kept views vote 0, 2, 3: a tie. Every later view says class 1, which is not tied, so the first later
    # view (view 3) decides among the tied classes: it scores 2 > 0 > 3, so class 2 wins (break_sample_tie's
    # intent; its `logit[~ties]` masks classes C-1-t instead).
    logits = scripted((0, 20), (2, 19), (3, 18), (1, 2), (1, 2), (1, 2), (1, 2), (1, 2), (1, 2), (1, 2))
    logits[3, 2], logits[3, 0] = 1.0, 0.5
    scores = zero_vote(logits, gamma=0.3)
    assert votes(scores) == [1, 0, 2, 1] and scores.argmax() == 2


def test_edge_cases_one_view_is_zero_shot_and_all_views_kept():
    single = torch.tensor([[0.1, 3.0, 0.2]])
    assert zero_vote(single).argmax() == 1  # int(1 * 0.3) = 0 kept: the tie of all classes falls to view 0
    everyone = scripted((1, 5), (2, 5))
    assert zero_vote(everyone, gamma=1.0).argmax() == 1  # a tie with no view left: the first tied class


def test_predict_votes_on_the_views_of_a_tiny_clip():
    model = tiny_clip()
    method = build_method("zero")
    assert (method.n_views, method.config.gamma, method.augmix("DTD")) == (64, 0.3, False)
    method.setup(model, CLASSES, "I")
    views = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    scores = method.predict(views)
    assert scores.shape == (len(CLASSES),) and scores.dtype == torch.float32
    with torch.no_grad():
        cosines = F.normalize(model.encode_image(views), dim=-1) @ method.text.T
    torch.testing.assert_close(scores, zero_vote(model.logit_scale.exp() * cosines))
    assert sum(votes(scores)) in (19, 20)  # 19 kept views, +1 if a tie was broken


def test_config_overrides_and_errors():
    method = build_method("zero", {"gamma": "0.1", "tie_break": "confidence", "templates": "simple_7"})
    assert (method.config.gamma, method.config.tie_break) == (0.1, "confidence")
    with pytest.raises(ValueError, match="tie_break"):
        build_method("zero", {"tie_break": "random"})


def test_votes_of_a_batch_are_each_images_own_ties_included():
    # the scripted images above: a clear winner, a tie broken by a later view, a tie no later view names
    batch = torch.stack([
        scripted((0, 1), (0, 1), (1, 10), (0, 1), (0, 1), (1, 8), (0, 1), (3, 9), (0, 1), (0, 1)),
        scripted((2, 20), (3, 19), (0, 18), (1, 2), (3, 1), (1, 2), (1, 2), (1, 2), (1, 2), (0, 5)),
        scripted((0, 20), (2, 19), (3, 18), (1, 2), (1, 2), (1, 2), (1, 2), (1, 2), (1, 2), (1, 2)),
    ])
    batch[2, 3, 2], batch[2, 3, 0] = 1.0, 0.5
    for tie_break in ("view_order", "confidence"):
        expected = torch.stack([zero_vote(logits, 0.3, tie_break) for logits in batch])
        torch.testing.assert_close(zero_votes(batch, 0.3, tie_break), expected, atol=0, rtol=0)


def test_a_batch_of_images_predicts_as_one_at_a_time():
    method = build_method("zero", {"precision": "fp32"})
    method.setup(tiny_clip(), CLASSES, "I")
    views = torch.randn(3, 8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    scores, skipped = method.predict_batch(views)
    single = torch.stack([method.predict(image_views) for image_views in views])
    assert skipped == [0, 0, 0] and scores.shape == (3, len(CLASSES))
    torch.testing.assert_close(scores, single, atol=1e-6, rtol=1e-5)
    assert torch.equal(scores.floor(), single.floor()) and torch.equal(scores.argmax(-1), single.argmax(-1))
