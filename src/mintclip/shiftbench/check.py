"""`mintclip shiftbench check`: can this proving ground judge test-time prompt tuning at all?

On real CLIP the words before the class name matter: the 80-template ensemble gains points on
ImageNet-R, a prompt that names the domain helps, and a context tuned with labels on target images
beats "a photo of a" by far. If none of that holds on shiftbench's model, prompt tuning cannot move a
prediction there, whatever the method, and a method's gain of zero says nothing about it. These
checks involve no method under study (no MINT): each asks only whether prompts can matter.

1. prompt sensitivity: the ensemble, and prompts that name the style, against "a photo of a" on the
   styled domains (sketch, rendition);
2. supervised bound: a CoOp context trained with labels (CoOp's recipe) on target images of each
   shifted domain, scored on other (held-out) images of that domain;
3. ZERO's vote of the confident views against zero-shot;
4. TPT's one step: how many predictions it flips, and how far it moves the class text features.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..adapt import build_method
from ..adapt.coop import CoOpTraining
from ..engine.train_prompts import epoch_batches, learning_rate
from ..adapt.prompts import TextPromptLearner, encode_class_prompts
from ..adapt.zero import zero_vote
from ..data import TestSet, template_set
from ..data.views import ViewMaker
from ..model import CLIP
from .render import CLASSES, SHIFTED
from .train import HELD_OUT_SEED, IMAGE_SIZE, domain_images, first_views

STYLED = ("sketch", "rendition")
# prompts that name each styled domain as a caption on the web would; their mean is reported (no pick)
STYLE_PROMPTS = {
    "sketch": ("a sketch of a {}.", "a drawing of a {}.", "a pencil sketch of a {}.", "a black and white drawing of a {}."),
    "rendition": ("a painting of a {}.", "a rendering of a {}.", "a cartoon of a {}.", "an illustration of a {}."),
}
TUNING_SEED = 2  # the supervised bound trains on images of this seed; every score is on HELD_OUT_SEED's
GAIN_NEEDED = 2.0  # points: "several points" of a check, the least gain that counts as prompts mattering


@dataclass
class DomainCheck:
    domain: str
    images: int
    zero_shot: float  # top-1 (%) of "a photo of a {}." on view 0
    ensemble: float  # CLIP's 80 ImageNet templates
    style_prompts: float | None  # mean top-1 over STYLE_PROMPTS[domain]; None for unstyled domains
    supervised: float  # a context tuned with labels on TUNING_SEED images, scored here
    # over 64 views per image; None when the checks ran on view 0 only (`run_checks(views=False)`)
    zero: float | None = None  # ZERO's vote
    tpt: float | None = None  # TPT, one step
    tpt_flips: float | None = None  # % of predictions TPT changes against zero-shot
    tpt_text_change: float | None = None  # mean 1 - cos of each class's text feature before and after the step


@torch.no_grad()
def view0_features(model: CLIP, images: list[tuple[Image.Image, int]]) -> tuple[Tensor, Tensor]:
    """The images' view-0 features (N, D), normalised, and their labels (N,)."""
    views, labels = first_views(images)
    return F.normalize(model.encode_image(views.to(model.device)).float(), dim=-1), labels


def top1(features: Tensor, text: Tensor, labels: Tensor) -> float:
    return 100.0 * float(((features @ text.T).argmax(-1).cpu() == labels).float().mean())


