"""SAR: one update against a hand-worked SAM step in plain torch, the two entropy filters, the model
recovery, the adapted tensors, resume through the state, and a killed `mintclip run` that resumes to the
records of an uninterrupted one (docs/methods.md § SAR)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import mintclip
from mintclip.adapt import build_method
from mintclip.adapt.losses import entropy
from mintclip.adapt.sar import adapted_parameters, default_lr
from mintclip.cli import main
from mintclip.data import TestSet
from mintclip.engine.records import read_records
from mintclip.model import CLIP, CLIPConfig, Preprocess, TextConfig, VisionConfig
from tests.helpers import (CLASSES, IMAGE_SIZE, comparable, frozen_clip, kill_part_way, random_images, run_args,
                           tiny_clip)

# the tiny ViT has 3 blocks; freezing the last one leaves ln_pre and blocks 0-1 (10 tensors) adapted
TINY = {"precision": "fp32", "skip_last_blocks": 1}


def images(n: int, seed: int = 11, size: int = IMAGE_SIZE) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def make(model: CLIP, classes=CLASSES, **hp):
    method = build_method("sar", {**TINY, **hp})
    method.check(model)
    method.setup(model, TestSet.named("folder", classes))
    return method


def feed(method, x: torch.Tensor) -> torch.Tensor:
    """The engine's way: one image at a time, as views (1, 3, H, W)."""
    return torch.stack([method.predict(image[None]) for image in x])


# -- the official step, by hand ------------------------------------------------------------------------------


class ByHand:
    """forward_and_adapt_sar + SAM + SGD(momentum) written out in plain torch on a copy of the tower whose
    norm weights are real parameters, updated in place: the code's order of work, not the method's."""

    def __init__(self, model: CLIP, names, text, margin, rho, lr, momentum=0.9):
        self.tower = copy.deepcopy(model.visual).requires_grad_(False)
        own = dict(self.tower.named_parameters())
        self.chosen = [own[n].requires_grad_(True) for n in names]
        self.text, self.scale = text, model.logit_scale.detach().exp()
        self.margin, self.rho, self.lr, self.momentum = margin, rho, lr, momentum
        self.buffers = [None] * len(self.chosen)
        self.ema = None

    def entropies(self, x):
        logits = self.scale * F.normalize(self.tower(x), dim=-1) @ self.text.T
        return -(logits.softmax(1) * logits.log_softmax(1)).sum(1), logits

    def step(self, x):
        first, outputs = self.entropies(x)
        keep = torch.where(first < self.margin)
        first[keep].mean(0).backward()
        norm = torch.norm(torch.stack([p.grad.norm(p=2) for p in self.chosen]), p=2)
        old = [p.detach().clone() for p in self.chosen]
        with torch.no_grad():
            for p in self.chosen:
                p.add_(p.grad * (self.rho / (norm + 1e-12)))
                p.grad = None
        second = self.entropies(x)[0][keep]
        keep2 = torch.where(second < self.margin)
        loss = second[keep2].mean(0)
        if not math.isnan(loss.item()):
            self.ema = loss.item() if self.ema is None else 0.9 * self.ema + 0.1 * loss.item()
        loss.backward()
        with torch.no_grad():
            for i, p in enumerate(self.chosen):
                p.copy_(old[i])
                g = p.grad
                self.buffers[i] = g.clone() if self.buffers[i] is None else self.momentum * self.buffers[i] + g
                p.sub_(self.lr * self.buffers[i])
                p.grad = None
        return outputs.detach(), keep[0].tolist(), [keep[0][i].item() for i in keep2[0]]


def test_two_updates_equal_hand_worked_sam_steps_with_both_filters_and_momentum():
    model = frozen_clip(temperature=20.0)
    hp = dict(batch_size=4, margin_e0=1.42, rho=0.5, lr=0.05, reset_constant_em=0.0)
    method = make(model, **hp)
    hand = ByHand(model, method.names, method.text, 1.42, 0.5, 0.05)
    x = images(8)
    logits = feed(method, x)
    expected, kept, kept_again = hand.step(x[:4])
    assert kept == [0, 1, 2] and kept_again == [0, 1]  # image 3 fails the first filter, image 2 the second
    torch.testing.assert_close(logits[:4], expected, atol=1e-5, rtol=1e-5)  # the first forward, before the update
    expected_next, _, _ = hand.step(x[4:])
    torch.testing.assert_close(logits[4:], expected_next, atol=1e-5, rtol=1e-5)  # after update 1
    own = dict(hand.tower.named_parameters())
    for name in method.names:
        torch.testing.assert_close(method.params[name].detach(), own[name].detach(), atol=1e-6, rtol=1e-5)
    buffers = dict(zip(method.names, hand.buffers))
    for name, p in method.params.items():
        torch.testing.assert_close(method.optimizer.state[p]["momentum_buffer"], buffers[name], atol=1e-6, rtol=1e-5)
    assert method.ema == pytest.approx(hand.ema, rel=1e-5)
    stats = method.stats
    assert (stats["updates"], stats["images"], stats["recoveries"], stats["skipped"]) == (2, 8, 0, 0)


