"""Online methods: one stream through its sets whose state flows from image to image and set to set,
saved for an exact resume; with --online-shards, K independent sub-streams per set, merged by rank 0.

The stream is the scenario's (docs/protocols.md § Stream scenarios): the sets one after another, or
interleaved (cyclic, mixed). Each record goes to its own set's records.jsonl, in stream order.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..adapt.base import Diagnostics, Method, build_method
from ..data import TestSet, set_label
from .config import Prepared, RunConfig, RunError
from .distributed import OnlineStream, merge_shards, sub_stream_suffix, suffixed
from .plots import bar_chart_png, line_chart_png
from .records import RecordWriter, atomic_torch_save, atomic_write_json, read_records
from .report import stream_accuracy
from .samples import Progress, SetSide, stream_decoded
from .scenarios import Item
from .study import TRACE, draw_stream_study


def run_stream(config: RunConfig, prepared: Prepared, seed: int, folder: Path, stream: OnlineStream,
               items: list[Item]) -> None:
    """One stream of an online method: its part of the scenario's `items`, one image at a time.

    Every stream starts from a fresh method, so seed 1 does not inherit seed 0's memory. The state is
    saved every `save_every` images and when a set's last image is done, with the position in the stream;
    on resume the stream restarts there from that state, and its sets' records are cut back to it."""
    items = stream.take(items)
    checkpoint_path = folder / stream.state_file
    checkpoint = read_state(checkpoint_path) if config.resume and checkpoint_path.is_file() else None
    start = resume_position(checkpoint, items, checkpoint_path) if checkpoint else 0
    switches = SetSwitches(config, prepared, items, start, None if checkpoint is None else checkpoint["state"])
    last = switches.last
    done = Counter(item.set_id for item in items[:start])
    sides: dict[str, SetSide] = {}
    progress = Progress(config, prepared.method, len(items), start)

    def save_state(position: int) -> None:
        for side in sides.values():
            side.finish()
        finished = [set_id for set_id in last if last[set_id] < position]
        current = items[position - 1].set_id if position else None
        current = None if current in finished else current
        atomic_torch_save(checkpoint_path, {"finished": finished, "set": current, "position": done[current],
                                            "stream_position": position, "state": switches.method.state_dict()})

    try:
        for position, (item, image) in enumerate(zip(items[start:], stream_decoded(prepared, items[start:],
                                                                                    config.workers)), start=start):
            if item.set_id != switches.current or switches.method is None:
                progress.describe(item.set_id)
            method = switches.to(item.set_id, position)
            if item.set_id not in sides:
                writer = RecordWriter(suffixed(folder / set_label(item.set_id) / "records.jsonl", stream.suffix),
                                      keep=done[item.set_id])
                sides[item.set_id] = SetSide(config, prepared, method, item.set_id, writer,
                                             resumed=done[item.set_id] > 0)
                sides[item.set_id].trace = RecordWriter(suffixed(folder / set_label(item.set_id) / TRACE, stream.suffix),
                                                        keep=done[item.set_id])
            progress.update(sides[item.set_id].record(prepared.model, method, seed, [(item, image)], position))
            done[item.set_id] += 1
            if last[item.set_id] == position:
                finish_set(prepared, method, item.set_id, folder, stream, sides.pop(item.set_id))
            if last[item.set_id] == position or (position + 1) % config.save_every == 0:
                save_state(position + 1)
    finally:
        progress.close()
        for side in sides.values():
            side.close()
    if stream.count == 1:  # the whole stream is done
        draw_stream_study(folder, list(stream.sets), prepared.method.name)


def finish_set(prepared: Prepared, method: Method, set_id: str, folder: Path, stream: OnlineStream,
               side: SetSide) -> None:
    """A set's last image is done: its records on disk, its timing, the method's diagnostics (its state at
    that point) and, for a whole stream, the plot of top-1 along it."""
    side.finish()
    side.close()
    set_folder = folder / set_label(set_id)
    save_diagnostics(method.diagnostics(), set_folder, f"{method.name} {set_id}{stream.suffix}", stream.suffix)
    if stream.count == 1:  # sub-streams are drawn together when merged
        draw_stream(method.name, set_id, {method.name: read_records(set_folder / "records.jsonl")},
                    set_folder / "stream.png")