def supervised_context(model: CLIP, features: Tensor, labels: Tensor, seed: int = 0) -> Tensor:
    """CoOp with labels: a 4-token context from "a photo of a", trained by CoOp's recipe (`CoOpTraining`:
    SGD at 0.002 with momentum and weight decay, 50 epochs of batch 32 under its warm-up and cosine) on the
    cross-entropy of the logit-scaled cosines of the target images' view-0 features; returns the tuned
    class features (C, D)."""
    learner = TextPromptLearner(model, list(CLASSES), ctx_init="a photo of a")
    coop = CoOpTraining()
    optimizer = torch.optim.SGD([learner.ctx], lr=coop.lr, momentum=coop.momentum, weight_decay=coop.weight_decay)
    scale = model.logit_scale.detach().float().exp()
    labels = labels.to(features.device)
    with torch.enable_grad():
        for epoch in range(coop.epochs):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(epoch, coop)
            for batch in epoch_batches(len(labels), coop.batch_size, seed, epoch):
                loss = F.cross_entropy(scale * features[batch] @ learner().T, labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    with torch.no_grad():
        return learner()


def view_methods(model: CLIP, images: list[tuple[Image.Image, int]], seed: int) -> dict[str, float]:
    """ZERO and one-step TPT over 64 views per image, with TPT's flips and text-feature change."""
    test_set = TestSet.named("folder", list(CLASSES))
    zero, tpt = build_method("zero", {"precision": "fp32"}), build_method("tpt", {"precision": "fp32"})
    zero.setup(model, test_set)
    tpt.setup(model, test_set)
    maker = ViewMaker(n_views=64, size=IMAGE_SIZE, device=model.device)
    start = tpt.text_features().detach()  # (C, D) of "a photo of a"
    right = {"zero": 0, "tpt": 0, "flips": 0}
    change = 0.0
    for index, (image, label) in enumerate(images):
        features = tpt.encode_views(maker(image, seed, index))  # (64, D), the frozen encoder: shared by both
        votes = zero_vote(zero.class_logits(features), zero.config.gamma, zero.config.tie_break, zero.config.tie_fallback)
        right["zero"] += int(votes.argmax()) == label
        tpt.adapt(features)
        with torch.no_grad():
            tuned = tpt.text_features()
            logits = tpt.logits(features[:1], tuned)[0]
        tpt.reset()
        right["tpt"] += int(logits.argmax()) == label
        right["flips"] += int(logits.argmax()) != int((features[0] @ start.T).argmax())
        change += float((1 - (tuned * start).sum(-1)).mean())
    n = len(images)
    return {"zero": 100.0 * right["zero"] / n, "tpt": 100.0 * right["tpt"] / n,
            "tpt_flips": 100.0 * right["flips"] / n, "tpt_text_change": change / n}


def check_domain(model: CLIP, domain: str, per_class: int, views: bool = True) -> DomainCheck:
    images = domain_images(domain, per_class, HELD_OUT_SEED)
    features, labels = view0_features(model, images)
    with torch.no_grad():
        single = encode_class_prompts(model, list(CLASSES), ["a photo of a {}."])
        ensemble = encode_class_prompts(model, list(CLASSES), template_set("openai_80"))
        styled = None
        if domain in STYLE_PROMPTS:
            styled = sum(top1(features, encode_class_prompts(model, list(CLASSES), [prompt]), labels)
                         for prompt in STYLE_PROMPTS[domain]) / len(STYLE_PROMPTS[domain])
    tuned = supervised_context(model, *view0_features(model, domain_images(domain, per_class, TUNING_SEED)))
    return DomainCheck(domain, len(images), top1(features, single, labels), top1(features, ensemble, labels), styled,
                       top1(features, tuned, labels), **(view_methods(model, images, HELD_OUT_SEED) if views else {}))


def verdicts(checks: list[DomainCheck]) -> list[tuple[str, bool | None, str]]:
    """(check, passed, the figures it rests on) for the questions of the module docstring; TPT's step is
    reported, not judged (passed None), and the view checks are left out when they did not run."""
    by_domain = {c.domain: c for c in checks}
    styled = [by_domain[d] for d in STYLED if d in by_domain]
    prompt_gain = {c.domain: max(c.ensemble, c.ensemble if c.style_prompts is None else c.style_prompts) - c.zero_shot
                   for c in styled}
    bound_gain = sum(c.supervised - c.zero_shot for c in checks) / len(checks)
    judged = [

        ("prompt sensitivity: the ensemble or style prompts beat 'a photo of a' on each styled domain",
         bool(styled) and all(g >= GAIN_NEEDED for g in prompt_gain.values()),
         ", ".join(f"{d} {g:+.1f}" for d, g in prompt_gain.items()) + f" points (needs +{GAIN_NEEDED:g})"),
        ("supervised bound: a context tuned with labels on target images beats zero-shot on held-out ones",
         bound_gain >= GAIN_NEEDED, f"{bound_gain:+.1f} points on average (needs +{GAIN_NEEDED:g})"),
    ]
    if any(c.zero is None for c in checks):
        return judged
    zero_gain = sum(c.zero - c.zero_shot for c in checks) / len(checks)
    flips = sum(c.tpt_flips for c in checks) / len(checks)
    change = sum(c.tpt_text_change for c in checks) / len(checks)
    return judged + [
        ("ZERO's vote gains over zero-shot", zero_gain > 0, f"{zero_gain:+.1f} points on average"),
        ("TPT's one step", None, f"{flips:.1f}% of predictions flipped against zero-shot; class text features "
                                 f"moved by 1 - cos = {change:.2e} on average"),
    ]


def run_checks(model: CLIP, per_class: int = 10, domains: tuple[str, ...] = SHIFTED,
               views: bool = True) -> list[DomainCheck]:
    """Every check per domain; views=False: only those on view 0 (prompts and the supervised bound), a few
    seconds per domain, as the demo runs them."""
    return [check_domain(model, domain, per_class, views) for domain in domains]


def format_checks(checks: list[DomainCheck]) -> str:
    lines = ["| domain | images | zero-shot | ensemble | style prompts | supervised bound | ZERO | TPT | TPT flips "
             "| TPT text change |", "|---|" + "---|" * 9]
    for c in checks:
        cells = [c.domain, c.images, c.zero_shot, c.ensemble, c.style_prompts, c.supervised, c.zero, c.tpt,
                 None if c.tpt_flips is None else f"{c.tpt_flips:.1f}%",
                 None if c.tpt_text_change is None else f"{c.tpt_text_change:.2e}"]
        lines.append("| " + " | ".join("-" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)
                                       for v in cells) + " |")
    return "\n".join([*lines, "", *verdict_lines(checks)])


def verdict_lines(checks: list[DomainCheck]) -> list[str]:
    word = {True: "PASS", False: "FAIL", None: "INFO"}
    return [f"- {word[ok]}: {name}: {figures}" for name, ok, figures in verdicts(checks)]


def to_dict(checks: list[DomainCheck]) -> dict:
    return {"domains": [asdict(c) for c in checks],
            "verdicts": [{"check": name, "passed": ok, "figures": figures} for name, ok, figures in verdicts(checks)]}
