"""The CLIP network, its checkpoint readers and its tokenizer."""

from .checkpoints import CheckpointError
from .clip import CLIP
from .config import CLIPConfig, Preprocess, TextConfig, VisionConfig
from .factory import DeviceError, check_device, inspect_checkpoint, load_clip, save_clip
from .locate import locate_weights
from .tokenizer import TextTooLongError, Tokenizer

__all__ = ["CLIP", "CLIPConfig", "CheckpointError", "DeviceError", "Preprocess", "TextConfig", "TextTooLongError",
           "Tokenizer", "VisionConfig", "check_device", "inspect_checkpoint", "load_clip", "locate_weights", "save_clip"]
