"""The `mintclip` command line. Every failure the user can fix is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .data.catalog import SET_IDS, DatasetError, check_data
from .model import CheckpointError, inspect_checkpoint


def _info(args: argparse.Namespace) -> int:
    for path in args.paths:
        print("\n".join(inspect_checkpoint(path, act=args.act).lines()))
        if len(args.paths) > 1:
            print()
    return 0


def _check_data(args: argparse.Namespace) -> int:
    set_ids = args.test_sets.split("/") if args.test_sets else list(SET_IDS)
    report = check_data(args.root, set_ids)
    for _, dataset, line in report:
        print(line)
        for note in dataset.notes if dataset else []:
            print(f"    note: {note}")
    ready = sum(dataset is not None for _, dataset, _ in report)
    print(f"{ready} of {len(report)} sets ready")
    return 0 if ready == len(report) or (not args.test_sets and ready) else 2


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
    check = commands.add_parser("check-data", help="which test sets a data root holds, and any problem with them",
                                description="Find each test set's layout, count images and classes and report "
                                            "problems, without reading any image.")
    check.add_argument("root", help="the data root (for 'folder' the tree itself, for 'csv' the CSV file)")
    check.add_argument("--test_sets", "--test-sets", help="sets separated by '/', e.g. A/V/R/K/I/Flower102 "
                                                           f"(default: all of {'/'.join(SET_IDS)})")
    check.set_defaults(handler=_check_data)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (CheckpointError, DatasetError) as e:
        print(f"mintclip: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
