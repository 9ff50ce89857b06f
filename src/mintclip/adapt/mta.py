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
  The early-stop checks are kept exactly, one host sync each; B images solved together (`predict_batch`)
  share that sync, each frozen at its own stop (`iterate`), so each runs exactly its own iterations.
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
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from ..data import TestSet
from .base import MethodConfig, Prediction, register
from .zeroshot import FixedPromptMethod


@dataclasses.dataclass
class MTAConfig(MethodConfig):
    lambda_q: float = 4.0  # weight of the affinity (quadratic) term, main.py --lambda_q
    lambda_y: float = 0.2  # weight of the entropic term, main.py --lambda_y
    templates: str = "single"  # "a photo of a {}." (main.py --ctx_init a_photo_of_a)


class MTASolution(NamedTuple):
    logits: Tensor  # (C,) logit_scale * mode @ text.T; (B, C) for a batch of images
    mode: Tensor  # (D,) unit norm; (B, D)
    inlierness: Tensor  # (N,) y, sums to 1; (B, N)


def gaussian_density(mode: Tensor, bandwidth: Tensor, features: Tensor) -> Tensor:
    """mode (..., D), bandwidth (..., N), features (..., N, D) -> (..., N) exp(-||f_i - mode||^2 / (2 h_i^2))."""
    distance = (features - mode.unsqueeze(-2)).norm(dim=-1)
    return torch.exp(-distance**2 / (2 * bandwidth**2))


def iterate(update: Callable[[Tensor], Tensor], x: Tensor, max_iter: int, tol: float) -> Tensor:
    """Up to max_iter x <- update(x) on x (B, ...), each image frozen after the first step that moved it
    less than tol: exactly the iterations the reference's per-image early stop gives it. The loop ends
    early once every image is frozen only on a CPU, where reading that back costs nothing; on a GPU the
    frozen images ride along to max_iter, the same result without a host synchronisation per step."""
    active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)  # (B,)
    for _ in range(max_iter):
        new = update(x)
        moved = torch.linalg.vector_norm((x - new).reshape(len(x), -1), dim=1)  # (B,)
        x = torch.where(active.view(-1, *[1] * (x.ndim - 1)), new, x)
        active &= ~(moved < tol)  # written as the reference's test, so a NaN step keeps iterating as there
        if x.device.type == "cpu" and not bool(active.any()):
            break
    return x


def solve_mta(features: Tensor, text: Tensor, logit_scale: Tensor | float, lambda_q: float = 4.0,
              lambda_y: float = 0.2, neighbours: float = 0.3, max_iter: int = 5, tol: float = 1e-6) -> MTASolution:
    """features (N, D) and text (C, D), both L2-normalised -> the inlierness-weighted mode of the views
    and its logits (module docstring). View 0 must be the original image: the mode starts there.
    The views of B images (B, N, D) are solved together, each with its own early stops -> (B, ...)."""
    single = features.ndim == 2
    features, text = features.float().reshape(-1, *features.shape[-2:]), text.float()  # (B, N, D)
    n_images, n = features.shape[:2]
    logits = logit_scale * features @ text.T  # (B, N, C)

    k = int(neighbours * (n - 1))
    nearest = torch.cdist(features, features).sort(dim=-1).values[..., 1:k + 1]  # (B, N, k), self dropped
    bandwidth = (0.5 * (nearest**2).mean(dim=-1)).sqrt().clamp_min(torch.finfo(torch.float32).eps)  # (B, N)

    probs = logits.softmax(-1)  # (B, N, C)
    affinity = probs @ probs.mT  # (B, N, N)

    def shift(mode: Tensor, y: Tensor) -> Tensor:  # (B, D), (B, N) -> (B, D)
        weights = gaussian_density(mode, bandwidth, features) * y  # (B, N)
        mode = (weights.unsqueeze(1) @ features)[:, 0] / weights.sum(-1, keepdim=True)
        return mode / mode.norm(dim=-1, keepdim=True)

    y = torch.full((n_images, n), 1.0 / n, device=features.device)  # (B, N)
    mode = features[:, 0]  # (B, D)
    for _ in range(max_iter):
        density = gaussian_density(mode, bandwidth, features)  # (B, N)
        y = iterate(lambda y: ((density + lambda_q * (affinity @ y.unsqueeze(-1))[..., 0]) / lambda_y).softmax(-1),
                    y, max_iter, tol)
        mode = iterate(lambda mode: shift(mode, y), mode, max_iter, tol)
    solution = MTASolution(logit_scale * mode @ text.T, mode, y)
    return MTASolution(*(t[0] for t in solution)) if single else solution


@register
class MTA(FixedPromptMethod):
    """MTA: classify the inlierness-weighted MeanShift mode of the views' embeddings (module docstring)."""

    name = "mta"
    n_views = 64
    Config = MTAConfig
    source = "MaxZanella/MTA mta.py (solve_mta), main.py (--mta, lambda defaults); CVPR'24"

    def augmix(self, test_set: TestSet) -> bool:
        return False  # main.py: augmix = len(set_id) > 1 and args.tpt, false for --mta

    @torch.no_grad()
    def predict(self, views: Tensor) -> Tensor:
        features = self.encode_views(views)  # (V, D), the encoder under autocast
        scale = self.model.logit_scale.exp().float()
        return solve_mta(features, self.text, scale, self.config.lambda_q, self.config.lambda_y).logits

    @torch.no_grad()
    def predict_batch(self, views: Tensor) -> Prediction:
        """All B * V views (B, V, 3, H, W) through the encoder in one pass, then the B MeanShifts together."""
        features = self.encode_views(views)  # (B, V, D)
        scale = self.model.logit_scale.exp().float()
        solution = solve_mta(features, self.text, scale, self.config.lambda_q, self.config.lambda_y)
        return Prediction(solution.logits, [0] * len(views), features[:, 0])
