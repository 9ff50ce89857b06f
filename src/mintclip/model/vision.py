"""CLIP's image towers: VisionTransformer (with taps and prompt hooks) and OpenAI's ModifiedResNet."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import VisionConfig
from .layers import Transformer

KVPrompts = Mapping[int, tuple[Tensor, Tensor]]  # block index -> (key tokens, value tokens), each (B or 1, P, W)


class VisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig, embed_dim: int, act: str, eps: float) -> None:
        super().__init__()
        width, scale = cfg.width, cfg.width**-0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.grid**2 + 1, width))
        self.ln_pre = nn.LayerNorm(width, eps=eps)
        self.transformer = Transformer(width, cfg.layers, cfg.heads, cfg.mlp_width or 4 * width, act, eps)
        self.ln_post = nn.LayerNorm(width, eps=eps)
        self.proj = nn.Parameter(scale * torch.randn(width, embed_dim))

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.resblocks

    def embed(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> CLS + patch tokens with positions, (B, 1 + grid², width)."""
        patches = self.conv1(images).flatten(2).transpose(1, 2)  # (B, grid², width)
        cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.positional_embedding.to(patches.dtype)

    def forward(self, images: Tensor, kv_prompts: KVPrompts | None = None,
                extra_tokens: Tensor | None = None, deep_tokens: Sequence[Tensor] = ()) -> Tensor:
        """Image features (B, embed_dim), unnormalised.

        kv_prompts: raw tokens added as extra keys and values at the given blocks (MINT), projected by
        that block's own W_k / W_v, without layer norm or positions; queries and output length unchanged.
        extra_tokens: (B or 1, P, width) inserted after CLS, after the positional embedding (VPT).
        deep_tokens: before block i (1 <= i <= len), the P extra tokens are replaced by deep_tokens[i - 1]
        (P, width) (MaPLe's deeper vision prompts).
        """
        if deep_tokens and extra_tokens is None:
            raise ValueError("deep_tokens replace the extra tokens, so they need extra_tokens")
        h = self.embed(images)
        if extra_tokens is not None:
            extra = extra_tokens.to(h.dtype).expand(h.shape[0], -1, -1)
            h = torch.cat([h[:, :1], extra, h[:, 1:]], dim=1)
        h = self.ln_pre(h)
        for index, block in enumerate(self.blocks):
            if 1 <= index <= len(deep_tokens):
                deep = deep_tokens[index - 1].to(h.dtype).expand(h.shape[0], -1, -1)
                h = torch.cat([h[:, :1], deep, h[:, 1 + deep.shape[1]:]], dim=1)
            prompt = kv_prompts.get(index) if kv_prompts else None
            h = block(h, past_kv=block.attn.project_kv(*prompt) if prompt is not None else None)
        return self.ln_post(h[:, 0]) @ self.proj

    def cls_taps(self, images: Tensor, blocks: Sequence[int]) -> Tensor:
        """Residual-stream CLS after each listed block, (B, len(blocks), width); stops after the last one."""
        if not blocks or min(blocks) < 0 or max(blocks) >= len(self.blocks):
            raise ValueError(f"tap blocks must lie in 0..{len(self.blocks) - 1}, got {list(blocks)}")
        h = self.ln_pre(self.embed(images))
        taps = {}
        for index, block in enumerate(self.blocks[: max(blocks) + 1]):
            h = block(h)
            taps[index] = h[:, 0]
        return torch.stack([taps[b] for b in blocks], dim=1)


class Bottleneck(nn.Module):
    """ResNet bottleneck with OpenAI's anti-aliased down-sampling (average pool before the stride)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                ("1", nn.BatchNorm2d(planes * self.expansion)),
            ]))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class AttentionPool2d(nn.Module):
    """One query (the mean of the grid) attends over the grid: the ResNet's pooling and projection."""

    def __init__(self, grid: int, width: int, heads: int, output_dim: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(grid**2 + 1, width) / width**0.5)
        self.k_proj, self.q_proj, self.v_proj = (nn.Linear(width, width) for _ in range(3))
        self.c_proj = nn.Linear(width, output_dim)
        self.heads = heads

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)
        q, k, v = self.q_proj(x[:, :1]), self.k_proj(x), self.v_proj(x)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, 1, hd)
        return self.c_proj(out.transpose(1, 2).flatten(1))


class ModifiedResNet(nn.Module):
    """OpenAI's CLIP ResNet: 3-conv stem, anti-aliased strides, attention pooling (RN50 ... RN50x64)."""

    def __init__(self, cfg: VisionConfig, embed_dim: int) -> None:
        super().__init__()
        width = cfg.width
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, cfg.layers[0])
        self.layer2 = self._make_layer(width * 2, cfg.layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, cfg.layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, cfg.layers[3], stride=2)
        self.attnpool = AttentionPool2d(cfg.grid, width * 32, cfg.heads, embed_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        x = images.to(self.conv1.weight.dtype)
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(F.relu(self.bn3(self.conv3(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)