class SetSwitches:
    """The method instance that serves each set, and the state handed over where the stream changes set.

    A set is prepared once (`setup`: its class texts) by an instance of its own, kept while the stream
    may come back to it, so an interleaved stream does not prepare a set again at every switch. At a
    set's first image in the stream the state is given before `setup`, as between the sets of a
    sequential run, so the method's own policy on what carries over between sets acts there (MINT's
    reset_memory, TDA's and DynaPrompt's reset_state). At every later switch it is given after `setup`,
    as when resuming within a set: the state flows across the switch unchanged. An instance whose set
    has no images left serves the next set, so a stream of sets one after another is one instance
    through all of them, as runs before scenarios were."""

    def __init__(self, config: RunConfig, prepared: Prepared, items: list[Item], start: int,
                 state: dict[str, Any] | None) -> None:
        self.config, self.prepared = config, prepared
        self.first: dict[str, int] = {}
        for position, item in enumerate(items):
            self.first.setdefault(item.set_id, position)
        self.last = {item.set_id: position for position, item in enumerate(items)}
        self.instances: dict[str, Method] = {}
        self.state = state  # what the stream holds before its first switch: a saved state, or None (fresh)
        self.current: str | None = items[start - 1].set_id if start else None  # the set the state was last used on
        self.method: Method | None = None

    def to(self, set_id: str, position: int) -> Method:
        """The instance for `set_id` at `position`, prepared and holding the stream's state."""
        if self.method is not None and set_id == self.current:
            return self.method
        state = self.state if self.method is None else self.method.state_dict()
        method = self.instances.get(set_id)
        if method is not None:
            method.load_state_dict(state)
        else:
            method = self.prepare(set_id, position, state)
        self.instances[set_id] = method
        self.method, self.current = method, set_id
        return method

    def prepare(self, set_id: str, position: int, state: dict[str, Any] | None) -> Method:
        """An instance for a set met here for the first time in this process: the finished set's, or a new one."""
        reuse = self.method if self.method is not None and self.last[self.current] < position else None
        if reuse is not None:
            del self.instances[self.current]
        method = reuse or build_method(self.config.method, self.config.hp)
        test_set = TestSet.of(self.prepared.datasets[set_id])
        if self.first[set_id] == position:  # the set's first image: as between sets
            if reuse is None and state is not None:
                method.load_state_dict(state)
            method.setup(self.prepared.model, test_set)
        else:  # a set met before the point a resumed stream starts from
            method.setup(self.prepared.model, test_set)
            if state is not None:
                method.load_state_dict(state)
        return method


def resume_position(checkpoint: dict[str, Any], items: list[Item], path: Path) -> int:
    """Where a saved stream goes on: its stream position, or, in a state file written before scenarios
    (sets one after another), the images of its finished sets plus its position in the current one."""
    if "stream_position" in checkpoint:
        position = checkpoint["stream_position"]
    else:
        sizes = Counter(item.set_id for item in items)
        position = sum(sizes[s] for s in checkpoint["finished"]) + (checkpoint["position"] if checkpoint["set"] else 0)
    if not 0 <= position <= len(items):
        raise RunError(f"{path} holds position {position} of a stream, this run's has {len(items)} images; delete it "
                       "and the run folder's records to start over, or choose another --out")
    return position


def read_state(path: Path) -> dict[str, Any]:
    """A stream's saved state, weights-only. A corrupt or tampered file fails with nearly any exception
    (torch's own advises weights_only=False, which would run what the file holds): all are one RunError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # of any type: see the docstring
        state = None
    valid = (isinstance(state, dict) and isinstance(state.get("finished"), list)
             and isinstance(state.get("set"), (str, type(None))) and isinstance(state.get("position"), int)
             and isinstance(state.get("stream_position", 0), int) and isinstance(state.get("state"), dict))
    if not valid:
        raise RunError(f"{path} is not a valid mintclip state file (corrupt or not written by mintclip); delete it "
                       "and the run folder's records to start over, or choose another --out")
    return state


def merge_sub_streams(config: RunConfig, prepared: Prepared, folder: Path, items: list[Item]) -> None:
    """Rank 0, once every sub-stream of the seed is done: each set's sub-stream records interleaved
    back into stream order, and a stream plot with one line per sub-stream."""
    k, name = config.online_shards, prepared.method.name
    sizes = Counter(item.set_id for item in items)
    for set_id in prepared.datasets:
        records_path = folder / set_label(set_id) / "records.jsonl"
        parts = [suffixed(records_path, sub_stream_suffix(i, k)) for i in range(k)]
        total = sizes[set_id]
        if len(read_records(records_path)) >= total:  # merged before a kill: drop any shards left behind
            for path in parts:
                path.unlink(missing_ok=True)
            continue
        records = merge_shards(records_path, parts, total)
        draw_stream(name, set_id, {f"sub-stream {i}": r for i, r in enumerate(records)}, records_path.parent / "stream.png")


def draw_stream(method: str, set_id: str, streams: dict[str, list[dict]], path: Path) -> None:
    """How accuracy evolves along the stream: prompt or memory collapse shows here."""
    line_chart_png({name: stream_accuracy(records) for name, records in streams.items()}, path,
                   f"{method} on {set_id}: top-1 (%) per block of 200 images", "stream position")


def save_diagnostics(diagnostics: Diagnostics, folder: Path, title: str, suffix: str = "") -> None:
    """A method's end-of-set diagnostics: numbers as diagnostics.json, each bar chart as
    diagnostics_<name>.png, the tensors as diagnostics.safetensors; `suffix` names a sub-stream's files
    (diagnostics.stream0-of-4.json)."""
    if diagnostics.numbers:
        atomic_write_json(folder / f"diagnostics{suffix}.json", diagnostics.numbers)
    for name, values in diagnostics.bars.items():
        bar_chart_png(values, folder / f"diagnostics_{name}{suffix}.png", f"{title}: {name}")
    if diagnostics.tensors:
        save_file(diagnostics.tensors, str(folder / f"diagnostics{suffix}.safetensors"))
