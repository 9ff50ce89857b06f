"""The per-sample loop shared by every method: views on the device, the method's prediction, and one
record per sample (a skip for an unreadable image or non-finite logits), flushed line by line.

A stream's items may come from several datasets (an interleaving scenario's sets, an open-set scenario's
out-of-distribution images), so images are decoded item by item from each one's own dataset.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from ..adapt.base import Method, autocast_for
from ..adapt.prompts import encode_class_prompts
from ..data import StreamItem, ViewMaker, min_side_for
from ..data.loader import DecodedImages, prefetched
from ..model import CLIP
from .config import Prepared, RunConfig, augmix_for
from .records import RecordWriter, atomic_write_json
from .scenarios import Item


class StreamImages(Dataset):
    """The decoded images of stream items, each read from its own dataset (loader.DecodedImages reads)."""

    def __init__(self, prepared: Prepared, items: list[Item], min_side: int | None) -> None:
        self.items = items
        self.sets = {set_id: DecodedImages(dataset, range(len(dataset)), min_side)
                     for set_id, dataset in prepared.datasets.items()}
        self.ood = DecodedImages(prepared.ood, range(len(prepared.ood)), min_side) if prepared.ood else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int) -> StreamItem:
        item = self.items[position]
        return (self.ood if item.ood else self.sets[item.set_id])[item.index]


def stream_decoded(prepared: Prepared, items: list[Item], workers: int) -> Iterator[StreamItem]:
    """The items' images in order, prefetched by `workers` processes."""
    yield from prefetched(StreamImages(prepared, items, min_side_for(prepared.model.config.preprocess.image_size)),
                          workers)


class Timing:
    """Seconds spent adapting a set's readable images, in timing.json beside its records: kept out of the
    records, so that records are reproducible; one file per process or sub-stream (timing.rank0-of-2.json)."""

    def __init__(self, records_path: Path, resumed: bool) -> None:
        self.path = records_path.with_name(records_path.name.replace("records", "timing").replace(".jsonl", ".json"))
        self.values = (json.loads(self.path.read_text()) if resumed and self.path.is_file()
                       else {"images": 0, "seconds": 0.0})

    def add(self, images: int, seconds: float) -> None:
        if images:
            self.values["images"] += images
            self.values["seconds"] += seconds

    def save(self) -> None:
        values = self.values
        atomic_write_json(self.path, {"images": values["images"], "seconds": values["seconds"],
                                      "images_per_second": values["images"] / max(values["seconds"], 1e-9)})


class SetSide:
    """What a set's images need beside the method: its views, the zero-shot text of its records, and
    where they go. An out-of-distribution image's views are keyed by N + its index (N the set's images),
    so that they are drawn apart from every in-distribution image's."""

    def __init__(self, config: RunConfig, prepared: Prepared, method: Method, set_id: str, writer: RecordWriter,
                 resumed: bool) -> None:
        model, dataset = prepared.model, prepared.datasets[set_id]
        preprocess = model.config.preprocess
        self.maker = ViewMaker(n_views=method.views_per_image, size=preprocess.image_size,
                               augmix=augmix_for(config, method, dataset), mean=preprocess.mean, std=preprocess.std,
                               device=model.device, interpolation=preprocess.interpolation)
        self.zeroshot_text = encode_class_prompts(model, dataset.classnames, ["a photo of a {}."])
        self.images = len(dataset)
        self.writer = writer
        self.timing = Timing(writer.path, resumed)
        self.trace: RecordWriter | None = None  # an online stream's per-sample trace (study.py), if kept

    def record(self, model: CLIP, method: Method, seed: int, group: list[tuple[Item, StreamItem]],
               position: int = 0) -> list[dict]:
        """Predict consecutive items of the set, write their records in stream order and return them;
        with a trace, also what the method did at each (from stream position `position` on)."""
        began = time.perf_counter()
        keys = [self.images + item.index if item.ood else item.index for item, _ in group]
        records = predict_group(model, method, self.maker, self.zeroshot_text, seed, [image for _, image in group],
                                keys)
        self.timing.add(sum(image.image is not None for _, image in group), time.perf_counter() - began)
        for (item, _), record in zip(group, records):
            if item.ood:
                record["ood"] = True
            self.writer.write(record)
        if self.trace is not None:
            for offset, (item, image) in enumerate(group):
                done = method.sample_trace() if image.image is not None else {}
                self.trace.write({"index": item.index, "stream_position": position + offset, **done})
        return records

    def finish(self) -> None:
        """The set's records are all written: on disk, with their timing."""
        self.writer.sync()
        self.timing.save()
        if self.trace is not None:
            self.trace.sync()

    def close(self) -> None:
        self.writer.close()
        if self.trace is not None:
            self.trace.close()


