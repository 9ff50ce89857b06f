"""MetaTPT, designed from its abstract: learned affine views start near the identity, the test-time
inner and outer steps run and leave no state behind, and meta-training reaches the augmentation network."""

import pytest
import torch

from mintclip.adapt import build_method
from mintclip.adapt.metatpt import AugmentationNet, MetaTPTLearner
from tests.helpers import CLASSES, frozen_clip, random_views


@pytest.fixture(scope="module")
def model():
    return frozen_clip()


def test_views_are_the_image_itself_when_the_transforms_are_the_identity():
    augment = AugmentationNet(feature_dim=8, n_views=3)
    torch.nn.init.zeros_(augment.mlp[2].weight)
    image = random_views(1)
    views = augment(image, torch.randn(8))
    assert views.shape == (3, *image.shape[1:]) and torch.allclose(views, image.expand(3, -1, -1, -1), atol=1e-5)


def test_the_test_time_steps_move_the_prompt_and_leave_nothing_behind(model):
    torch.manual_seed(0)
    learner = MetaTPTLearner(model, CLASSES, n_views=4)
    scale = model.logit_scale.exp()
    image = random_views(1)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    tuned = learner.tuned_logits(image, scale)
    with torch.no_grad():
        zero_shot = learner.logits(learner.encode(image), scale)[0]
    assert tuned.shape == (len(CLASSES),) and not torch.allclose(tuned, zero_shot)
    assert torch.equal(learner.tuned_logits(image, scale), tuned)  # episodic: the same image, the same answer
    assert all(torch.equal(v, learner.state_dict()[k]) for k, v in before.items())


def test_the_meta_loss_reaches_the_augmentation_network_only(model):
    torch.manual_seed(0)
    learner = MetaTPTLearner(model, CLASSES, n_views=4)
    logits = learner.batch_logits(random_views(2), model.logit_scale.exp())
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 3])).backward()
    assert set(learner.learned()) == {"augment.codes", "augment.mlp.0.weight", "augment.mlp.0.bias",
                                      "augment.mlp.2.weight", "augment.mlp.2.bias"}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.learned().values())
    assert learner.ctx.grad is None  # the starting context is not meta-learned


def test_it_refuses_to_run_without_its_meta_trained_network(model):
    with pytest.raises(ValueError, match="needs its trained file: --hp meta=PATH"):
        build_method("metatpt").check(model)