def test_the_filter_leaves_an_image_above_the_margin_out_of_the_update():
    model = frozen_clip(temperature=20.0)
    x = images(4)
    probe = make(model)
    with torch.no_grad():
        ent = entropy(probe.logits(x, probe.params))
    reliable, unreliable = int(ent.argmin()), int(ent.argmax())
    margin = float(ent[reliable] + ent[unreliable]) / 2  # between them: the second is above
    hp = dict(batch_size=2, margin_e0=margin, lr=0.05, reset_constant_em=0.0, rho=0.0)  # rho 0: SAM is plain SGD
    both = make(model, **hp)
    feed(both, x[[reliable, unreliable]])
    alone = make(model, **{**hp, "batch_size": 1})
    feed(alone, x[[reliable]])
    assert both.stats["reliable_first"] == 1
    assert any(not torch.equal(both.params[n], both.start[n]) for n in both.names)
    for name in both.names:
        torch.testing.assert_close(both.params[name], alone.params[name], atol=1e-6, rtol=1e-5)


def test_a_batch_without_a_reliable_image_still_moves_by_the_momentum():
    """No image below E0: the loss is the mean of none (NaN), its gradient zero, the EMA unchanged, and
    the SGD step applies the momentum alone, as the code's second_step does."""
    model = frozen_clip(temperature=20.0)
    method = make(model, batch_size=2, margin_e0=10.0, lr=0.05, reset_constant_em=0.0)
    feed(method, images(2, seed=1))  # every image reliable: momentum buffers set
    after_first = {n: p.detach().clone() for n, p in method.params.items()}
    buffers = {n: method.optimizer.state[p]["momentum_buffer"].clone() for n, p in method.params.items()}
    ema = method.ema
    method.config.margin_e0 = 0.0  # now no image is reliable
    feed(method, images(2, seed=2))
    assert method.ema == ema and method.stats["reliable_first"] == 2
    for name, p in method.params.items():
        torch.testing.assert_close(p.detach(), after_first[name] - 0.05 * 0.9 * buffers[name])


# -- recovery ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recovery", ["code", "paper"])
def test_recovery_fires_when_the_ema_falls_below_the_threshold(recovery):
    """A scripted stream: batches whose second loss falls, so that the EMA (0.9 / 0.1) drops below e_m
    after the third update and not before; the weights then return to the tower's own."""
    model = frozen_clip(temperature=20.0)
    hp = dict(batch_size=2, margin_e0=10.0, lr=0.05, recovery=recovery)
    x = images(6, seed=5)
    dry = make(model, **hp, reset_constant_em=0.0)  # the EMA after each update, never recovering
    emas = []
    for b in range(3):
        feed(dry, x[2 * b: 2 * b + 2])
        emas.append(dry.ema)
    threshold = (emas[1] + emas[2]) / 2
    assert emas[0] > emas[1] > threshold > emas[2]  # the stream does fall below it at the third update
    method = make(model, **hp, reset_constant_em=threshold)
    feed(method, x[:4])
    assert method.stats["recoveries"] == 0 and method.ema == emas[1]
    assert any(not torch.equal(method.params[n], method.start[n]) for n in method.names)
    feed(method, x[4:])
    assert method.stats["recoveries"] == 1
    assert all(torch.equal(method.params[n].detach(), method.start[n]) for n in method.names)
    own = dict(model.visual.named_parameters())
    assert all(torch.equal(method.start[n], own[n].detach()) for n in method.names)  # the start is the tower's own
    momentum = [method.optimizer.state[p].get("momentum_buffer") for p in method.params.values()]
    if recovery == "code":  # sar.py: SAM's state reloaded, SGD's momentum untouched; the EMA assigned after reset
        assert method.ema == emas[2] and all(b is not None and b.abs().sum() > 0 for b in momentum)
    else:
        assert method.ema is None and all(b is None for b in momentum)


def test_the_ema_starts_at_the_first_loss_and_recovery_is_checked_every_update():
    model = frozen_clip(temperature=20.0)
    method = make(model, batch_size=2, margin_e0=10.0, lr=0.05, reset_constant_em=0.2)
    method.ema = 0.05  # as left by earlier batches: 0.9 * 0.05 + 0.1 * loss < 0.2 for any loss < 1.55
    feed(method, images(2))
    assert method.stats["recoveries"] == 1 and method.ema < 0.2
    method.ema = 1.0  # 0.9 + 0.1 * loss > 0.2: no recovery
    feed(method, images(2, seed=3))
    assert method.stats["recoveries"] == 1


