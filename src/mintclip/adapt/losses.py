"""The entropy objectives of the TPT family (TPT `tpt_classification.py`), in fp32."""

from __future__ import annotations

import torch
from torch import Tensor


def entropy(logits: Tensor) -> Tensor:
    """Per-row entropy of softmax(logits): (V, C) -> (V,)."""
    logits = logits.float()
    return -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)


def select_confident_views(logits: Tensor, fraction: float = 0.1) -> Tensor:
    """Indices of the int(V * fraction) lowest-entropy views (6 of 64) of logits (V, C), most confident first."""
    return most_confident(entropy(logits), fraction)


def most_confident(view_entropy: Tensor, fraction: float) -> Tensor:
    """Indices of the int(V * fraction) smallest of view_entropy (V,); at least one, where the reference
    would select none (fewer than 10 views) and take a NaN loss."""
    return view_entropy.argsort()[: max(1, int(view_entropy.shape[0] * fraction))]


def marginal_entropy(logits: Tensor) -> Tensor:
    """Entropy of the mean of the views' probabilities, computed in log space as TPT's avg_entropy."""
    log_probs = logits.float().log_softmax(-1)
    mean_log_prob = log_probs.logsumexp(0) - torch.log(torch.tensor(float(logits.shape[0])))
    mean_log_prob = mean_log_prob.clamp(min=torch.finfo(mean_log_prob.dtype).min)
    return -(mean_log_prob * mean_log_prob.exp()).sum(-1)
