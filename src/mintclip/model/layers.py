"""The transformer block shared by both towers, in OpenAI's parameter layout, attention through SDPA.

One mechanism serves every hook the methods need: extra keys and values prepended to a block's
attention. MINT's memory prompts are raw tokens projected by the block's own K/V weights; the shared
text prefix passes the K/V that the prefix computed itself. Queries never change, so the output length
never does.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KV = tuple[Tensor, Tensor]  # projected keys and values, each (B or 1, P, W)


class QuickGELU(nn.Module):
    """OpenAI's sigmoid approximation of GELU; OpenAI, MetaCLIP and DFN weights need it."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def activation(name: str) -> nn.Module:
    return QuickGELU() if name == "quick_gelu" else nn.GELU()


class Attention(nn.Module):
    """Multi-head self-attention with the fused `in_proj` of nn.MultiheadAttention."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.randn(3 * width, width) * width**-0.5)
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def project_kv(self, key_tokens: Tensor, value_tokens: Tensor) -> KV:
        """Raw prompt tokens (B, P, W) -> keys and values, through this layer's own W_k and W_v."""
        _, w_k, w_v = self.in_proj_weight.chunk(3)
        _, b_k, b_v = self.in_proj_bias.chunk(3)
        return F.linear(key_tokens, w_k, b_k), F.linear(value_tokens, w_v, b_v)

    def forward(self, x: Tensor, past_kv: KV | None = None, causal: bool = False,
                return_kv: bool = False) -> Tensor | tuple[Tensor, KV]:
        batch, length, width = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        own_kv = (k, v)
        mask = None
        if past_kv is not None:
            past_k, past_v = past_kv
            n_past = past_k.shape[1]
            k = torch.cat([past_k.expand(batch, -1, -1).to(k.dtype), k], dim=1)
            v = torch.cat([past_v.expand(batch, -1, -1).to(v.dtype), v], dim=1)
            if causal:  # every query sees all past tokens, and its own sequence causally
                mask = torch.ones(length, n_past + length, dtype=torch.bool, device=x.device).tril(n_past)
                causal = False
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))  # (B, heads, L, hd)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, width))
        return (out, own_kv) if return_kv else out


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_width: int, act: str, eps: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, mlp_width)), ("gelu", activation(act)), ("c_proj", nn.Linear(mlp_width, width)),
        ]))

    def forward(self, x: Tensor, past_kv: KV | None = None, causal: bool = False,
                return_kv: bool = False) -> Tensor | tuple[Tensor, KV]:
        attended = self.attn(self.ln_1(x), past_kv=past_kv, causal=causal, return_kv=return_kv)
        if return_kv:
            attended, kv = attended
        x = x + attended
        x = x + self.mlp(self.ln_2(x))
        return (x, kv) if return_kv else x


class Transformer(nn.Module):
    """A stack of blocks; the towers run the loop themselves, so each can tap or prompt any block."""

    def __init__(self, width: int, layers: int, heads: int, mlp_width: int, act: str, eps: float) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_width, act, eps) for _ in range(layers))
