"""Datasets with the reference label spaces, robust image decoding, and test-time views."""

from .catalog import SET_IDS, check_data, open_dataset, resolve_set_id, set_label
from .decode import DecodeError, load_image
from .folders import DatasetError, ImageDataset
from .loader import StreamItem, min_side_for, stream_images
from .templates import template_set, templates_for
from .testset import Family, TestSet, family_of
from .views import ViewMaker

__all__ = ["SET_IDS", "DatasetError", "DecodeError", "Family", "ImageDataset", "StreamItem", "TestSet", "ViewMaker",
           "check_data", "family_of", "load_image", "min_side_for", "open_dataset", "resolve_set_id", "set_label",
           "stream_images", "template_set", "templates_for"]
