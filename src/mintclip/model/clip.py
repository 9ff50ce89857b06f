"""One CLIP model for every checkpoint format, in the OpenAI / open_clip state-dict layout."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import CLIPConfig
from .text import TextTransformer
from .vision import ModifiedResNet, VisionTransformer

# OpenAI keeps the text tower's parameters at the top level of the state dict; we keep them in `.text`.
TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


class CLIP(nn.Module):
    """`encode_image` and `encode_text` give unnormalised features (B, embed_dim), as OpenAI's CLIP.

    `logit_scale` is the log of the temperature multiplier, as stored in every checkpoint: logits are
    `logit_scale.exp() * cos(image, text)` (100 for OpenAI's weights). `state_dict()` and
    `load_state_dict()` speak the OpenAI layout, so checkpoints round-trip unchanged.
    """

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        eps = config.layer_norm_eps
        if config.vision.kind == "vit":
            self.visual: VisionTransformer | ModifiedResNet = VisionTransformer(
                config.vision, config.embed_dim, config.act, eps)
        else:
            self.visual = ModifiedResNet(config.vision, config.embed_dim)
        self.text = TextTransformer(config.text, config.embed_dim, config.act, eps)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.register_state_dict_post_hook(_text_keys_to_openai)
        self.register_load_state_dict_pre_hook(_text_keys_from_openai)

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def encode_image(self, images: Tensor) -> Tensor:
        return self.visual(images)

    def encode_text(self, tokens: Tensor) -> Tensor:
        return self.text(tokens)

    def forward(self, images: Tensor, tokens: Tensor) -> Tensor:
        """Logits (B_images, N_texts) = exp(logit_scale) * cosine similarity."""
        image = F.normalize(self.encode_image(images), dim=-1)
        text = F.normalize(self.encode_text(tokens), dim=-1)
        return self.logit_scale.exp() * image @ text.t()


def _text_keys_to_openai(module: nn.Module, state: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    for key in [k for k in state if k.startswith(prefix + "text.")]:
        state[prefix + key[len(prefix) + len("text."):]] = state.pop(key)


def _text_keys_from_openai(module: nn.Module, state: dict[str, Any], prefix: str, *args: Any) -> None:
    for key in [k for k in state if k.startswith(prefix)]:
        if key[len(prefix):].startswith(TEXT_KEYS):
            state[prefix + "text." + key[len(prefix):]] = state.pop(key)
