"""What a run is: its settings (`RunConfig`), the data it ran on (`data_fingerprint`), what `prepare`
checked and loaded (`Prepared`), and the AugMix choice every stream shares, kept apart so the stream
loops can import them without the orchestration in run.py (the stream's order is in scenarios.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..adapt.base import Method
from ..data import ImageDataset, TestSet
from ..model import CLIP
from .records import RunLog

if TYPE_CHECKING:
    from .scenarios import Scenario


class RunError(ValueError):
    """A run that cannot start as asked; one line saying why and what to do."""


# options added after runs were made: their defaults
LATER_OPTIONS = {"online_shards": None, "batch_images": 1, "compile": False, "scenario": "iid"}


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
    scenario: str = "iid"  # the stream's order (scenarios.parse_scenario; docs/protocols.md § Stream scenarios)
    strict: bool = False  # refuse sets holding files that are not images, instead of skipping them
    resume: bool = False
    progress: bool = True

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same run (resume must not change it)."""
        d = dataclasses.asdict(self)
        for key in ("resume", "progress", "workers", "device", "save_every", "strict"):
            d.pop(key)
        for key, default in LATER_OPTIONS.items():  # left out at their default, so that older runs resume
            if d[key] == default:
                d.pop(key)
        return d


def data_fingerprint(dataset: ImageDataset) -> dict[str, Any]:
    """What a set's data are, without reading an image: its id, resolved root, counts, and hashes of the
    class names in order and of the sorted (path relative to the root, label) pairs. Runs whose
    fingerprints of a set differ ran on different data, so their numbers are not comparable."""
    base = os.path.abspath(dataset.root)
    pairs = sorted((Path(os.path.relpath(os.path.abspath(path), base)).as_posix(), label)
                   for path, label in dataset.samples)
    return {"set_id": dataset.set_id, "root": str(Path(dataset.root).resolve()), "samples": len(pairs),
            "classes": len(dataset.classnames), "classes_sha256": sha256_of(dataset.classnames),
            "samples_sha256": sha256_of(pairs)}


def sha256_of(value: Any) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()


FINGERPRINT_WORDS = {"classes": "classes", "root": "root", "samples": "images", "set_id": "set id",
                     "classes_sha256": "class names", "samples_sha256": "files or labels"}


def differing_fields(fingerprints: list[dict[str, Any]]) -> list[str]:
    """The fingerprint fields on which these differ: those a reader can check, else the hashes."""
    keys = [key for key in FINGERPRINT_WORDS if len({json.dumps(f.get(key)) for f in fingerprints}) > 1]
    return [key for key in keys if not key.endswith("sha256")] or keys


def data_difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    """How two fingerprints differ, in words: 'classes 4 vs 2, root /a vs /b'."""
    return ", ".join(f"other {FINGERPRINT_WORDS[key]}" if key.endswith("sha256")
                     else f"{FINGERPRINT_WORDS[key]} {a.get(key)} vs {b.get(key)}" for key in differing_fields([a, b]))


@dataclass
class Prepared:
    model: CLIP
    method: Method
    datasets: dict[str, ImageDataset]
    log: RunLog  # run.log; writes nothing on the other processes of a torchrun job
    scenario: Scenario  # the parsed --scenario
    ood: ImageDataset | None = None  # the out-of-distribution set an open-set scenario mixes in


def augmix_for(config: RunConfig, method: Method, dataset: ImageDataset) -> bool:
    if config.augmix != "auto":
        return config.augmix == "on"
    test_set = TestSet.of(dataset)
    chosen = method.augmix(test_set)
    return test_set.augmix if chosen is None else chosen

