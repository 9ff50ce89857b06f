"""mintclip: fast, faithful test-time adaptation of CLIP (MINT, TPT, C-TPT, ZERO, MTA, TDA, DynaPrompt)."""

from .model import CLIP, CheckpointError, Tokenizer, inspect_checkpoint, load_clip, save_clip

__version__ = "0.1.0"
__all__ = ["CLIP", "CheckpointError", "Tokenizer", "__version__", "inspect_checkpoint", "load_clip", "save_clip"]
