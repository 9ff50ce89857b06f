"""The CLIP network, its checkpoint readers and its tokenizer."""

from .checkpoints import CheckpointError
from .clip import CLIP
from .config import CLIPConfig, Preprocess, TextConfig, VisionConfig
from .factory import inspect_checkpoint, load_clip, save_clip
from .tokenizer import TextTooLongError, Tokenizer

__all__ = ["CLIP", "CLIPConfig", "CheckpointError", "Preprocess", "TextConfig", "TextTooLongError", "Tokenizer",
           "VisionConfig", "inspect_checkpoint", "load_clip", "save_clip"]
