"""The engine: stream each test set, make its views on the device, call the method, record every sample.

Everything that can be wrong (weights, set ids, data layouts, hyper-parameters, an output folder that
holds another run) is checked before the first image. Views depend on (seed, index) only, so every
method sees the same views for a sample. Records are flushed one line at a time; online state is
saved atomically every `save_every` samples, and `resume` continues a killed run so that its records
equal an uninterrupted run's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from ..adapt.base import Method, autocast_for, build_method
from ..adapt.prompts import encode_class_prompts
from ..data import (ImageDataset, ViewMaker, min_side_for, open_dataset, resolve_set_id, set_label,
                    stream_images)
from ..model import CLIP, load_clip
from .distributed import OnlineStream, Shard, merge_shards, shard_path, suffixed
from .records import RecordWriter, atomic_torch_save, atomic_write_json, read_records
from .plots import bar_chart_png, line_chart_png
from .report import details_table, metrics, results_table, stream_accuracy


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


def prepare(config: RunConfig) -> Prepared:
    """Every check that needs no image: weights, method, set ids, layouts, and the output folder."""
    set_ids = [resolve_set_id(s) for s in config.test_sets]
    config.test_sets = set_ids
    labels = [set_label(s) for s in set_ids]
    if len(set(labels)) < len(labels):
        raise RunError(f"--test_sets {'/'.join(set_ids)}: a set is named twice")
    try:
        method = build_method(config.method, config.hp)
    except (ValueError, TypeError) as e:
        raise RunError(str(e)) from None
    if config.online_shards is not None and (not method.online or config.online_shards < 1):
        raise RunError(f"--online-shards {config.online_shards}: needs an online method (mint, tda, dynaprompt) and "
                       f"K >= 1; {method.name} is {'online' if method.online else 'episodic, sharded by sample already'}")
    if config.batch_images < 1 or (config.batch_images > 1 and method.online):
        raise RunError(f"--batch-images {config.batch_images}: needs B >= 1, and 1 for an online method, which adapts "
                       "one image at a time in stream order")
    datasets = {s: open_dataset(config.data_root, s) for s in set_ids}
    out = Path(config.out)
    saved = out / "config.json"
    if saved.is_file():
        previous = json.loads(saved.read_text()).get("run")
        if not config.resume:
            raise RunError(f"{out}: holds a run already; pass --resume to continue it, or choose another --out")
        if previous != config.identity():
            raise RunError(f"{out}: holds a different run (its config.json differs); --resume needs the same "
                           "settings")
    elif config.resume and out.exists() and any(out.iterdir()):
        raise RunError(f"{out}: --resume, but it has no config.json of a mintclip run")
    check_writable(out)
    if config.compile and config.device.startswith("cpu") and not cxx_compiler():
        raise RunError("--compile on a CPU needs a C++ compiler (g++, c++ or clang++, or $CXX) for torch.compile; "
                       "install one or drop --compile")
    model, _ = load_clip(config.weights, device=config.device, act=config.act)
    if config.compile:
        model.visual.compile(dynamic=False)  # one graph per view count: the views, view 0, MINT's selected views
    try:
        method.check(model)
    except ValueError as e:
        raise RunError(str(e)) from None
    return Prepared(model, method, datasets)


def cxx_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU code needs, if there is one."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    return next((found for found in map(shutil.which, names) if found), None)


def check_writable(out: Path) -> None:
    """An output folder that cannot be written fails here, before any image, in one line."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise RunError(f"{out}: cannot write the run's output there ({e.strerror or e})") from None


def resolved_config(config: RunConfig, prepared: Prepared) -> dict[str, Any]:
    method, model = prepared.method, prepared.model
    return {
        "run": config.identity(),
        "method": {"name": method.name, "online": method.online, "source": method.source,
                   "hyper_parameters": dataclasses.asdict(method.config), "notes": method.notes()},
        "model": {"architecture": model.config.arch_name, "act": model.config.act,
                  "preprocess": dataclasses.asdict(model.config.preprocess), "sources": model.config.sources},
        "datasets": {s: {"layout": ds.layout, "root": str(ds.root), "images": len(ds), "classes": len(ds.classnames),
                         "augmix": augmix_for(config, method, ds), "notes": ds.notes}
                     for s, ds in prepared.datasets.items()},
    }


