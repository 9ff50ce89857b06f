"""TPT in the order of azshue/TPT@63ecbac tpt_classification.py (also C-TPT's): `test_time_tuning`
re-encodes the views in every step's forward, the text runs over 77 tokens per class, and the
prediction encodes view 0 again."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .text import padded_class_features

if TYPE_CHECKING:
    from ..adapt.tpt import TPT


def predict(tpt: TPT, views: Tensor) -> Tensor:
    """views (V, 3, H, W) -> logits (C,), the numbers of `TPT.predict`."""
    cfg = tpt.config
    tpt.reset()
    optimizer = tpt.adamw([tpt.learner.ctx], cfg.lr, cfg.weight_decay)
    selected = None
    with torch.enable_grad():
        for _ in range(cfg.steps):
            with tpt.autocast():
                text = padded_class_features(tpt.learner)
            logits = tpt.logits(tpt.encode_views(views), text)
            selected = tpt.select(logits.detach()) if selected is None else selected
            loss = tpt.objective(logits[selected], text)
            optimizer.zero_grad()
            loss.backward()
            tpt.guarded_step(optimizer)
    with torch.no_grad(), tpt.autocast():
        logits = tpt.logits(tpt.encode_views(views[:1]), padded_class_features(tpt.learner))[0]
    tpt.reset()
    return logits
