"""What a run is: its settings (`RunConfig`), what `prepare` checked and loaded (`Prepared`), and the
two choices every stream shares (the sample order and AugMix), kept apart so the stream loops can
import them without the orchestration in run.py."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from ..adapt.base import Method
from ..data import ImageDataset
from ..model import CLIP


class RunError(ValueError):
    """A run that cannot start as asked; one line saying why and what to do."""


LATER_OPTIONS = {"online_shards": None, "batch_images": 1, "compile": False}  # options added after runs were made: their defaults


@dataclass
class RunConfig:
    data_root: str
    test_sets: list[str]
    method: str
    weights: str
    out: str
    seeds: list[int] = field(default_factory=lambda: [0])
    device: str = "cpu"
    workers: int = 4
    hp: dict[str, Any] = field(default_factory=dict)  # method hyper-parameter overrides
    act: str | None = None  # the checkpoint's activation, when it does not say
    augmix: str = "auto"  # "auto": the method's choice, else the set's reference default; "on"; "off"
    limit: int | None = None  # at most this many samples per set (quick looks)
    save_every: int = 50  # samples between saves of online state
    batch_images: int = 1  # episodic methods: test images adapted together (same predictions, other rounding)
    compile: bool = False  # the frozen image encoder under torch.compile (same predictions, other rounding)
    online_shards: int | None = None  # online methods: K independent sub-streams per set (None: one stream)
    resume: bool = False
    progress: bool = True

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same run (resume must not change it)."""
        d = dataclasses.asdict(self)
        for key in ("resume", "progress", "workers", "device", "save_every"):
            d.pop(key)
        for key, default in LATER_OPTIONS.items():  # left out at their default, so that older runs resume
            if d[key] == default:
                d.pop(key)
        return d


@dataclass
class Prepared:
    model: CLIP
    method: Method
    datasets: dict[str, ImageDataset]


def augmix_for(config: RunConfig, method: Method, dataset: ImageDataset) -> bool:
    if config.augmix != "auto":
        return config.augmix == "on"
    chosen = method.augmix(dataset.set_id)
    return dataset.augmix if chosen is None else chosen


def stream_order(n: int, seed: int, limit: int | None) -> list[int]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return order[:limit] if limit is not None else order