def describe(config: RunConfig, prepared: Prepared) -> str:
    """What the run is about to do, in a few lines, before the first image."""
    model, method = prepared.model.config, prepared.method
    extras = ([f"{config.batch_images} images at a time"] if config.batch_images > 1 else []) + (
        ["image encoder under torch.compile"] if config.compile else [])
    lines = [f"mintclip run: {method.name} ({'online' if method.online else 'episodic'}) on {config.device}, "
             f"seeds {config.seeds}, {''.join(e + ', ' for e in extras)}writing to {config.out}",
             f"  model {model.arch_name}, act {model.act}, {model.preprocess.image_size}px "
             f"{model.preprocess.interpolation}, sha256 {model.sources.get('sha256', '?')[:12]}"]
    lines += [f"  {ds.summary()}" for ds in prepared.datasets.values()]
    lines += [f"  {note}" for note in method.notes()]
    return "\n".join(lines)


def augmix_for(config: RunConfig, method: Method, dataset: ImageDataset) -> bool:
    if config.augmix != "auto":
        return config.augmix == "on"
    chosen = method.augmix(dataset.set_id)
    return dataset.augmix if chosen is None else chosen


def stream_order(n: int, seed: int, limit: int | None) -> list[int]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return order[:limit] if limit is not None else order


def run(config: RunConfig) -> dict[str, list]:
    """Run every seed over every set; returns {set: [SetMetrics per seed]} and writes the summary.
    Under torchrun the processes share the work (see distributed.py) and rank 0 writes the summary."""
    shard = Shard.from_env()
    config.device = shard.device(config.device)
    config.progress = config.progress and shard.rank == 0
    created = shard.start(config.device)
    try:
        return _run(config, shard)
    finally:
        if created:
            torch.distributed.destroy_process_group()


def _run(config: RunConfig, shard: Shard) -> dict[str, list]:
    prepared = prepare(config)
    out = Path(config.out)
    shard.barrier()  # every process has checked the output folder before rank 0 claims it
    if shard.rank == 0:
        atomic_write_json(out / "config.json", resolved_config(config, prepared))
    if config.progress and shard.rank == 0:
        print(describe(config, prepared), file=sys.stderr)
    for seed in config.seeds:
        if prepared.method.online:
            for stream in shard.online_streams(config.test_sets, config.online_shards):
                run_seed(config, prepared, seed, out / f"seed{seed}", stream)
            if (config.online_shards or 1) > 1:
                shard.barrier()
                if shard.rank == 0:
                    merge_sub_streams(config, prepared, seed, out / f"seed{seed}")
        else:
            for set_id in config.test_sets:
                run_episodic_set(config, prepared, seed, out / f"seed{seed}", set_id, shard)
    shard.barrier()
    results: dict[str, list] = {s: [] for s in config.test_sets}
    for seed in config.seeds:
        for set_id in config.test_sets:
            results[set_id].append(metrics(read_records(out / f"seed{seed}" / set_label(set_id) / "records.jsonl")))
    if shard.rank == 0:
        write_summary(config, prepared, results, shard)
    shard.barrier()
    return results


