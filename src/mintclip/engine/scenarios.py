"""Stream scenarios: the order in which a run meets its test images, as values (docs/protocols.md § Stream
scenarios states each rule and its source).

A scenario turns the test sets (their labels, in dataset order), the seed and, for open-set, the size of
the out-of-distribution set into one stream of `Item`s. Every order is a function of the seed alone, so
runs are reproducible and a resumed run meets the same stream. `iid`, the default, is the seeded shuffle
within each set, sets one after another, as every run before scenarios existed. Episodic methods run each
set's part of the stream on its own; online methods run the whole stream with their state kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
import torch

from ..data import DatasetError, resolve_set_id
from .config import RunError


@dataclass(frozen=True)
class Item:
    """One image of the stream: `set_id` is the test set whose classes classify it and whose records.jsonl
    holds its record; `index` its index in its dataset (the out-of-distribution set's when `ood`)."""

    set_id: str
    index: int
    ood: bool = False


def seeded_order(n: int, seed: int) -> list[int]:
    """The seeded shuffle of a set's n images that every scenario starts from (the iid order)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


class Scenario:
    """A stream rule; the default `stream` runs the sets one after another, each in `set_items`' order."""

    name: ClassVar[str]
    interleaves: ClassVar[bool] = False  # the stream leaves a set and comes back to it

    @property
    def spec(self) -> str:
        """The canonical text of the scenario, as config.json records it."""
        return self.name

    @property
    def mixed_in(self) -> str | None:
        """The set whose images are mixed in as out-of-distribution ones (open-set), if any."""
        return None

    @property
    def description(self) -> str:
        """One line for the run's summary: the order its numbers were measured in."""
        return f"stream {self.spec}"

    def check(self, sizes: dict[str, int], ood_size: int) -> None:
        """Raise RunError, before any image, if the sets (their sizes) cannot give this stream."""

    def set_items(self, set_id: str, labels: Sequence[int], seed: int, ood_size: int) -> list[Item]:
        """One set's part of a stream that takes the sets one after another."""
        return [Item(set_id, i) for i in seeded_order(len(labels), seed)]

    def stream(self, sets: dict[str, Sequence[int]], seed: int, ood_size: int = 0) -> list[Item]:
        """The whole stream of a seed; `sets` maps each test set, in run order, to its labels."""
        return [item for set_id, labels in sets.items() for item in self.set_items(set_id, labels, seed, ood_size)]


@dataclass(frozen=True)
class IID(Scenario):
    name: ClassVar[str] = "iid"

    @property
    def description(self) -> str:
        return "stream iid: each set in its seeded order, the sets one after another"


@dataclass(frozen=True)
class Sequential(Scenario):
    """The iid order under the name of the continual protocol: sets one after another, state kept."""

    name: ClassVar[str] = "sequential"

    @property
    def description(self) -> str:
        return ("stream sequential: the sets one after another, each in its seeded order (the order of iid), an "
                "online method's state kept from set to set")


@dataclass(frozen=True)
class Prefix(Scenario):
    """The first `images` of each set's seeded order: many short streams, one per seed."""

    images: int
    name: ClassVar[str] = "prefix"

    @property
    def spec(self) -> str:
        return f"prefix:{self.images}"

    @property
    def description(self) -> str:
        return f"stream {self.spec}: the first {self.images} images of each set's seeded order"

    def set_items(self, set_id: str, labels: Sequence[int], seed: int, ood_size: int) -> list[Item]:
        return [Item(set_id, i) for i in seeded_order(len(labels), seed)[:self.images]]


def chunks(order: Sequence[int], rounds: int) -> list[list[int]]:
    """`order` cut into `rounds` consecutive chunks as equal as possible: the first len % rounds chunks
    are one longer (numpy.array_split's rule); chunks are empty when the set is shorter than `rounds`."""
    size, longer = divmod(len(order), rounds)
    bounds = [r * size + min(r, longer) for r in range(rounds + 1)]
    return [list(order[bounds[r]:bounds[r + 1]]) for r in range(rounds)]


@dataclass(frozen=True)
class Cyclic(Scenario):
    """Continual with revisits: round r visits every set's chunk r, the sets in run order."""

    rounds: int
    name: ClassVar[str] = "cyclic"
    interleaves: ClassVar[bool] = True

    @property
    def spec(self) -> str:
        return f"cyclic:{self.rounds}"

    @property
    def description(self) -> str:
        return (f"stream {self.spec}: each set's seeded order cut into {self.rounds} chunks, visited in rounds (set 1 "
                "chunk 1, set 2 chunk 1, ..., set 1 chunk 2, ...)")

    def stream(self, sets: dict[str, Sequence[int]], seed: int, ood_size: int = 0) -> list[Item]:
        cut = {set_id: chunks(seeded_order(len(labels), seed), self.rounds) for set_id, labels in sets.items()}
        return [Item(set_id, i) for r in range(self.rounds) for set_id in sets for i in cut[set_id][r]]


@dataclass(frozen=True)
class Mixed(Scenario):
    """Every set's images shuffled together: one seeded permutation of all (set, index) pairs, listed set
    by set in run order and by index within a set."""

    name: ClassVar[str] = "mixed"
    interleaves: ClassVar[bool] = True

    @property
    def description(self) -> str:
        return "stream mixed: the images of every set in one seeded shuffle"

    def stream(self, sets: dict[str, Sequence[int]], seed: int, ood_size: int = 0) -> list[Item]:
        pairs = [Item(set_id, i) for set_id, labels in sets.items() for i in range(len(labels))]
        return [pairs[k] for k in seeded_order(len(pairs), seed)]


class DirichletDraws(Protocol):
    """What `dirichlet_order` draws from: numpy's RandomState, or a scripted stand-in in the tests."""

    def shuffle(self, x) -> None: ...

    def dirichlet(self, alpha) -> np.ndarray: ...


MIN_CHUNK = 10  # the reference's min_size_thresh
DIRICHLET_ATTEMPTS = 100  # the reference draws for up to 120 s of wall-clock time instead


@dataclass
class DirichletDraw:
    """One draw of the reference's loop, per position of the input order: its chunk, and its place in its
    class's shuffled positions (the order within a chunk's run of that class)."""

    chunk: np.ndarray
    offset: np.ndarray
    smallest: int  # images in the smallest chunk


def dirichlet_order(order: Sequence[int], labels: Sequence[int], gamma: float, rng: DirichletDraws) -> list[int]:
    """A label-correlated reordering of `order` (indices into `labels`), as `sort_by_dirichlet` in
    mariodoebler/test-time-adaptation classification/datasets/data_loading.py @ 6d59164 (adapted there
    from TaesikGong/NOTE learner/dnn.py @ 363ce91, target_data_processing with tgt_train_dist 4), with
    the same calls to `rng` in the same order.

    With C the number of classes (the largest label + 1) there are C chunks. Each class in turn has its
    positions shuffled and split over the chunks by proportions drawn from Dirichlet(γ, ..., γ), where a
    chunk that already holds N / C images gets none; the draw is repeated until every chunk holds at
    least min(10, N // (2C)) images. The stream is then chunk by chunk, each chunk's classes in a shuffled
    order, each class's images in their shuffled order. Small γ: long runs of one class; large γ: close
    to iid. Deviations, all for sets the reference cannot order: its threshold 10 is lowered to
    N // (2C) where the mean chunk is under 20 images (with N / C = 10 only chunks all exactly full would
    pass); it draws at most 100 times (not for 120 s) and then keeps the draw whose smallest chunk is the
    largest (the first of those); a draw whose masked proportions sum to zero (a tiny γ underflows)
    counts as failed instead of giving NaN split points."""
    label_at = np.array([labels[i] for i in order], dtype=np.int64)
    n = len(order)
    classes = int(label_at.max()) + 1 if n else 0
    least = min(MIN_CHUNK, n // (2 * classes)) if classes else 0
    best: DirichletDraw | None = None
    for _ in range(DIRICHLET_ATTEMPTS):
        draw = dirichlet_draw(label_at, classes, gamma, rng)
        if draw is not None and (best is None or draw.smallest > best.smallest):
            best = draw
        if best is not None and best.smallest >= least:
            break
    if best is None:
        raise RunError(f"--scenario dirichlet:{number(gamma)}: every draw of the proportions underflowed to zero; "
                       "try a larger γ")
    rank = np.empty((classes, classes), dtype=np.int64)  # rank[chunk, label]: the class's turn in the chunk
    for chunk in range(classes):
        class_order = list(range(classes))
        rng.shuffle(class_order)
        rank[chunk, class_order] = np.arange(classes)
    positions = np.lexsort((best.offset, rank[best.chunk, label_at], best.chunk))
    return [order[p] for p in positions.tolist()]


def dirichlet_draw(label_at: np.ndarray, classes: int, gamma: float, rng: DirichletDraws) -> DirichletDraw | None:
    """One pass of the reference's while loop over the classes; None if a class's masked proportions
    sum to zero."""
    n = len(label_at)
    sizes = np.zeros(classes, dtype=np.int64)
    chunk, offset = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    for k in range(classes):
        positions = np.where(label_at == k)[0]
        rng.shuffle(positions)
        proportions = rng.dirichlet(np.repeat(gamma, classes)) * (sizes < n / classes)
        total = proportions.sum()
        if not total > 0:
            return None
        cuts = (np.cumsum(proportions / total) * len(positions)).astype(int)[:-1]
        turn = np.arange(len(positions))
        chunk[positions] = np.searchsorted(cuts, turn, side="right")
        offset[positions] = turn
        sizes += np.diff(np.concatenate([[0], cuts, [len(positions)]]))
    return DirichletDraw(chunk, offset, int(sizes.min()))


@dataclass(frozen=True)
class Dirichlet(Scenario):
    """Label-correlated order within each set (`dirichlet_order` on the set's seeded order, numpy's
    RandomState(seed) drawing as the reference's np.random.seed(seed) does)."""

    gamma: float
    name: ClassVar[str] = "dirichlet"

    @property
    def spec(self) -> str:
        return f"dirichlet:{number(self.gamma)}"

    @property
    def description(self) -> str:
        return (f"stream {self.spec}: label-correlated order within each set, classes in chunks drawn from a "
                f"Dirichlet({number(self.gamma)}) as in Döbler et al. and NOTE")

    def set_items(self, set_id: str, labels: Sequence[int], seed: int, ood_size: int) -> list[Item]:
        order = dirichlet_order(seeded_order(len(labels), seed), labels, self.gamma, np.random.RandomState(seed))
        return [Item(set_id, i) for i in order]


def open_set_count(images: int, ratio: float) -> int:
    """round(ρ·N), halves up: the out-of-distribution images mixed into a set of N."""
    return math.floor(ratio * images + 0.5)


def open_set_order(order: Sequence[int], ood_size: int, ratio: float, seed: int) -> list[tuple[int, bool]]:
    """`order` with M = round(ρ·N) out-of-distribution images mixed in: (index, is_ood) pairs. One
    generator seeded by `seed` draws the M positions among the N + M (the first M of a permutation of
    them), then the M images (the first M of a permutation of the OOD set), which fill those positions in
    the order drawn; the in-distribution images keep their order in the others."""
    m = open_set_count(len(order), ratio)
    generator = torch.Generator().manual_seed(seed)
    at = set(torch.randperm(len(order) + m, generator=generator)[:m].tolist())
    chosen = iter(torch.randperm(ood_size, generator=generator)[:m].tolist())
    kept = iter(order)
    return [(next(chosen), True) if p in at else (next(kept), False) for p in range(len(order) + m)]


@dataclass(frozen=True)
class OpenSet(Scenario):
    """Each set's seeded order with images of `ood_set` mixed in at `ratio` OOD images per test image."""

    ood_set: str
    ratio: float
    name: ClassVar[str] = "open-set"

    @property
    def spec(self) -> str:
        return f"open-set:{self.ood_set}:{number(self.ratio)}"

    @property
    def mixed_in(self) -> str | None:
        return self.ood_set

    @property
    def description(self) -> str:
        return (f"stream {self.spec}: round({number(self.ratio)}·N) images of {self.ood_set} mixed into each set of N "
                "at seeded positions, classified with the set's classes but not scored for accuracy")

    def check(self, sizes: dict[str, int], ood_size: int) -> None:
        """Every set's OOD images are distinct images of the OOD set, so it must hold round(ρ·N) of them."""
        for set_id, images in sizes.items():
            wanted = open_set_count(images, self.ratio)
            if wanted > ood_size:
                raise RunError(f"--scenario {self.spec}: {set_id} has {images} images, so it needs {wanted} images of "
                               f"{self.ood_set}, which has {ood_size}; use a ratio of at most {ood_size / images:.4g}")

    def set_items(self, set_id: str, labels: Sequence[int], seed: int, ood_size: int) -> list[Item]:
        self.check({set_id: len(labels)}, ood_size)
        return [Item(set_id, i, ood) for i, ood in open_set_order(seeded_order(len(labels), seed), ood_size,
                                                                   self.ratio, seed)]


def first_per_set(items: list[Item], limit: int | None) -> list[Item]:
    """--limit: each set's first `limit` items of the stream (out-of-distribution ones included)."""
    if limit is None:
        return items
    seen: dict[str, int] = {}
    kept = []
    for item in items:
        seen[item.set_id] = seen.get(item.set_id, 0) + 1
        if seen[item.set_id] <= limit:
            kept.append(item)
    return kept


def set_positions(items: Sequence[Item]) -> list[int]:
    """Each item's position within its own set's part of the stream (its line in that set's records)."""
    seen: dict[str, int] = {}
    positions = []
    for item in items:
        positions.append(seen.get(item.set_id, 0))
        seen[item.set_id] = positions[-1] + 1
    return positions


def number(value: float) -> str:
    """A parameter as written back: '0.1', '1', '1e-05'; shortest form that reads back the same."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


FORMS = ("iid (default), sequential, cyclic:R (R >= 1 rounds), mixed, dirichlet:γ (γ > 0), "
         "open-set:SET:ρ (a set id, ρ > 0 OOD images per test image), prefix:N (N >= 1 images per set)")


def parse_scenario(text: str) -> Scenario:
    """`--scenario` text -> its Scenario; a bad one is a one-line RunError naming the accepted forms."""
    name, _, argument = text.strip().partition(":")

    def refuse(why: str) -> RunError:
        return RunError(f"--scenario {text!r}: {why}; accepted: {FORMS}")

    plain = {"iid": IID, "sequential": Sequential, "mixed": Mixed}
    if name in plain:
        if argument:
            raise refuse(f"{name} takes no parameter")
        return plain[name]()
    if name in ("cyclic", "prefix"):
        if not (argument.isascii() and argument.isdigit()) or int(argument) < 1:
            raise refuse(f"{name} needs a whole number of at least 1 after the colon")
        return Cyclic(int(argument)) if name == "cyclic" else Prefix(int(argument))
    if name == "dirichlet":
        return Dirichlet(positive(argument, refuse, "dirichlet needs γ > 0 after the colon"))
    if name == "open-set":
        set_id, _, ratio = argument.rpartition(":")
        if not set_id:
            raise refuse("open-set needs a set id and a ratio, e.g. open-set:folder:ood:0.5")
        try:
            set_id = resolve_set_id(set_id)
        except DatasetError as e:
            raise refuse(str(e)) from None
        return OpenSet(set_id, positive(ratio, refuse, "open-set needs ρ > 0 after the set id"))
    raise refuse(f"unknown scenario {name!r}")


def positive(text: str, refuse: Callable[[str], RunError], why: str) -> float:
    """A finite number above 0, or `refuse(why)`."""
    try:
        value = float(text)
    except ValueError:
        raise refuse(why) from None
    if not (math.isfinite(value) and value > 0):
        raise refuse(why)
    return value