# -- what is adapted ----------------------------------------------------------------------------------------------


def test_the_adapted_tensors_are_collect_params_on_a_vit_base_depth():
    """collect_params on ViT-Base's 12 blocks: blocks.0-8 norm1/norm2 (the start of the code's log in
    mr-eggplant/SAR issue #9), not blocks.9-11 nor the final norm; CLIP's ln_pre (timm's norm_pre) passes
    the rule."""
    vision = VisionConfig("vit", width=64, layers=12, heads=1, image_size=IMAGE_SIZE, patch_size=16)
    config = CLIPConfig(embed_dim=32, vision=vision, text=TextConfig(width=64, layers=1, heads=1), act="quick_gelu",
                        preprocess=Preprocess(IMAGE_SIZE))
    names = adapted_parameters(CLIP(config).visual)
    blocks = [f"transformer.resblocks.{i}.{ln}.{p}" for i in range(9) for ln in ("ln_1", "ln_2")
              for p in ("weight", "bias")]
    assert names == ["ln_pre.weight", "ln_pre.bias", *blocks]


def test_only_the_norm_weights_change_and_the_model_is_never_touched():
    model = frozen_clip(temperature=20.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = make(model, batch_size=2, margin_e0=10.0, lr=0.05, reset_constant_em=0.0)
    assert method.names == ["ln_pre.weight", "ln_pre.bias", *[f"transformer.resblocks.{i}.{ln}.{p}" for i in range(2)
                                                               for ln in ("ln_1", "ln_2") for p in ("weight", "bias")]]
    feed(method, images(4))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not torch.equal(method.params[n], method.start[n]) for n in method.names)
    adapted = copy.deepcopy(model)  # the tower with the adapted tensors loaded: the method's logits exactly
    adapted.visual.load_state_dict({**model.visual.state_dict(), **{n: p.detach() for n, p in method.params.items()}})
    x = images(3, seed=9)
    with torch.no_grad():
        expected = adapted.logit_scale.exp() * F.normalize(adapted.encode_image(x), dim=-1) @ method.text.T
        torch.testing.assert_close(method.logits(x, method.params), expected)


