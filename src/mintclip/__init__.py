"""mintclip: fast, faithful test-time adaptation of CLIP (MINT, TPT, C-TPT, ZERO, MTA, TDA, DynaPrompt).

The model API is imported on first use, so that the command line answers `--help` without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["CLIP", "CheckpointError", "DeviceError", "Tokenizer", "__version__", "inspect_checkpoint", "load_clip",
           "locate_weights", "save_clip"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(".model", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
