"""Sharding a run over the processes that `torchrun` (or `srun` running torchrun) starts.

Episodic methods: each set's stream is dealt round-robin by position (rank r takes positions r, r + N,
...), each process writes its own shard of records, and rank 0 merges the shards into the same
`records.jsonl` a single process writes. Views depend on (seed, sample index) alone, so the merged
records are byte-identical to a single-process run's on CPU. Online methods keep one stream per
process: a process takes whole sets (set i goes to rank i mod N) and its state flows only between its
own sets. With `--online-shards K` every set is split into K independent sub-streams instead
(sub-stream k takes positions k, k + K, ... of every set, from a fresh state, on rank k mod N); the
records depend on K, never on N, and rank 0 merges them like the episodic shards. A set's stream is
its part of the scenario's (docs/protocols.md § Stream scenarios); a scenario that interleaves the sets
(cyclic, mixed) cannot give whole sets to processes, so an online method runs it in one process or in
sub-streams. No scheduler of our own: torch.distributed for the barriers, files for everything else, so
a killed job restarted with --resume continues every shard where it stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from .config import RunError
from .records import atomic_write_bytes, encode_records, read_records
from .scenarios import Item, set_positions


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

    def on_rank_zero(self, check: Callable[[], None]) -> None:
        """`check` on rank 0 alone, its RunError raised on every process: a refused job stops everywhere
        with the same line, and no other rank races rank 0 on what the check reads or writes."""
        refused = None
        if self.rank == 0:
            try:
                check()
            except RunError as e:
                refused = str(e)
        if self.sharded:
            told = [refused]
            dist.broadcast_object_list(told, src=0)
            refused = told[0]
        if refused:
            raise RunError(refused)

    def online_streams(self, sets: list[str], sub_streams: int | None) -> list[OnlineStream]:
        """The streams of an online method this process runs: by default one through its whole sets;
        with `sub_streams` K, sub-streams k = rank, rank + N, ... < K, each through every set."""
        if not sub_streams:
            return [OnlineStream(tuple(sets[self.rank::self.world]), state=f"state{self.suffix}.pt")]
        return [OnlineStream(tuple(sets), k, sub_streams) for k in range(self.rank, sub_streams, self.world)]


def sub_stream_suffix(index: int, count: int) -> str:
    """'' for one stream per set, else '.stream<k>-of-<K>': the name of a sub-stream's files."""
    return f".stream{index}-of-{count}" if count > 1 else ""


@dataclass(frozen=True)
class OnlineStream:
    """One online stream of a seed: the sets it goes through, the positions of each set's part of the
    scenario's stream it takes (index, index + count, ...), and the file holding its state for resume
    (by default named by the sub-stream)."""
    sets: tuple[str, ...]
    index: int = 0
    count: int = 1
    state: str = ""

    @property
    def suffix(self) -> str:
        return sub_stream_suffix(self.index, self.count)

    @property
    def state_file(self) -> str:
        return self.state or f"state{self.suffix}.pt"

    def take(self, items: list[Item]) -> list[Item]:
        """Its part of the scenario's stream, in stream order."""
        return [item for item, position in zip(items, set_positions(items))
                if item.set_id in self.sets and position % self.count == self.index]


def suffixed(path: Path, suffix: str) -> Path:
    """records.jsonl -> records.rank0-of-2.jsonl: the file of one process or sub-stream."""
    return path.with_name(f"{path.stem}{suffix}{path.suffix}")


def shard_path(records: Path, shard: Shard) -> Path:
    return suffixed(records, shard.suffix)


def merge_shards(records: Path, shards: list[Path], total: int) -> list[list[dict]]:
    """Interleave complete shards (shard i holds positions i, i + len(shards), ...) back into stream
    order, write records.jsonl atomically, then remove the shards (a kill between the two leaves shards
    that the next merge ignores). Returns each shard's records."""
    parts = [read_records(path) for path in shards]
    merged = [parts[position % len(parts)][position // len(parts)] for position in range(total)]
    atomic_write_bytes(records, encode_records(merged))
    for path in shards:
        path.unlink(missing_ok=True)
    return parts
