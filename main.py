"""The seed repositories' command line (MINT / TPT `main.py`), on mintclip's engine: MINT by default.

    python main.py DATA_ROOT --test_sets A/V/R/K --gpu 0 [-a ViT-B/16] [--load coop.pth] [--tta_steps 3] ...
    python main.py DATA_ROOT --test_sets A --method tpt --tta_steps 1

Without --weights, the checkpoint is looked for where OpenAI's `clip` package keeps its downloads
(~/.cache/clip/ViT-B-16.pt for -a ViT-B/16); nothing is downloaded.
"""

import sys

from mintclip.cli import original_main

if __name__ == "__main__":
    sys.exit(original_main())
