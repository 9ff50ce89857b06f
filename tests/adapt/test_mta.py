"""MTA: the inlierness-weighted MeanShift mode of the views, checked by hand and against a plain transcription."""

import math

import torch
import torch.nn.functional as F

from mintclip.adapt import build_method
from mintclip.adapt.mta import iterate, solve_mta
from mintclip.data import TestSet
from tests.helpers import tiny_clip


# Kept here rather than tests.helpers.CLASSES (five, with a long name): these tests' numbers were
# computed on these four names.
CLASSES = ["goldfish", "great white shark", "jay", "tabby cat"]


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def mta_by_the_book(features, text, scale, lambda_q=4.0, lambda_y=0.2):
    """MaxZanella/MTA mta.py, one view and one iteration at a time, in float64."""
    n = len(features)
    k = int(0.3 * (n - 1))
    bandwidth = []
    for i in range(n):
        others = sorted(float((features[i] - features[j]).norm()) for j in range(n) if j != i)
        bandwidth.append(math.sqrt(0.5 * sum(d * d for d in others[:k]) / k))
    probs = [(scale * f @ text.T).softmax(-1) for f in features]
    affinity = [[float(probs[i] @ probs[j]) for j in range(n)] for i in range(n)]

    def density(mode):
        return [math.exp(-float((f - mode).norm()) ** 2 / (2 * h * h)) for f, h in zip(features, bandwidth)]

    y = [1.0 / n] * n
    mode = features[0]
    for _outer in range(5):
        dens = density(mode)
        for _step in range(5):
            scores = [(dens[i] + lambda_q * sum(affinity[i][j] * y[j] for j in range(n))) / lambda_y for i in range(n)]
            top = max(scores)
            total = sum(math.exp(s - top) for s in scores)
            new_y = [math.exp(s - top) / total for s in scores]
            change, y = math.dist(new_y, y), new_y
            if change < 1e-6:
                break
        for _step in range(5):
            weights = [d * w for d, w in zip(density(mode), y)]
            new_mode = sum(w * f for w, f in zip(weights, features)) / sum(weights)
            new_mode = new_mode / new_mode.norm()
            change, mode = float((new_mode - mode).norm()), new_mode
            if change < 1e-6:
                break
    return scale * mode @ text.T, mode, torch.tensor(y, dtype=torch.float64)


def test_identical_views_have_view_0_as_mode_and_its_zero_shot_logits():
    view, text = unit(1, 16, seed=1), unit(5, 16, seed=2)
    solution = solve_mta(view.float().expand(8, -1), text.float(), 100.0)
    torch.testing.assert_close(solution.mode, view[0].float())
    torch.testing.assert_close(solution.logits, 100.0 * view[0].float() @ text.float().T)
    torch.testing.assert_close(solution.inlierness, torch.full((8,), 1 / 8))  # all alike, all equally inliers


def test_a_far_away_view_that_disagrees_is_the_least_inlier():
    centre, stray = unit(2, 16, seed=3)
    views = F.normalize(centre + 0.1 * unit(12, 16, seed=5), dim=-1)  # (12, 16), a tight cluster
    views[7] = stray  # far from the cluster, and predicting another class
    text = torch.cat([centre[None], stray[None], unit(3, 16, seed=4)])  # class 0: the cluster, class 1: the stray
    solution = solve_mta(views.float(), text.float(), 100.0)
    assert solution.inlierness.argmin() == 7 and solution.inlierness[7] < 1e-3
    assert solution.mode.double() @ centre > 0.99 and solution.logits.argmax() == 0


def test_solve_mta_matches_a_loop_by_loop_transcription_of_the_official_code():
    for n, seed in [(64, 0), (16, 1), (5, 2)]:
        centre = unit(1, 32, seed=seed + 10)
        features = F.normalize(centre + 0.6 * unit(n, 32, seed=seed), dim=-1)  # views of one image, spread out
        text = unit(10, 32, seed=seed + 20)
        logits, mode, y = mta_by_the_book(features, text, 100.0)
        solution = solve_mta(features.float(), text.float(), 100.0)
        torch.testing.assert_close(solution.inlierness.double(), y, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(solution.mode.double(), mode, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(solution.logits.double(), logits, atol=1e-3, rtol=1e-4)


def test_predict_is_solve_mta_on_the_encoded_views():
    model = tiny_clip()
    method = build_method("mta")
    config = method.config
    assert (method.n_views, config.lambda_q, config.lambda_y, method.augmix(TestSet.named("DTD", CLASSES))) == (64, 4.0, 0.2, False)
    method.setup(model, TestSet.named("I", CLASSES))
    views = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    logits = method.predict(views)
    assert logits.shape == (len(CLASSES),) and logits.dtype == torch.float32
    with torch.no_grad():
        features = F.normalize(model.encode_image(views), dim=-1)
    torch.testing.assert_close(logits, solve_mta(features, method.text, model.logit_scale.exp().detach()).logits)


def test_iterate_freezes_each_image_at_its_own_early_stop():
    # halving moves image 0 by 0.5, 0.25, 0.125 and image 1 by 4, 2, 1, 0.5, 0.25: with tol 0.3 image 0
    # stops after its 2nd step (0.25), image 1 after its 5th, and image 0 must not take steps 3 to 5
    halved = iterate(lambda x: x / 2, torch.tensor([1.0, 8.0]), max_iter=6, tol=0.3)
    assert halved.tolist() == [0.25, 0.25]


def test_a_batch_of_images_is_each_solved_alone():
    text = unit(10, 32, seed=20).float()
    features = torch.stack([F.normalize(unit(1, 32, seed=seed + 10) + spread * unit(16, 32, seed=seed), dim=-1)
                            for seed, spread in [(0, 0.2), (1, 0.6), (2, 1.5)]]).float()  # (3, 16, 32)
    for tol in (1e-6, 1e-2):  # 1e-2: the images stop after different numbers of steps
        batch = solve_mta(features, text, 100.0, tol=tol)
        alone = [solve_mta(image, text, 100.0, tol=tol) for image in features]
        for b, want in enumerate(alone):
            torch.testing.assert_close(batch.mode[b], want.mode, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(batch.inlierness[b], want.inlierness, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(batch.logits[b], want.logits, atol=1e-5, rtol=1e-5)  # 100 * cos


def test_a_batch_of_views_predicts_as_one_at_a_time():
    method = build_method("mta", {"precision": "fp32"})
    method.setup(tiny_clip(), TestSet.named("I", CLASSES))
    views = torch.randn(3, 8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prediction = method.predict_batch(views)
    logits = prediction.logits
    single = torch.stack([method.predict(image_views) for image_views in views])
    assert prediction.skipped_updates == [0, 0, 0] and logits.shape == (3, len(CLASSES))
    assert prediction.view0_features.shape == (3, tiny_clip().config.embed_dim)
    torch.testing.assert_close(logits, single, atol=1e-5, rtol=1e-5)
    assert torch.equal(logits.argmax(-1), single.argmax(-1))
