"""The per-sample loop shared by every method: views on the device, the method's prediction, and one
record per sample (a skip for an unreadable image or non-finite logits), flushed line by line."""

from __future__ import annotations

import json
import time
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..adapt.base import Method, autocast_for
from ..adapt.prompts import encode_class_prompts
from ..data import ImageDataset, ViewMaker, min_side_for, stream_images
from ..model import CLIP
from .config import Prepared, RunConfig, augmix_for
from .records import RecordWriter, atomic_write_json


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
    outcomes: list[dict[str, Any]] = []  # per readable image, in group order
    if images:
        views = torch.stack([maker(item.image.to(model.device), seed, item.index) for item in images])  # (B, V, 3, H, W)
        prediction = method.predict_batch(views)
        logits, skipped, view0 = prediction.logits.float(), prediction.skipped_updates, prediction.view0_features
        if view0 is None:  # (B, D): a method whose own features are prompted (MINT) does not give them
            with torch.no_grad(), autocast_for(model.device, method.config.precision):
                view0 = F.normalize(model.encode_image(views[:, 0]).float(), dim=-1)
        top = logits.softmax(-1).topk(min(5, logits.shape[-1]))
        # one read-back per quantity for the whole group, not one per entry
        probs, classes, finite = top.values.tolist(), top.indices.tolist(), torch.isfinite(logits).all(-1).tolist()
        zeroshot = (view0 @ zeroshot_text.T).argmax(-1).tolist()
        for b in range(len(images)):
            skips = {"skipped_updates": skipped[b]} if skipped[b] else {}
            outcomes.append({"top5": [[c, round(p, 6)] for p, c in zip(probs[b], classes[b])],
                             "zeroshot": zeroshot[b], **skips} if finite[b]
                            else {"skipped": "non-finite logits", **skips})
    readable = iter(outcomes)
    return [{"index": item.index, "path": item.path, "label": item.label,
             **(next(readable) if item.image is not None else {"skipped": item.skip_reason})} for item in group]
