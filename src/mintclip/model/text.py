"""CLIP's causal text transformer, encodable from embeddings so that learned contexts can replace words.

Two exact savings (docs/performance.md § Text side: EOT truncation and the shared prefix). Only the
EOT token is pooled and attention is causal, so tokens after the batch's longest EOT never matter:
sequences are cut there. And when every class prompt starts
with the same tokens (SOS + a learned context), their hidden states are identical for all classes:
`encode_shared_prefix` computes them once and lets each class run only its own suffix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .config import TextConfig
from .layers import Transformer


class TextTransformer(nn.Module):
    def __init__(self, cfg: TextConfig, embed_dim: int, act: str, eps: float) -> None:
        super().__init__()
        self.context_length = cfg.context_length
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_width or 4 * cfg.width, act, eps)
        self.ln_final = nn.LayerNorm(cfg.width, eps=eps)
        self.text_projection = nn.Parameter(cfg.width**-0.5 * torch.randn(cfg.width, embed_dim))

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.resblocks

    def forward(self, tokens: Tensor) -> Tensor:
        """Token ids (N, L) -> text features (N, embed_dim); EOT has the largest id, so argmax finds it."""
        return self.encode_embeddings(self.token_embedding(tokens), tokens.argmax(dim=-1))

    def encode_embeddings(self, embeddings: Tensor, eot_index: Tensor, length: int | None = None) -> Tensor:
        """Token embeddings (N, L, W), without positions -> features (N, embed_dim) pooled at eot_index (N,).

        length: how many positions to run; by default the batch's longest EOT + 1 (exact, and the
        cheapest). Pass it when known to avoid reading eot_index back from the device.
        """
        length = int(eot_index.max()) + 1 if length is None else length
        h = embeddings[:, :length] + self.positional_embedding[:length].to(embeddings.dtype)
        for block in self.blocks:
            h = block(h, causal=True)
        return self._pool(h, eot_index)

    def encode_shared_prefix(self, prefix: Tensor, suffixes: Tensor, eot_index: Tensor,
                             length: int | None = None, deep_prefix: Sequence[Tensor] = ()) -> Tensor:
        """Prompts that all begin with `prefix` (P, W), followed by `suffixes` (N, S, W) -> (N, embed_dim).
        With K prefixes (K, P, W) (a buffer of prompts), each is followed by every suffix -> (K, N, embed_dim).

        Equals `encode_embeddings` on the concatenated sequences: each prefix runs once and its keys and
        values serve all N suffixes. eot_index (N,) counts within the suffixes; gradients from every
        class reach the prefixes. deep_prefix: before block i (1 <= i <= len), the prefix's tokens 1..n
        are replaced by deep_prefix[i - 1] (n, W), without positions (MaPLe's deeper text prompts).
        """
        length = int(eot_index.max()) + 1 if length is None else length
        return self.encode_prefix_groups(prefix, [(suffixes[:, :length], eot_index)], deep_prefix)[0]

    def encode_prefix_groups(self, prefix: Tensor, groups: Sequence[tuple[Tensor, Tensor]],
                             deep_prefix: Sequence[Tensor] = ()) -> list[Tensor]:
        """`encode_shared_prefix` for groups of suffixes, each (N_g, S_g, W) run to its own length S_g
        with its eot_index (N_g,), the prefix once for all: -> per group (N_g, embed_dim), or
        (K, N_g, embed_dim) for K prefixes."""
        single = prefix.ndim == 2
        prefixes = prefix.reshape(-1, *prefix.shape[-2:])  # (K, P, W)
        n_prompts, n_prefix = prefixes.shape[:2]
        positions = self.positional_embedding.to(groups[0][0].dtype)
        h_prefix = prefixes + positions[:n_prefix]
        hs = [(suffixes + positions[n_prefix:n_prefix + suffixes.shape[1]]).repeat(n_prompts, 1, 1)  # row k*N + n
              for suffixes, _ in groups]
        for index, block in enumerate(self.blocks):
            if 1 <= index <= len(deep_prefix):
                deep = deep_prefix[index - 1].to(h_prefix.dtype).expand(n_prompts, -1, -1)
                h_prefix = torch.cat([h_prefix[:, :1], deep, h_prefix[:, 1 + deep.shape[1]:]], dim=1)
            h_prefix, (keys, values) = block(h_prefix, causal=True, return_kv=True)
            for g, (suffixes, _) in enumerate(groups):
                kv = (keys, values)
                if n_prompts > 1:  # one prefix broadcasts inside the attention; several are laid out per row
                    kv = keys.repeat_interleave(len(suffixes), 0), values.repeat_interleave(len(suffixes), 0)
                hs[g] = block(hs[g], past_kv=kv, causal=True)
        features = [self._pool(h, eot.repeat(n_prompts)).unflatten(0, (n_prompts, len(eot)))
                    for h, (_, eot) in zip(hs, groups)]
        return [f[0] for f in features] if single else features

    def _pool(self, hidden: Tensor, eot_index: Tensor) -> Tensor:
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), eot_index]
        return self.ln_final(pooled) @ self.text_projection
