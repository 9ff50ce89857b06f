"""The stream of decoded test images: DataLoader workers decode, the model's device makes the views.

Workers return one uint8 image each (JPEG decoding reduced while the shorter side stays >= `min_side`,
enough for the smallest random crop to keep full resolution); an image that cannot be decoded comes
back as a skip with its reason, and the stream goes on. Views are made afterwards from (seed, index)
alone, so nothing here depends on the number of workers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .decode import DecodeError
from .folders import ImageDataset
from .views import image_to_tensor


def min_side_for(size: int = 224, min_scale: float = 0.08) -> int:
    """The shorter side at which a crop of min_scale of the area still has `size` pixels a side (792 for 224)."""
    return math.ceil(size / math.sqrt(min_scale))


@dataclass
class StreamItem:
    index: int  # the sample's index in the dataset: with the run seed, it fixes the views
    image: Tensor | None  # uint8 (3, H, W), None when skipped
    label: int
    path: str
    skip_reason: str | None = None


class DecodedImages(Dataset):
    def __init__(self, dataset: ImageDataset, order: Sequence[int], min_side: int | None) -> None:
        self.dataset, self.order, self.min_side = dataset, list(order), min_side

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, position: int) -> StreamItem:
        index = self.order[position]
        path, label = self.dataset.samples[index]
        try:
            image, _, _ = self.dataset.load(index, min_side=self.min_side)
        except DecodeError as e:
            return StreamItem(index, None, label, str(path), e.reason)
        return StreamItem(index, image_to_tensor(image), label, str(path))


def stream_images(dataset: ImageDataset, order: Sequence[int] | None = None, workers: int = 4,
                  min_side: int | None = min_side_for()) -> Iterator[StreamItem]:
    """Decoded images in `order` (default: dataset order), prefetched by `workers` processes."""
    yield from prefetched(DecodedImages(dataset, range(len(dataset)) if order is None else order, min_side), workers)


def prefetched(images: Dataset, workers: int) -> Iterator[StreamItem]:
    """`images` (a dataset of StreamItems) in order, decoded ahead by `workers` processes (0: in this one)."""
    yield from DataLoader(images, batch_size=None, shuffle=False, num_workers=workers, persistent_workers=False,
                          prefetch_factor=4 if workers else None)