def write_summary(config: RunConfig, prepared: Prepared, results: dict[str, list], shard: Shard) -> None:
    out = Path(config.out)
    by_label = {set_label(s): runs for s, runs in results.items()}
    markdown, table = results_table({prepared.method.name: by_label}, list(by_label))
    details = details_table(prepared.method.name, by_label)
    notes = [*prepared.method.notes()]
    if config.online_shards:
        k = config.online_shards
        notes.append(f"online method in {k} independent sub-streams per set: sub-stream i took positions i, i + {k}, "
                     f"... of every set's stream, starting from a fresh state; each saw 1/{k} of the images, so the "
                     "accuracy is not that of one stream")
    elif shard.sharded and prepared.method.online:
        notes.append(f"online method over {shard.world} processes: each took whole sets (set i to process i mod "
                     f"{shard.world}), and its state flowed only between its own sets")
    listed = "".join(f"- {note}\n" for note in notes)
    (out / "summary.md").write_text(f"Top-1 accuracy (%), {len(config.seeds)} seed(s)\n\n{markdown}\n"
                                    f"Per set (%; ECE with 20 bins)\n\n{details}" + (f"\n{listed}" if listed else ""))
    (out / "summary.csv").write_text(table)


def run_episodic_set(config: RunConfig, prepared: Prepared, seed: int, folder: Path, set_id: str,
                     shard: Shard) -> None:
    """One set of an episodic method; this process takes positions rank, rank + N, ... of the stream.
    Resume continues each process's own records where they stop."""
    dataset = prepared.datasets[set_id]
    records_path = folder / set_label(set_id) / "records.jsonl"
    order = stream_order(len(dataset), seed, config.limit)
    if config.resume and len(read_records(records_path)) >= len(order):
        return
    mine = order[shard.rank::shard.world]
    shard_records = shard_path(records_path, shard)
    start = min(len(read_records(shard_records)), len(mine)) if config.resume else 0
    start -= start % config.batch_images  # resume at a group boundary: the same groups, the same rounding
    if start < len(mine):
        prepared.method.setup(prepared.model, dataset.classnames, set_id)
        writer = RecordWriter(shard_records, keep=start)
        try:
            run_set(config, prepared, dataset, mine, start, seed, writer, lambda position: None)
        finally:
            writer.close()
    shard.barrier()
    if shard.sharded and shard.rank == 0:
        merge_shards(records_path, [shard_path(records_path, Shard(r, shard.world)) for r in range(shard.world)],
                     len(order))
    shard.barrier()


def run_seed(config: RunConfig, prepared: Prepared, seed: int, folder: Path, stream: OnlineStream) -> None:
    """One stream of an online method through its sets in order; its state flows from set to set.

    Every stream starts from a fresh method, so seed 1 does not inherit seed 0's memory. On resume it
    restarts from its last saved state: state saved between sets is loaded before the next set's
    `setup` (as it was held then), state saved within a set after it."""
    prepared = dataclasses.replace(prepared, method=build_method(config.method, config.hp))
    method, sets = prepared.method, list(stream.sets)
    checkpoint_path = folder / stream.state
    checkpoint = {"finished": [], "set": None, "position": 0, "state": {}}
    if config.resume and checkpoint_path.is_file():
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
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
        method.setup(prepared.model, dataset.classnames, set_id)
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


def merge_sub_streams(config: RunConfig, prepared: Prepared, seed: int, folder: Path) -> None:
    """Rank 0, once every sub-stream of the seed is done: each set's sub-stream records interleaved
    back into stream order, and a stream plot with one line per sub-stream."""
    k, name = config.online_shards, prepared.method.name
    for set_id, dataset in prepared.datasets.items():
        records_path = folder / set_label(set_id) / "records.jsonl"
        parts = [suffixed(records_path, OnlineStream((), i, k).suffix) for i in range(k)]
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


def save_diagnostics(diagnostics: dict[str, Any], folder: Path, title: str, suffix: str = "") -> None:
    """A method's end-of-set diagnostics: numbers as JSON, bars as PNG, tensors as safetensors; `suffix`
    names a sub-stream's files (diagnostics.stream0-of-4.json)."""
    if diagnostics.get("numbers"):
        atomic_write_json(folder / f"diagnostics{suffix}.json", diagnostics["numbers"])
    for name, values in diagnostics.get("bars", {}).items():
        bar_chart_png(values, folder / f"{name}{suffix}.png", f"{title}: {name}")
    if diagnostics.get("tensors"):
        save_file(diagnostics["tensors"], str(folder / f"memory{suffix}.safetensors"))


