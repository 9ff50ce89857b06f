"""Sharding a run over the processes that `torchrun` (or `srun` running torchrun) starts.

Episodic methods: each set's stream is dealt round-robin by position (rank r takes positions r, r + N,
...), each process writes its own shard of records, and rank 0 merges the shards into the same
`records.jsonl` a single process writes. Views depend on (seed, sample index) alone, so the merged
records are byte-identical to a single-process run's on CPU. Online methods keep one stream per
process: a process takes whole sets (set i goes to rank i mod N) and its state flows only between its
own sets. No scheduler of our own: torch.distributed for the barriers, files for everything else, so a
killed job restarted with --resume continues every shard where it stopped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from .records import atomic_write_bytes, encode_records, read_records


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Shard":
        """torchrun's RANK / WORLD_SIZE / LOCAL_RANK; a plain process is rank 0 of 1."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def sharded(self) -> bool:
        return self.world > 1

    @property
    def suffix(self) -> str:
        """'' for a single process, else '.rank<r>-of-<N>': the name of this process's files."""
        return f".rank{self.rank}-of-{self.world}" if self.sharded else ""

    def device(self, device: str) -> str:
        """Each process on its own GPU: cuda -> cuda:<local rank>."""
        return f"cuda:{self.local_rank}" if self.sharded and device.split(":")[0] == "cuda" else device

    def start(self, device: str) -> bool:
        """Join the process group (gloo on CPU, nccl on GPU); True if this call created it."""
        if not self.sharded or dist.is_initialized():
            return False
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        return True

    def barrier(self) -> None:
        if self.sharded:
            dist.barrier()

    def online_sets(self, sets: list[str]) -> list[str]:
        """The whole sets this process streams when the method is online."""
        return sets[self.rank::self.world]


def shard_path(records: Path, shard: Shard) -> Path:
    return records.with_name(f"records{shard.suffix}.jsonl")


def merge_shards(records: Path, world: int, total: int) -> None:
    """Interleave the ranks' complete shards back into stream order, write records.jsonl atomically,
    then remove the shards (a kill between the two leaves shards that the next merge ignores)."""
    shards = [read_records(shard_path(records, Shard(rank, world))) for rank in range(world)]
    merged = [shards[position % world][position // world] for position in range(total)]
    atomic_write_bytes(records, encode_records(merged))
    for rank in range(world):
        shard_path(records, Shard(rank, world)).unlink(missing_ok=True)
