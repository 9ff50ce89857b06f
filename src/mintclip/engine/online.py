"""Online methods: one stream through its sets whose state flows from image to image and set to set,
saved for an exact resume; with --online-shards, K independent sub-streams per set, merged by rank 0."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..adapt.base import Diagnostics, build_method
from ..data import TestSet, set_label
from .config import Prepared, RunConfig, RunError, stream_order
from .distributed import OnlineStream, merge_shards, sub_stream_suffix, suffixed
from .plots import bar_chart_png, line_chart_png
from .records import RecordWriter, atomic_torch_save, atomic_write_json, read_records
from .report import stream_accuracy
from .samples import run_set


def run_stream(config: RunConfig, prepared: Prepared, seed: int, folder: Path, stream: OnlineStream) -> None:
    """One stream of an online method through its sets in order; its state flows from set to set.

    Every stream starts from a fresh method, so seed 1 does not inherit seed 0's memory. On resume it
    restarts from its last saved state: state saved between sets is loaded before the next set's
    `setup` (as it was held then), state saved within a set after it."""
    prepared = dataclasses.replace(prepared, method=build_method(config.method, config.hp))
    method, sets = prepared.method, list(stream.sets)
    checkpoint_path = folder / stream.state_file
    checkpoint = {"finished": [], "set": None, "position": 0, "state": {}}
    if config.resume and checkpoint_path.is_file():
        checkpoint = read_state(checkpoint_path)
    pending_state = config.resume and checkpoint_path.is_file()
    for set_id in sets:
        dataset = prepared.datasets[set_id]
        set_folder = folder / set_label(set_id)
        records_path = set_folder / "records.jsonl"
        order = stream.positions(stream_order(len(dataset), seed, config.limit))
        start = 0
        if pending_state and set_id in checkpoint["finished"]:
            continue
        if pending_state and checkpoint["set"] is None:
            method.load_state_dict(checkpoint["state"])
            pending_state = False
        method.setup(prepared.model, TestSet.of(dataset))
        if pending_state and checkpoint["set"] == set_id:
            method.load_state_dict(checkpoint["state"])
            start, pending_state = checkpoint["position"], False
        finished = sets[: sets.index(set_id)]

        def save_state(position: int, set_id: str = set_id, finished: list[str] = finished) -> None:
            atomic_torch_save(checkpoint_path, {"finished": finished, "set": set_id, "position": position,
                                                "state": method.state_dict()})

        writer = RecordWriter(suffixed(records_path, stream.suffix), keep=start)
        try:
            run_set(config, prepared, dataset, order, start, seed, writer, save_state)
        finally:
            writer.close()
        atomic_torch_save(checkpoint_path, {"finished": [*finished, set_id], "set": None, "position": 0,
                                            "state": method.state_dict()})
        save_diagnostics(method.diagnostics(), set_folder, f"{method.name} {set_id}{stream.suffix}", stream.suffix)
        if stream.count == 1:  # sub-streams are drawn together when merged
            draw_stream(method.name, set_id, {method.name: read_records(records_path)}, set_folder / "stream.png")


def read_state(path: Path) -> dict[str, Any]:
    """A stream's saved state, weights-only. A corrupt or tampered file fails with nearly any exception
    (torch's own advises weights_only=False, which would run what the file holds): all are one RunError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # of any type: see the docstring
        state = None
    valid = (isinstance(state, dict) and isinstance(state.get("finished"), list)
             and isinstance(state.get("set"), (str, type(None))) and isinstance(state.get("position"), int)
             and isinstance(state.get("state"), dict))
    if not valid:
        raise RunError(f"{path} is not a valid mintclip state file (corrupt or not written by mintclip); delete it "
                       "and the run folder's records to start over, or choose another --out")
    return state


def merge_sub_streams(config: RunConfig, prepared: Prepared, seed: int, folder: Path) -> None:
    """Rank 0, once every sub-stream of the seed is done: each set's sub-stream records interleaved
    back into stream order, and a stream plot with one line per sub-stream."""
    k, name = config.online_shards, prepared.method.name
    for set_id, dataset in prepared.datasets.items():
        records_path = folder / set_label(set_id) / "records.jsonl"
        parts = [suffixed(records_path, sub_stream_suffix(i, k)) for i in range(k)]
        total = len(stream_order(len(dataset), seed, config.limit))
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
