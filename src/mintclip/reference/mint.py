"""MINT in the order of Jamieyi2004/MINT@b02acc7 models/tta.py: every forward runs the prompt-free query
pass again and the prompted pass over all views with gradients, though only the selected views enter
the entropy."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ..adapt.mint import MINT


def predict(mint: MINT, views: Tensor) -> Tensor:
    """views (V, 3, H, W) -> logits (C,), the numbers of `MINT.predict` to float rounding."""
    optimizer = mint.fresh_optimizer()
    selected = None
    with torch.enable_grad():
        for _ in range(mint.config.steps):
            index, distance = mint.retrieve(mint.queries(views), tuning=True)
            text = mint.text_features()
            logits = mint.logits(mint.image_features(views, index), text)
            selected = mint.select(logits.detach()) if selected is None else selected
            loss = mint.loss(logits[selected], distance)
            optimizer.zero_grad()
            loss.backward()
            mint.guarded_step(optimizer)
    return mint.classify(views[:1], mint.queries(views[:1]))
