"""`mintclip shiftbench check` on the shipped model: the figures are what they claim to be, and the
verdicts follow from them."""

import json

import pytest
import torch
import torch.nn.functional as F

import mintclip
from mintclip.cli import main
from mintclip.shiftbench.check import DomainCheck, run_checks, supervised_context, verdicts, view0_features
from mintclip.shiftbench.render import CLASSES
from mintclip.shiftbench.train import domain_images, held_out_views, shipped_checkpoint, zero_shot_accuracy


@pytest.fixture(scope="module")
def model():
    model, _ = mintclip.load_clip(shipped_checkpoint())
    return model


def test_zero_shot_is_the_trainers_held_out_accuracy(model):
    check, = run_checks(model, per_class=1, domains=("sketch",))
    assert check.images == len(CLASSES) and check.zero_shot == zero_shot_accuracy(model, *held_out_views("sketch", 1))
    assert check.style_prompts is not None and 0 <= check.tpt_flips <= 100 and check.tpt_text_change >= 0
    on_view0, = run_checks(model, per_class=1, domains=("sketch",), views=False)
    assert on_view0.zero is None and (on_view0.zero_shot, on_view0.supervised) == (check.zero_shot, check.supervised)
    assert len(verdicts([on_view0])) == 2


def test_the_supervised_context_lowers_the_loss_on_the_images_it_was_tuned_on(model):
    """The bound's tuner trains (CoOp's recipe), and the same images and seed give the same context."""
    images = domain_images("rendition", 3, seed=2)
    features, labels = view0_features(model, images)
    start = mintclip.adapt.prompts.encode_class_prompts(model, list(CLASSES), ["a photo of a {}."])
    tuned = supervised_context(model, features, labels)
    scale = model.logit_scale.exp()
    loss = [float(F.cross_entropy(scale * features @ text.T, labels)) for text in (start, tuned)]
    assert loss[1] < loss[0] and torch.equal(supervised_context(model, features, labels), tuned)


def test_verdicts_follow_the_figures():
    def domain(name, zero_shot, ensemble, style, supervised, zero, flips):
        return DomainCheck(name, 100, zero_shot, ensemble, style, supervised, zero, zero_shot, flips, 0.01)
    good = [domain("sketch", 50, 55, 52, 70, 53, 8), domain("rendition", 40, 41, 44, 60, 42, 5)]
    assert [ok for _, ok, _ in verdicts(good)] == [True, True, True, None]  # TPT's step: reported
    bad = [domain("sketch", 50, 51, 50.5, 50, 49, 0), domain("rendition", 40, 45, 44, 41, 40, 0)]
    assert [ok for _, ok, _ in verdicts(bad)] == [False, False, False, None]
    assert "sketch +1.0" in verdicts(bad)[0][2]


def test_the_command_prints_the_table_and_writes_json(tmp_path, capsys):
    assert main(["shiftbench", "check", "--per-class", "1", "--domains", "hard", "--json", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert "| hard | 20 |" in out and out.count("PASS") + out.count("FAIL") + out.count("INFO") == 4
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["domains"][0]["domain"] == "hard" and len(saved["verdicts"]) == 4
