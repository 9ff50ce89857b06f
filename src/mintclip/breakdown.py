"""Where a method's time per test image goes, for `mintclip bench --breakdown`.

A `PhaseClock` wraps the calls each phase consists of, with a device synchronisation on both sides:
the image encoder (`forward`, MINT's `cls_taps`), the text encoder (`encode_embeddings`,
`encode_shared_prefix`), the backward passes (`torch.autograd.grad`, `Tensor.backward`) and the
optimiser (`AdamW.step`); view making is timed by the bench itself. A call made inside another timed
call counts to the outer one only, so no time counts twice; what no phase covers (selection, losses,
bookkeeping, host transfers) is the rest. It also counts the tokens each encoder runs: image tokens
are views x (patches + 1), scaled by the share of blocks run for a partial pass (MINT's queries), and
text tokens are the positions the text transformer runs (a shared prefix once per prompt). Installed
in a benchmark's own process only: it patches torch's autograd and AdamW entry points.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import torch

from .model import CLIP

PHASES = ("views", "image forward", "text forward", "backward", "optimiser")
WORK_PHASES = PHASES[1:]  # what a bound consists of


def synchronise(device: str) -> None:
    """Wait for the device's queued work, so that a host timer measures it (nothing to wait for on a CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class PhaseClock:
    def __init__(self, device: str) -> None:
        self.device = device
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.tokens = {"image": 0.0, "text": 0.0}
        self.active = False  # only timed images count; the set-up and warm-up do not
        self._depth = 0

    def timed(self, phase: str, fn: Callable, tokens: Callable[..., tuple[str, float]] | None = None) -> Callable:
        """`fn`, timed as `phase` when called outside any other timed call; `tokens(*args, **kwargs)` ->
        (encoder, count) is added once the call has returned."""
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not self.active or self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            synchronise(self.device)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                synchronise(self.device)
                self.seconds[phase] += time.perf_counter() - start
                self._depth -= 1
                if tokens is not None:
                    encoder, count = tokens(*args, **kwargs)
                    self.tokens[encoder] += count
        return wrapper

    def install(self, model: CLIP) -> None:
        """On this model's encoders, and process-wide on autograd and AdamW."""
        visual, text = model.visual, model.text
        vision = model.config.vision
        per_view = (vision.image_size // vision.patch_size) ** 2 + 1 if vision.kind == "vit" else 1

        def image_tokens(images, *args, **kwargs):
            return "image", images.shape[0] * per_view

        def tap_tokens(images, blocks, *args, **kwargs):
            return "image", images.shape[0] * per_view * (max(blocks) + 1) / len(visual.blocks)

        def embedding_tokens(embeddings, eot_index, length=None, **_):
            return "text", embeddings.shape[0] * (int(eot_index.max()) + 1 if length is None else length)

        def prefix_tokens(prefix, suffixes, eot_index, length=None, **_):  # deep_prefix adds no token
            prompts = 1 if prefix.ndim == 2 else prefix.shape[0]
            length = int(eot_index.max()) + 1 if length is None else length
            return "text", prompts * (prefix.shape[-2] + suffixes.shape[0] * length)

        visual.forward = self.timed("image forward", visual.forward, image_tokens)
        if hasattr(visual, "cls_taps"):
            visual.cls_taps = self.timed("image forward", visual.cls_taps, tap_tokens)
        text.encode_embeddings = self.timed("text forward", text.encode_embeddings, embedding_tokens)
        def group_tokens(prefix, groups, *args, **kwargs):
            prompts = 1 if prefix.ndim == 2 else prefix.shape[0]
            return "text", prompts * (prefix.shape[-2] + sum(s.shape[0] * s.shape[1] for s, _ in groups))

        text.encode_shared_prefix = self.timed("text forward", text.encode_shared_prefix, prefix_tokens)
        text.encode_prefix_groups = self.timed("text forward", text.encode_prefix_groups, group_tokens)
        torch.autograd.grad = self.timed("backward", torch.autograd.grad)
        torch.Tensor.backward = self.timed("backward", torch.Tensor.backward)
        torch.optim.AdamW.step = self.timed("optimiser", torch.optim.AdamW.step)

    def per_image(self, images: int, total_seconds: float) -> tuple[dict[str, float], dict[str, float]]:
        """(ms per image by phase, with the rest; tokens per image by encoder)."""
        ms = {phase: 1000 * s / images for phase, s in self.seconds.items()}
        ms["rest"] = 1000 * total_seconds / images - sum(ms.values())
        return ms, {encoder: count / images for encoder, count in self.tokens.items()}