class Progress:
    """One progress bar over a stream, with the running top-1 of its scored in-distribution images."""

    def __init__(self, config: RunConfig, method: Method, total: int, start: int) -> None:
        self.name = method.name
        self.bar = tqdm(total=total, initial=start, disable=not config.progress, unit="img", dynamic_ncols=True)
        self.correct = self.scored = 0

    def describe(self, set_id: str) -> None:
        self.bar.set_description(f"{self.name} {set_id}")

    def update(self, records: list[dict]) -> None:
        for record in records:
            if "top5" in record and not record.get("ood"):
                self.scored += 1
                self.correct += record["top5"][0][0] == record["label"]
        self.bar.set_postfix(top1=f"{100 * self.correct / max(self.scored, 1):.2f}")
        self.bar.update(len(records))

    def close(self) -> None:
        self.bar.close()


def run_set(config: RunConfig, prepared: Prepared, set_id: str, items: list[Item], start: int, seed: int,
            writer: RecordWriter) -> None:
    """Positions start.. of one set's items (an episodic method), `config.batch_images` at a time, each
    group's records written in stream order once the group is predicted."""
    model, method = prepared.model, prepared.method
    side = SetSide(config, prepared, method, set_id, writer, resumed=start > 0)
    progress = Progress(config, method, len(items), start)
    progress.describe(set_id)
    group: list[tuple[Item, StreamItem]] = []
    try:
        for position, pair in enumerate(zip(items[start:], stream_decoded(prepared, items[start:], config.workers)),
                                        start=start):
            group.append(pair)
            if len(group) < config.batch_images and position + 1 < len(items):
                continue
            progress.update(side.record(model, method, seed, group))
            group = []
        side.finish()
    finally:
        progress.close()
        writer.close()


def predict_group(model: CLIP, method: Method, maker: ViewMaker, zeroshot_text: torch.Tensor, seed: int,
                  group: list[StreamItem], keys: list[int]) -> list[dict[str, Any]]:
    """The records of consecutive stream items: the readable images adapted together by
    `method.predict_batch`, with view 0's zero-shot prediction; unreadable ones recorded as skips.
    `keys`: what each item's views are drawn from with the seed (its index, for an in-distribution image)."""
    readable = [(item, key) for item, key in zip(group, keys) if item.image is not None]
    outcomes: list[dict[str, Any]] = []  # per readable image, in group order
    if readable:
        views = torch.stack([maker(item.image.to(model.device), seed, key) for item, key in readable])  # (B, V, 3, H, W)
        prediction = method.predict_batch(views)
        logits, skipped, view0 = prediction.logits.float(), prediction.skipped_updates, prediction.view0_features
        if view0 is None:  # (B, D): a method whose own features are prompted (MINT) does not give them
            with torch.no_grad(), autocast_for(model.device, method.config.precision):
                view0 = F.normalize(model.encode_image(views[:, 0]).float(), dim=-1)
        top = logits.softmax(-1).topk(min(5, logits.shape[-1]))
        # one read-back per quantity for the whole group, not one per entry
        probs, classes, finite = top.values.tolist(), top.indices.tolist(), torch.isfinite(logits).all(-1).tolist()
        zeroshot = (view0 @ zeroshot_text.T).argmax(-1).tolist()
        for b in range(len(readable)):
            skips = {"skipped_updates": skipped[b]} if skipped[b] else {}
            outcomes.append({"top5": [[c, round(p, 6)] for p, c in zip(probs[b], classes[b])],
                             "zeroshot": zeroshot[b], **skips} if finite[b]
                            else {"skipped": "non-finite logits", **skips})
    results = iter(outcomes)
    return [{"index": item.index, "path": item.path, "label": item.label,
             **(next(results) if item.image is not None else {"skipped": item.skip_reason})} for item in group]
