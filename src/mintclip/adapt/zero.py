"""ZERO (Farina et al., NeurIPS'24, "Frustratingly Easy Test-Time Adaptation of Vision-Language Models").

Why it works: TPT's one entropy step mostly sharpens the marginal of its most confident views, so ZERO
drops the step and the temperature. It keeps the int(64 * 0.3) = 19 lowest-entropy of 64 views, lets
each vote one-hot for its top class, and predicts the class with most votes. No gradients, no AugMix
(ZERO's `data/augs.py` crops and flips only), text features cached once per set.

Faithful to FarinaMatteo/zero `ttas/zero.py` (`Zero.zero`, lines 50-87), `ttas/base.py`
(`confidence_filter`) and `utils/tools.py` (`greedy_break`, `break_sample_tie`):

* Filter: entropy of softmax(cos / T), T = 1 / logit_scale.exp() (zero.py:66). The code writes the
  entropy as p * log p, which is NaN once a probability underflows to 0 (a cosine gap above ~1, beyond
  CLIP); we use log_softmax (`losses.entropy`), equal wherever the code's value is finite.
* Vote: the code sums softmax(cos / float32 eps) over the kept views (zero.py:70-71), a one-hot vote per
  view except when a view's top two cosines lie within a few ulps; we count argmax votes.
* Ties (zero.py:74-84): when several classes share the most votes, the code walks `l[k:]`, the views
  k = int(V * gamma) .. V-1 **in their input order** (not sorted by entropy, so kept views can be among
  them), and picks the first one whose argmax is a tied class (`greedy_break`). That is our default
  `tie_break="view_order"`; `"confidence"` walks the discarded views from most to least confident
  instead, the paper's reading (methods.md §5). If no such view exists, `break_sample_tie` means to take
  the argmax over the tied classes of the first of those views, but `logit[~ties]` on an int tensor is a
  bitwise NOT (negative indices), so it masks classes C-1-t and can return a class that was not tied. We
  implement the evident intent. With no views left to walk (V * gamma = V) the first tied class wins, as
  the code's `torch.max` would pick. The code then adds one vote to the winner (zero.py:84).
* Logits: the code returns those vote counts, so its top-5 order among equal counts is `topk`'s whim.
  We return counts (+1 for a tie winner, as the code) plus 0.5 * the views' mean softmax probability,
  which is below one vote, so the argmax is ZERO's prediction and equal counts rank by confidence.
  Softmax of these logits is not a calibrated probability (nor does ZERO claim one).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import MethodConfig, register
from .losses import entropy
from .zeroshot import FixedPromptMethod

TIE_BREAKS = ("view_order", "confidence")
SECONDARY_WEIGHT = 0.5  # mean probability is at most 1, so this never outweighs one vote


@dataclasses.dataclass
class ZeroConfig(MethodConfig):
    gamma: float = 0.3  # fraction of views kept (ttas/zero.py: self.gamma; 0.1 in earlier commits)
    templates: str = "single"  # "a photo of a {}."; "simple_7" is ZERO's --templates (the 7 Tip templates)
    tie_break: str = "view_order"  # "view_order" as the code, or "confidence" (the paper's reading)

    def __post_init__(self) -> None:
        if self.tie_break not in TIE_BREAKS:
            raise ValueError(f"tie_break={self.tie_break!r} is not known; use one of {', '.join(TIE_BREAKS)}")


def zero_vote(logits: Tensor, gamma: float = 0.3, tie_break: str = "view_order") -> Tensor:
    """ZERO on one image: logits (V, C) at the model's temperature -> (C,) scores whose argmax is ZERO's
    prediction: votes of the int(V * gamma) most confident views, +1 for a tie's winner, plus a confidence
    term below one vote (module docstring)."""
    return zero_votes(logits[None], gamma, tie_break)[0]


def zero_votes(logits: Tensor, gamma: float = 0.3, tie_break: str = "view_order") -> Tensor:
    """`zero_vote` for B images at once, logits (B, V, C) -> (B, C); only tied images are walked one by one."""
    n_views, n_classes = logits.shape[-2:]
    logits = logits.float()
    n_keep = int(n_views * gamma)
    order = entropy(logits).argsort(-1)  # (B, V) most confident first
    kept = logits.gather(1, order[:, :n_keep, None].expand(-1, -1, n_classes)).argmax(-1)  # (B, n_keep)
    votes = F.one_hot(kept, n_classes).sum(1).float()  # (B, C)
    tied = votes == votes.max(-1, keepdim=True).values  # (B, C) bool
    for b in (tied.sum(-1) > 1).nonzero()[:, 0].tolist():
        fallback = logits[b, n_keep:] if tie_break == "view_order" else logits[b, order[b, n_keep:]]  # (V - n_keep, C)
        votes[b, break_tie(tied[b], fallback)] += 1
    return votes + SECONDARY_WEIGHT * logits.softmax(-1).mean(-2)


def break_tie(tied: Tensor, fallback: Tensor) -> Tensor:
    """tied (C,) bool, fallback (F, C) logits in the order they are tried -> the winning class index:
    the first fallback view whose argmax is tied, else the tied class the first fallback view scores
    highest, else (no fallback views) the first tied class."""
    preds = fallback.argmax(-1)  # (F,)
    hits = preds[tied[preds]]
    if len(hits):
        return hits[0]
    if len(fallback):
        return fallback[0].masked_fill(~tied, float("-inf")).argmax()
    return tied.nonzero()[0, 0]


@register
class Zero(FixedPromptMethod):
    """ZERO: zero-temperature majority vote of the most confident augmented views (module docstring)."""

    name = "zero"
    n_views = 64
    Config = ZeroConfig
    source = "FarinaMatteo/zero ttas/zero.py (Zero.zero), ttas/base.py, utils/tools.py; NeurIPS'24"

    def augmix(self, set_id: str) -> bool:
        return False  # ZERO's MultiViewCropAndFlip: crops and flips for every set

    @torch.no_grad()
    def predict(self, views: Tensor) -> Tensor:
        return zero_vote(self.view_logits(views), self.config.gamma, self.config.tie_break)

    @torch.no_grad()
    def predict_batch(self, views: Tensor) -> tuple[Tensor, list[int]]:
        """All B * V views (B, V, 3, H, W) through the encoder in one pass, then the B votes together."""
        logits = self.view_logits(views)  # (B, V, C)
        return zero_votes(logits, self.config.gamma, self.config.tie_break), [0] * len(views)
