"""The references' text pass: every class prompt padded to the full context of 77 tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..adapt.prompts import TextPromptLearner


def padded_class_features(learner: TextPromptLearner, ctx: Tensor | None = None) -> Tensor:
    """(C, D) normalised class features of the learner's context, or (K, C, D) of K contexts (K, n_ctx, W),
    each class prompt run over all 77 tokens (DynaPrompt's rows k * C + c). The numbers of
    `TextPromptLearner.forward`, which stops at the longest EOT and shares the prefix."""
    prefix = learner.prefix(ctx)
    prefixes = prefix if prefix.ndim == 3 else prefix[None]  # (K, 1 + n_ctx, W)
    n_classes = len(learner.padded_suffix)
    prompts = torch.cat([prefixes.repeat_interleave(n_classes, 0),
                         learner.padded_suffix.repeat(len(prefixes), 1, 1)], dim=1)  # (K * C, 77, W)
    features = learner.model.text.encode_embeddings(prompts, learner.eot_index.repeat(len(prefixes)),
                                                    length=prompts.shape[1]).unflatten(0, (-1, n_classes))
    features = F.normalize(features.float(), dim=-1)  # (K, C, D)
    return features if prefix.ndim == 3 else features[0]