def run_set(config: RunConfig, prepared: Prepared, dataset: ImageDataset, order: list[int], start: int, seed: int,
            writer: RecordWriter, save_state) -> None:
    """Positions start.. of `order`, `config.batch_images` at a time (online methods: one), each group's
    records written in stream order once the group is predicted."""
    model, method = prepared.model, prepared.method
    preprocess = model.config.preprocess
    maker = ViewMaker(n_views=method.views_per_image, size=preprocess.image_size, augmix=augmix_for(config, method, dataset),
                      mean=preprocess.mean, std=preprocess.std, device=model.device,
                      interpolation=preprocess.interpolation)
    zeroshot_text = encode_class_prompts(model, dataset.classnames, ["a photo of a {}."])
    correct = scored = 0
    # kept out of the records, so that records are reproducible; one file per process (timing.rank0-of-2.json)
    timing_path = writer.path.with_name(writer.path.name.replace("records", "timing").replace(".jsonl", ".json"))
    timing = json.loads(timing_path.read_text()) if start and timing_path.is_file() else {"images": 0, "seconds": 0.0}
    bar = tqdm(total=len(order), initial=start, desc=f"{method.name} {dataset.set_id}", disable=not config.progress,
               unit="img", dynamic_ncols=True)
    group: list = []
    for position, item in enumerate(stream_images(dataset, order[start:], config.workers,
                                                  min_side_for(preprocess.image_size)), start=start):
        group.append(item)
        if len(group) < config.batch_images and position + 1 < len(order):
            continue
        began = time.perf_counter()
        records = predict_group(model, method, maker, zeroshot_text, seed, group)
        readable = sum(item.image is not None for item in group)
        if readable:
            timing["images"] += readable
            timing["seconds"] += time.perf_counter() - began
        for record in records:
            writer.write(record)
            if "top5" in record:
                scored += 1
                correct += record["top5"][0][0] == record["label"]
        bar.set_postfix(top1=f"{100 * correct / max(scored, 1):.2f}")
        bar.update(len(group))
        group = []
        if method.online and (position + 1) % config.save_every == 0:
            writer.sync()
            save_state(position + 1)
    bar.close()
    writer.sync()
    atomic_write_json(timing_path, {**timing, "images_per_second": timing["images"] / max(timing["seconds"], 1e-9)})


def predict_group(model: CLIP, method: Method, maker: ViewMaker, zeroshot_text: torch.Tensor, seed: int,
                  group: list) -> list[dict[str, Any]]:
    """The records of consecutive stream items: the readable images adapted together by
    `method.predict_batch`, with view 0's zero-shot prediction; unreadable ones recorded as skips."""
    images = [item for item in group if item.image is not None]
    predicted: dict[int, dict[str, Any]] = {}
    if images:
        views = torch.stack([maker(item.image.to(model.device), seed, item.index) for item in images])  # (B, V, 3, H, W)
        logits, skipped = method.predict_batch(views)
        logits = logits.float()  # (B, C)
        with torch.no_grad(), autocast_for(model.device, method.config.precision):
            view0 = F.normalize(model.encode_image(views[:, 0]).float(), dim=-1)  # (B, D)
        top = logits.softmax(-1).topk(min(5, logits.shape[-1]))
        # one read-back per quantity for the whole group, not one per entry
        probs, classes, finite = top.values.tolist(), top.indices.tolist(), torch.isfinite(logits).all(-1).tolist()
        zeroshot = (view0 @ zeroshot_text.T).argmax(-1).tolist()
        for b, item in enumerate(images):
            skips = {"skipped_updates": skipped[b]} if skipped[b] else {}
            predicted[id(item)] = ({"top5": [[c, round(p, 6)] for p, c in zip(probs[b], classes[b])],
                                    "zeroshot": zeroshot[b], **skips} if finite[b]
                                   else {"skipped": "non-finite logits", **skips})
    return [{"index": item.index, "path": item.path, "label": item.label,
             **(predicted[id(item)] if item.image is not None else {"skipped": item.skip_reason})} for item in group]
