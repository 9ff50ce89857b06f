"""The decoded stream: same items whatever the worker count; a broken image is a skip, not a stop."""

import torch

from mintclip.data.catalog import open_dataset
from mintclip.data.loader import min_side_for, stream_images
from tests.helpers import make_tree


def test_stream_skips_a_truncated_image_and_goes_on(tmp_path):
    tree = make_tree(tmp_path / "tree", ["cat", "dog"], per_class=3)
    broken = tree / "dog" / "img_1.jpg"
    broken.write_bytes(broken.read_bytes()[:40])
    ds = open_dataset(tree, "folder")
    order = [5, 0, 4, 1, 3, 2]
    serial = list(stream_images(ds, order, workers=0))
    parallel = list(stream_images(ds, order, workers=2))
    assert [item.index for item in serial] == order == [item.index for item in parallel]
    skipped = [item for item in serial if item.skip_reason]
    assert len(skipped) == 1 and skipped[0].path == str(broken) and skipped[0].image is None
    assert "truncated" in skipped[0].skip_reason or "corrupt" in skipped[0].skip_reason
    for a, b in zip(serial, parallel):
        assert a.label == b.label and a.skip_reason == b.skip_reason
        if a.image is not None:
            assert a.image.dtype == torch.uint8 and a.image.shape == (3, 6, 8) and torch.equal(a.image, b.image)


def test_min_side_keeps_the_smallest_crop_at_full_resolution():
    assert min_side_for(224) == 792 and min_side_for(336) == 1188
