"""MTA, MeanShift for Test-time Augmentation (Zanella & Ben Ayed, CVPR'24, "On the Test-Time Zero-Shot
Generalization of Vision-Language Models: Do We Really Need Prompt Learning?").

Why it works: instead of tuning a prompt, MTA looks for the mode of the 64 views' image embeddings,
a mean-shift whose kernel is weighted by each view's inlierness y. Views whose predictions agree with
many others (affinity of their class distributions) and lie near the mode get a high y; outlier crops
get a low one. The mode is then classified like any image embedding. No gradients, no AugMix (MTA's
`main.py` builds views with `augmix=len(set_id)>1 and args.tpt`, false under `--mta`).

Faithful to MaxZanella/MTA `mta.py` (`solve_mta`, `gaussian_kernel`) as called from `main.py`:

* Bandwidth (mta.py:25-30): h_i = sqrt(0.5 * mean of the squared distances to the k = int(0.3 (N-1))
  nearest other views), from `torch.cdist` sorted with the smallest entry dropped as the view itself.
* Affinity (mta.py:33): A = softmax(logits) @ softmax(logits).T at temperature 1 on the 100-scaled logits.
* y starts uniform and persists across outer iterations; the mode starts at view 0 (mta.py:36-40).
* Exactly 5 outer iterations (mta.py:82-84). Each: density at the current mode, then up to 5 updates
  y = softmax((density + lambda_q A y) / lambda_y), stopping early once ||y_old - y|| < 1e-6
  (mta.py:52-63); then up to 5 mean-shift steps mode = normalise(sum_i density_i y_i f_i / sum_i density_i
  y_i), the density recomputed at each step, stopping early once ||mode_old - mode|| < 1e-6 (mta.py:69-80).
  The early-stop checks are kept exactly, one host sync each.
* lambda_q 4, lambda_y 0.2 are `main.py`'s defaults; its argparse gives them no type, so values passed
  on the command line arrived as strings there and the defaults are what the paper's runs used.
* Precision: the encoders under autocast (the code's `torch.cuda.amp.autocast()`), everything after
  them in fp32, as in the code where the normalisation already promotes the features to fp32.
* One departure, where the code has no answer: if a view's k nearest views coincide with it (a blank
  image, whose crops are all equal), its bandwidth is 0 and the code's density 0/0 = NaN. We floor the
  bandwidth at fp32 eps (1.2e-7; CLIP's are tenths), so the density is 1 at the view and 0 away.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import Tensor

from .base import MethodConfig, register
from .zeroshot import FixedPromptMethod


@dataclasses.dataclass
class MTAConfig(MethodConfig):
    lambda_q: float = 4.0  # weight of the affinity (quadratic) term, main.py --lambda_q
    lambda_y: float = 0.2  # weight of the entropic term, main.py --lambda_y
    templates: str = "single"  # "a photo of a {}." (main.py --ctx_init a_photo_of_a)


class MTASolution(NamedTuple):
    logits: Tensor  # (C,) logit_scale * mode @ text.T
    mode: Tensor  # (D,) unit norm
    inlierness: Tensor  # (N,) y, sums to 1


def gaussian_density(mode: Tensor, bandwidth: Tensor, features: Tensor) -> Tensor:
    """mode (D,), bandwidth (N,), features (N, D) -> (N,) exp(-||f_i - mode||^2 / (2 h_i^2))."""
    distance = (features - mode).norm(dim=-1)
    return torch.exp(-distance**2 / (2 * bandwidth**2))


def solve_mta(features: Tensor, text: Tensor, logit_scale: Tensor | float, lambda_q: float = 4.0,
              lambda_y: float = 0.2, neighbours: float = 0.3, max_iter: int = 5, tol: float = 1e-6) -> MTASolution:
    """features (N, D) and text (C, D), both L2-normalised -> the inlierness-weighted mode of the views
    and its logits (module docstring). View 0 must be the original image: the mode starts there."""
    features, text = features.float(), text.float()
    n = features.shape[0]
    logits = logit_scale * features @ text.T  # (N, C)

    k = int(neighbours * (n - 1))
    nearest = torch.cdist(features, features).sort(dim=1).values[:, 1:k + 1]  # (N, k), self dropped
    bandwidth = (0.5 * (nearest**2).mean(dim=1)).sqrt().clamp_min(torch.finfo(torch.float32).eps)  # (N,)

    probs = logits.softmax(-1)  # (N, C)
    affinity = probs @ probs.T  # (N, N)

    y = torch.full((n,), 1.0 / n, device=features.device)  # (N,)
    mode = features[0]  # (D,)
    for _ in range(max_iter):
        density = gaussian_density(mode, bandwidth, features)  # (N,)
        for _ in range(max_iter):
            y_old, y = y, ((density + lambda_q * affinity @ y) / lambda_y).softmax(-1)
            if torch.linalg.vector_norm(y_old - y) < tol:
                break
        for _ in range(max_iter):
            weights = gaussian_density(mode, bandwidth, features) * y  # (N,)
            mode_old, mode = mode, weights @ features / weights.sum()
            mode = mode / mode.norm()
            if torch.linalg.vector_norm(mode_old - mode) < tol:
                break
    return MTASolution(logit_scale * mode @ text.T, mode, y)


@register
class MTA(FixedPromptMethod):
    """MTA: classify the inlierness-weighted MeanShift mode of the views' embeddings (module docstring)."""

    name = "mta"
    n_views = 64
    Config = MTAConfig
    source = "MaxZanella/MTA mta.py (solve_mta), main.py (--mta, lambda defaults); CVPR'24"

    def augmix(self, set_id: str) -> bool:
        return False  # main.py: augmix = len(set_id) > 1 and args.tpt, false for --mta

    @torch.no_grad()
    def predict(self, views: Tensor) -> Tensor:
        features = self.encode_views(views)  # (V, D), the encoder under autocast
        scale = self.model.logit_scale.exp().float()
        return solve_mta(features, self.text, scale, self.config.lambda_q, self.config.lambda_y).logits
