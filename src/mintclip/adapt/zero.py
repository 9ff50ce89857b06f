"""ZERO (Farina et al., NeurIPS'24, "Frustratingly Easy Test-Time Adaptation of Vision-Language Models").

Why it works: TPT's one entropy step mostly sharpens the marginal of its most confident views, so ZERO
drops the step and the temperature. It keeps the int(64 * 0.3) = 19 lowest-entropy of 64 views, lets
each vote one-hot for its top class, and predicts the class with most votes. No gradients, no AugMix
(ZERO's `data/augs.py` crops and flips only), text features cached once per set.

Faithful to FarinaMatteo/zero@c609f7c `ttas/zero.py` (`Zero.zero`), `ttas/base.py`
(`confidence_filter`) and `utils/tools.py` (`greedy_break`, `break_sample_tie`):

* Filter: entropy of softmax(cos / T), T = 1 / logit_scale.exp(). The code writes the
  entropy as p * log p, which is NaN once a probability underflows to 0 (a cosine gap above ~1, beyond
  CLIP); we use log_softmax (`losses.entropy`), equal wherever the code's value is finite.
* Vote: the code sums softmax(cos / float32 eps) over the kept views, a one-hot vote per
  view except when a view's top two cosines lie within a few ulps; we count argmax votes.
* Ties (zero.py, the `len(ties) > 1` branch): when several classes share the most votes, the code
  walks the views that the filter discarded, from most to least confident (`full_idx[k:]`, the rest of
  `confidence_filter`'s entropy argsort, since commit cbd7949 "bugfix greedy_break"; our reference is
  c609f7c), and picks the first one whose argmax is a tied class (`greedy_break`). That is the default
  `tie_break="confidence"`. `"view_order"` is the code before cbd7949, which walked `l[k:]`, the views
  k = int(V * gamma) .. V-1 in their input order (kept views can be among them). If no walked view
  predicts a tied class, `break_sample_tie` takes the argmax of the first walked view after
  `logit[~ties] = -inf`; `ties` is an int tensor, so `~t` is the index -t-1 and the classes masked are
  C-1-t, not the untied ones: the winner is usually that view's own (untied) top class. The default
  `tie_fallback="reference"` reproduces this; `"tied_classes"` is the evident intent, the tied class that
  view scores highest. With no views left to walk (gamma = 1) the code fails (`logits[0]` of an empty
  tensor); we give the first tied class. The code then adds one vote to the winner, tied or not.
* Logits: the code returns those vote counts, so its top-5 order among equal counts is `topk`'s whim.
  We return counts (+1 for a tie winner, as the code) plus 0.5 * the views' mean softmax probability,
  which is below one vote, so the argmax is ZERO's prediction and equal counts rank by confidence.
  Softmax of these logits is not a calibrated probability (nor does ZERO claim one).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import TestSet
from .base import MethodConfig, Prediction, register
from .losses import entropy
from .zeroshot import FixedPromptMethod, Templates

SECONDARY_WEIGHT = 0.5  # mean probability is at most 1, so this never outweighs one vote


@dataclasses.dataclass
class ZeroConfig(MethodConfig):
    gamma: float = 0.3  # fraction of views kept (ttas/zero.py: self.gamma; 0.1 in earlier commits)
    templates: Templates = "single"  # "a photo of a {}."; "simple_7" is ZERO's --templates (the 7 Tip templates)
    # ties walk the discarded views: "confidence" most confident first (c609f7c, since cbd7949),
    # "view_order" in input order (the code before cbd7949)
    tie_break: Literal["confidence", "view_order"] = "confidence"
    # no walked view names a tied class: "reference" the code's break_sample_tie (masks classes C-1-t),
    # "tied_classes" its intent (the first walked view's best tied class)
    tie_fallback: Literal["reference", "tied_classes"] = "reference"


def zero_vote(logits: Tensor, gamma: float = 0.3, tie_break: str = "confidence",
              tie_fallback: str = "reference") -> Tensor:
    """ZERO on one image: logits (V, C) at the model's temperature -> (C,) scores whose argmax is ZERO's
    prediction: votes of the int(V * gamma) most confident views, +1 for a tie's winner, plus a confidence
    term below one vote (module docstring)."""
    return zero_votes(logits[None], gamma, tie_break, tie_fallback)[0]


def zero_votes(logits: Tensor, gamma: float = 0.3, tie_break: str = "confidence",
               tie_fallback: str = "reference") -> Tensor:
    """`zero_vote` for B images at once, logits (B, V, C) -> (B, C); only tied images are walked one by one."""
    n_views, n_classes = logits.shape[-2:]
    logits = logits.float()
    n_keep = int(n_views * gamma)
    order = entropy(logits).argsort(-1)  # (B, V) most confident first
    kept = logits.gather(1, order[:, :n_keep, None].expand(-1, -1, n_classes)).argmax(-1)  # (B, n_keep)
    votes = F.one_hot(kept, n_classes).sum(1).float()  # (B, C)
    tied = votes == votes.max(-1, keepdim=True).values  # (B, C) bool
    rest = order[:, n_keep:] if tie_break != "view_order" else torch.arange(n_keep, n_views, device=logits.device)
    walked = logits.gather(1, rest.expand(len(logits), -1)[..., None].expand(-1, -1, n_classes))  # (B, V - n_keep, C)
    winner = break_ties(tied, walked, tie_fallback)  # (B,)
    votes += F.one_hot(winner, n_classes) * (tied.sum(-1, keepdim=True) > 1)  # +1 where a tie was broken
    return votes + SECONDARY_WEIGHT * logits.softmax(-1).mean(-2)


def break_ties(tied: Tensor, walked: Tensor, fallback: str = "reference") -> Tensor:
    """tied (B, C) bool, walked (B, F, C) logits in the order they are tried -> each image's winning
    class (B,): the first walked view whose argmax is tied (`greedy_break`); else the first walked view's
    argmax, with classes C-1-t masked for each tied t ("reference": `break_sample_tie`'s `logit[~ties]`)
    or with the untied classes masked ("tied_classes"); with no walked views, the first tied class.
    Tensor operations only (argmax returns the first of equal maxima), so nothing is read back."""
    first_tied = tied.long().argmax(-1)  # (B,)
    if walked.shape[1] == 0:
        return first_tied
    preds = walked.argmax(-1)  # (B, F)
    hits = tied.gather(1, preds)  # (B, F): the view's argmax is a tied class
    first_hit = preds.gather(1, hits.long().argmax(-1, keepdim=True))[:, 0]
    masked = tied.flip(-1) if fallback == "reference" else ~tied  # ~t indexes class C-1-t
    fallback_pick = walked[:, 0].masked_fill(masked, float("-inf")).argmax(-1)
    return torch.where(hits.any(-1), first_hit, fallback_pick)


@register
class Zero(FixedPromptMethod):
    """ZERO: zero-temperature majority vote of the most confident augmented views (module docstring)."""

    name = "zero"
    n_views = 64
    calibrated = False  # vote counts: no ECE
    Config = ZeroConfig
    source = "FarinaMatteo/zero@c609f7c ttas/zero.py (Zero.zero), ttas/base.py, utils/tools.py; NeurIPS'24"

    def augmix(self, test_set: TestSet) -> bool:
        return False  # ZERO's MultiViewCropAndFlip: crops and flips for every set

    @torch.no_grad()
    def predict(self, views: Tensor) -> Tensor:
        cfg = self.config
        return zero_vote(self.class_logits(self.encode_views(views)), cfg.gamma, cfg.tie_break, cfg.tie_fallback)

    @torch.no_grad()
    def predict_batch(self, views: Tensor) -> Prediction:
        """All B * V views (B, V, 3, H, W) through the encoder in one pass, then the B votes together."""
        features = self.encode_views(views)  # (B, V, D)
        cfg = self.config
        votes = zero_votes(self.class_logits(features), cfg.gamma, cfg.tie_break, cfg.tie_fallback)
        return Prediction(votes, [0] * len(views), features[:, 0])
