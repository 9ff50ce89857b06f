"""The `mintclip` command line. Every failure the user can fix is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .model import CheckpointError, inspect_checkpoint


def _info(args: argparse.Namespace) -> None:
    for path in args.paths:
        print("\n".join(inspect_checkpoint(path, act=args.act).lines()))
        if len(args.paths) > 1:
            print()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mintclip", description="Test-time adaptation of CLIP models.")
    parser.add_argument("--version", action="version", version=f"mintclip {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = commands.add_parser("info", help="what a checkpoint is: format, architecture, settings, SHA-256",
                               description="Describe CLIP checkpoints (OpenAI .pt, open_clip, Hugging Face "
                                           "directory, mintclip safetensors) without loading a model.")
    info.add_argument("paths", nargs="+", metavar="PATH", help="checkpoint file or directory")
    info.add_argument("--act", choices=("quick_gelu", "gelu"), help="activation, when the checkpoint does not say")
    info.set_defaults(handler=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except CheckpointError as e:
        print(f"mintclip: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
