"""MINT's Memory Prompt Bank: learnable keys and value prompts, retrieved by hierarchical visual queries.

Official code: `Jamieyi2004/MINT@b02acc7` models/mpb.py (the bank) and models/mint.py (`similarity`,
`solve_selected_prompt`, `getPrompts`). The code keeps 12 groups of 512 separate Parameters and uses
group 0 only; here one tensor holds each set that is used (docs/methods.md § MINT). With AdamW reset every
sample this is the same update: every entry of group 0 receives a gradient (zero where not retrieved)
through the code's `torch.stack`, so weight decay reaches all of them, and Adam moves an entry only
once its gradient has been non-zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MemoryPromptBank(nn.Module):
    """keys (key_sets, N, D) and values (value_sets, N, L, D), N(0, 1) initialised; selection counters.

    key_sets: 1 (the code: one key set serves every query layer) or one per query layer.
    value_sets: one per injection block (the code takes prompt group `layer` for block `layer`).
    """

    def __init__(self, size: int = 512, prompt_length: int = 2, width: int = 768, key_sets: int = 1,
                 value_sets: int = 1, seed: int = 0, device: torch.device | str = "cpu") -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.keys = nn.Parameter(torch.randn(key_sets, size, width, generator=generator).to(device))
        self.values = nn.Parameter(torch.randn(value_sets, size, prompt_length, width, generator=generator).to(device))
        self.register_buffer("train_counts", torch.zeros(size, dtype=torch.long, device=device))
        self.register_buffer("test_counts", torch.zeros(size, dtype=torch.long, device=device))

    @property
    def size(self) -> int:
        return self.keys.shape[1]

    def retrieve(self, queries: Tensor, top_k: int, reweight: bool) -> tuple[Tensor, Tensor]:
        """queries (B, Q, D), one per query layer, detached -> indices (B, Q*k) and their distances
        (B, Q*k), grouped by layer as the code's `torch.cat((idx_3, idx_7, idx_11), 1)`.

        Distance is 1 - cos. reweight (tuning forwards only): while 0 < total count <= N * B, distances
        are multiplied by each entry's share of past selections, so never-used entries (distance 0) win:
        the code's warm-up, which cycles through the bank before similarity takes over (docs/methods.md § MINT).
        """
        q = F.normalize(queries.float(), dim=-1)  # (B, Q, D)
        k = F.normalize(self.keys.float(), dim=-1)  # (key_sets, N, D)
        if k.shape[0] == 1:
            distance = 1 - q @ k[0].T  # (B, Q, N)
        else:
            distance = 1 - torch.einsum("bqd,qnd->bqn", q, k)
        if reweight:
            counts = self.train_counts.float()
            total = counts.sum()
            warm = (total > 0) & (total <= self.size * queries.shape[0])  # a tensor: no host sync
            distance = distance * torch.where(warm, counts / total.clamp(min=1), torch.ones_like(counts))
        picked, index = distance.topk(top_k, dim=-1, largest=False)  # (B, Q, k)
        return index.flatten(1), picked.flatten(1)

    @torch.no_grad()
    def count(self, index: Tensor, tuning: bool) -> None:
        """Every retrieved index of every view counts once, as the code's `solve_selected_prompt`."""
        counts = self.train_counts if tuning else self.test_counts
        counts += torch.bincount(index.flatten(), minlength=self.size)

    def assemble(self, index: Tensor, value_set: int = 0) -> Tensor:
        """The associative prompt: the retrieved values averaged with equal weights, (B, M) -> (B, L, D)."""
        return self.values[value_set][index].mean(dim=1)