def test_a_resnet_adapts_its_batchnorms_outside_layer4_on_batch_statistics():
    model = tiny_clip("resnet").requires_grad_(False)
    model.logit_scale.fill_(math.log(20.0))
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    method = make(model, batch_size=2, margin_e0=10.0, lr=0.05, reset_constant_em=0.0)
    assert method.names and not any(n.startswith("layer4") for n in method.names)
    batchnorms = {name for name, m in model.visual.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert {n.rsplit(".", 1)[0] for n in method.names} == {name for name in batchnorms if not name.startswith("layer4")}
    x = images(4, size=model.config.vision.image_size)
    logits = feed(method, x)
    assert torch.isfinite(logits).all() and method.stats["updates"] == 2
    assert all(torch.equal(buffers[k], v) for k, v in model.state_dict().items())  # running stats untouched
    with torch.no_grad():
        pair, single = method.logits(x[:2], method.params), method.logits(x[:1], method.params)
    assert not torch.allclose(pair[0], single[0])  # each forward normalises by the images it is given


def test_defaults_learning_rate_rule_and_margin():
    assert default_lr("vit", 64) == 0.001 and default_lr("vit", 16) == 0.001 / 4
    assert default_lr("vit", 1) == 2 * 0.001 / 64  # --exp_type bs1 doubles SAR's lr
    assert default_lr("resnet", 64) == 0.00025 and default_lr("resnet", 16) == 0.00025 / 64 * 16 * 2
    assert default_lr("resnet", 1) == 2 * (0.00025 / 64 * 2)
    method = make(frozen_clip())
    cfg = method.config
    assert (cfg.batch_size, cfg.momentum, cfg.rho, cfg.reset_constant_em, cfg.recovery) == (64, 0.9, 0.05, 0.2, "code")
    assert method.lr == 0.001 and method.margin == pytest.approx(0.4 * math.log(len(CLASSES)))
    assert build_method("sar").views_per_image == 1 and build_method("sar").config.skip_last_blocks == 3


# -- guarded steps, batches and state ---------------------------------------------------------------------------


@pytest.mark.parametrize("poisoned_call", [0, 1])
def test_a_non_finite_gradient_is_a_skipped_update(poisoned_call):
    model = frozen_clip(temperature=20.0)
    method = make(model, batch_size=2, margin_e0=10.0, lr=0.05, reset_constant_em=0.0)
    gradients, calls = method.gradients, []

    def poisoned(loss, leaves):
        grads = gradients(loss, leaves)
        calls.append(len(calls))
        return [torch.full_like(g, math.nan) for g in grads] if calls[-1] == poisoned_call else grads

    method.gradients = poisoned
    x = images(2)
    prediction = method.predict_batch(x[:, None])
    assert prediction.skipped_updates == [0, 1]  # counted on the image that completed the batch
    assert all(torch.equal(method.params[n].detach(), method.start[n]) for n in method.names)
    assert len(calls) == (1 if poisoned_call == 0 else 2) and method.stats["skipped"] == 1
    assert (method.ema is None) == (poisoned_call == 0)  # the second loss was finite: the EMA took it
    assert method.predict(x[:1]).isfinite().all()


def test_predict_batch_makes_the_same_batches_as_one_image_at_a_time():
    model = frozen_clip(temperature=20.0)
    hp = dict(batch_size=3, margin_e0=10.0, lr=0.05, reset_constant_em=0.0)
    x = images(7)
    one, grouped = make(model, **hp), make(model, **hp)
    expected = feed(one, x)
    logits = torch.cat([grouped.predict_batch(x[i:j, None]).logits for i, j in ((0, 2), (2, 7))])
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert len(grouped.pending) == len(one.pending) == 1 and grouped.stats["updates"] == 2


def test_state_round_trip_gives_identical_next_predictions():
    model = frozen_clip(temperature=20.0)
    hp = dict(batch_size=3, margin_e0=10.0, lr=0.05, reset_constant_em=0.0)
    x, later = images(5), images(4, seed=12)
    original = make(model, **hp)
    feed(original, x)  # one update, two images of the next batch kept
    state = original.state_dict()
    assert len(state["pending"]) == 2 and any(k.startswith("momentum.") for k in state)
    after_setup = make(model, **hp)
    after_setup.load_state_dict(state)  # as the engine resumes within a set
    carried = build_method("sar", {**TINY, **hp, "reset_state": "never"})
    carried.load_state_dict(state)  # as the engine restores state between sets
    carried.setup(model, TestSet.named("folder", CLASSES))
    fresh_set = build_method("sar", {**TINY, **hp})
    fresh_set.load_state_dict(state)
    fresh_set.setup(model, TestSet.named("folder", CLASSES))  # per-set: a fresh start
    expected = feed(original, later)  # completes the kept batch: an update in the middle
    assert torch.equal(feed(after_setup, later), expected)
    assert all(torch.equal(v, original.state_dict()[k]) for k, v in after_setup.state_dict().items())
    assert all(torch.equal(carried.params[n], state[f"param.{n}"]) for n in carried.names) and not carried.pending
    assert all(torch.equal(fresh_set.params[n], fresh_set.start[n]) for n in fresh_set.names) and fresh_set.ema is None
    state["param.ln_pre.weight"].zero_()  # a copy: the method's tensors are not touched
    assert original.params["ln_pre.weight"].abs().sum() > 0


# -- through the engine ------------------------------------------------------------------------------------------


def test_a_killed_sar_run_resumes_to_an_uninterrupted_run(tmp_path):
    checkpoint = tmp_path / "tiny.safetensors"
    mintclip.save_clip(tiny_clip(), checkpoint)
    data = random_images(tmp_path / "tree", ["cat", "dog", "fox"], per_class=6)
    hp = ["--hp", "precision=fp32", "skip_last_blocks=1", "batch_size=4", "margin_e0=2.0", "lr=0.05",
          "--save-every", "3"]  # every image reliable (ln 3 < 2): real updates; saves fall inside batches
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main(run_args(data, checkpoint, whole, "sar", *hp)) == 0
    records = read_records(whole / "seed0" / "folder" / "records.jsonl")
    assert len(records) == 18 and all(r.keys() >= {"top5", "zeroshot"} for r in records)
    diagnostics = (whole / "seed0" / "folder" / "diagnostics.json").read_text()
    assert '"updates": 4' in diagnostics and '"images_not_in_an_update": 2' in diagnostics
    slow = ("import time, mintclip.adapt.sar as s; p = s.SAR.predict; "
            "s.SAR.predict = lambda self, views: time.sleep(0.05) or p(self, views); ")
    path = killed / "seed0" / "folder" / "records.jsonl"
    kill_part_way(run_args(data, checkpoint, killed, "sar", *hp), path, at_least=7, prelude=slow)
    assert 7 <= len(read_records(path)) < 18
    assert main(run_args(data, checkpoint, killed, "sar", *hp, "--resume")) == 0
    assert comparable(killed) == comparable(whole)
