"""The `mintclip` command line. Every failure the user can fix is one line on stderr and exit code 2.

Nothing heavy (torch, PIL) is imported until a sub-command runs, so `mintclip --help` and `--version`
answer at once; each sub-command's options are added only when that sub-command is parsed.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__

WRITE_FAILURES = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)  # disk full, quota, read-only, denied
INTERRUPTED = 130  # the shell's code for a process ended by Ctrl-C


class UsageError(ValueError):
    """A file or flag the user named that cannot be used; one line."""


def whole_number(text: str, minimum: int) -> int:
    value = int(text) if text.strip().lstrip("-").isdigit() else None
    if value is None or value < minimum:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least {minimum}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return whole_number(text, 1)


def non_negative_int(text: str) -> int:
    return whole_number(text, 0)


def seed_list(text: str) -> list[int]:
    """`0,1,2`: the stream orders, each a whole number, none twice."""
    seeds = [non_negative_int(item) for item in comma_list(text)]
    if not seeds or len(set(seeds)) < len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds separated by commas, e.g. 0,1,2; got {text!r}")
    return seeds


def default_workers() -> int:
    """Four decoding processes, or fewer on a machine with fewer cores (more would only contend)."""
    return min(4, os.cpu_count() or 1)


class Formatter(argparse.HelpFormatter):
    """Help that names each option's default, where it has one worth naming."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class LazyParser(argparse.ArgumentParser):
    """A sub-command's parser whose options are added the first time it parses, so that options whose
    choices or defaults need torch cost nothing until that sub-command is used."""

    def __init__(self, *args, populate: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs) -> None:
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)
        self._populate = populate

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self._populate is not None:
            populate, self._populate = self._populate, None
            populate(self)
        return super().parse_known_args(args, namespace)


def device_of(args: argparse.Namespace) -> str:
    """--device as given, else cuda:<--gpu>, else the CPU."""
    return args.device or (f"cuda:{args.gpu}" if args.gpu is not None else "cpu")


def comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _info(args: argparse.Namespace) -> int:
    """Every path is reported, a bad one as one error line, and the exit code says whether any failed."""
    from .model import CheckpointError, inspect_checkpoint

    failed = 0
    for path in args.paths:
        try:
            print("\n".join(inspect_checkpoint(path, act=args.act).lines()))
        except CheckpointError as e:
            failed += 1
            print(f"mintclip: error: {e}", file=sys.stderr)
            continue
        if len(args.paths) > 1:
            print()
    return 2 if failed else 0


def _check_data(args: argparse.Namespace) -> int:
    from .data.catalog import SET_IDS, check_data

    set_ids = args.test_sets.split("/") if args.test_sets else list(SET_IDS)
    report = check_data(args.root, set_ids, strict=args.strict)
    for _, dataset, line in report:
        print(line)
        if dataset:
            print(f"    {dataset.mapping_preview()}")
        for note in dataset.notes if dataset else []:
            print(f"    note: {note}")
    ready = sum(dataset is not None for _, dataset, _ in report)
    print(f"{ready} of {len(report)} sets ready")
    return 0 if ready == len(report) or (not args.test_sets and ready) else 2


def parse_hp(pairs: Sequence[str], config_file: str | None) -> dict[str, object]:
    """Hyper-parameters from a YAML mapping, then `key=value` pairs on top."""
    hp: dict[str, object] = {}
    if config_file:
        import yaml

        try:
            loaded = yaml.safe_load(Path(config_file).read_text(encoding="utf-8")) or {}
        except OSError as e:
            raise UsageError(f"--config {config_file}: cannot read it ({e.strerror or e})") from None
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
            raise UsageError(f"--config {config_file}: not valid YAML{at} ({getattr(e, 'problem', None) or e})") from None
        if not isinstance(loaded, dict):
            raise UsageError(f"--config {config_file}: expected a mapping of hyper-parameter names to values")
        hp.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--hp {pair!r}: expected key=value")
        hp[key.strip()] = value.strip()
    return hp


def method_names() -> str:
    """The registered methods; one that no official code backs says so."""
    from .adapt import available_methods

    return ", ".join(name if cls.official else f"{name} (designed from its paper: no official code is public)"
                     for name, cls in available_methods().items())


SCENARIO_HELP = ("the order of the test stream, recorded with the run (docs/protocols.md): iid = each set in its "
                 "seeded order, one set after another; sequential = the same order, named for the continual "
                 "protocol; cyclic:R = each set cut into R chunks, visited in rounds (A1 R1 K1 A2 R2 K2 ...); "
                 "mixed = every set's images in one shuffle; dirichlet:G = label-correlated order within each set "
                 "(Dirichlet over classes, small G: long runs of a class); open-set:SET:RHO = round(RHO*N) images "
                 "of SET mixed into each set of N, scored by AUROC and FPR@95, not accuracy; prefix:N = the first "
                 "N images of each set's order")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="output folder (default: runs/<method>)")
    parser.add_argument("--gpu", type=non_negative_int, help="CUDA device index (default: the CPU, or --device)")
    parser.add_argument("--device", help="torch device, e.g. cuda:1 or cpu (default: the CPU)")
    parser.add_argument("--resume", action="store_true", help="continue a killed run in --out where it stopped")
    parser.add_argument("--seeds", type=seed_list, metavar="S[,S...]",
                        help="stream orders to run, e.g. 0,1,2; the summary gives mean ± std (default: 0)")
    parser.add_argument("--hp", nargs="+", default=[], metavar="KEY=VALUE",
                        help="method hyper-parameters, e.g. --hp steps=3 lr=0.005 (default: the method's reference "
                             "values)")
    parser.add_argument("--config", help="YAML file of method hyper-parameters (--hp wins)")
    parser.add_argument("--workers", type=non_negative_int, default=default_workers(),
                        help="image decoding processes (0: decode in the main process)")
    parser.add_argument("--limit", type=positive_int, help="at most this many samples per set (default: all)")
    parser.add_argument("--scenario", default="iid", metavar="S", help=SCENARIO_HELP)
    parser.add_argument("--augmix", choices=("auto", "on", "off"), default="auto",
                        help="AugMix views: auto = the method's choice, else the set's reference default")
    parser.add_argument("--act", choices=("quick_gelu", "gelu"), help="activation, when the checkpoint does not say")
    parser.add_argument("--save-every", type=positive_int, default=50, help="samples between saves of online state")
    parser.add_argument("--batch-images", type=positive_int, default=1, metavar="B",
                        help="episodic methods: adapt B test images at once, each with its own prompt and optimiser "
                             "state (the same predictions as one at a time, faster on a GPU)")
    parser.add_argument("--compile", action="store_true",
                        help="run the frozen image encoder under torch.compile (static shapes; compiles on the first "
                             "images of each view count; numbers equal up to float rounding)")
    parser.add_argument("--online-shards", type=positive_int, metavar="K",
                        help="online methods: split every set into K independent sub-streams (k, k+K, ...), each "
                             "from a fresh state, spread over the torchrun processes; records depend on K only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--strict", action="store_true", help=STRICT_HELP)
    parser.add_argument("--coop", help="CoOp context checkpoint that starts the text prompt (tpt, ctpt, mint; "
                                       "default: the words 'a photo of a')")
    parser.add_argument("--reset-memory", choices=("never", "per-set"), help="mint: reset the bank at each set")


def run_config(args: argparse.Namespace, method: str, weights: str, test_sets: str, hp: dict[str, object],
               seeds: list[int]):
    """The engine's RunConfig from `mintclip run`'s options (also `original_main`'s and `sweep`'s)."""
    from .engine import RunConfig

    device = device_of(args)
    for flag, name in ((args.coop, "coop"), (args.reset_memory, "reset_memory")):
        if flag is not None:
            hp.setdefault(name, flag)
    if hp.get("coop") and not Path(str(hp["coop"])).expanduser().is_file():
        raise UsageError(f"--coop {hp['coop']}: no such file")
    return RunConfig(data_root=args.root, test_sets=test_sets.split("/"), method=method, weights=weights,
                     out=args.out or f"runs/{method}", seeds=seeds, device=device, workers=args.workers, hp=hp,
                     act=args.act, augmix=args.augmix, limit=args.limit, save_every=args.save_every,
                     online_shards=args.online_shards, batch_images=args.batch_images, compile=args.compile,
                     scenario=args.scenario,
                     strict=args.strict, resume=args.resume, progress=not args.no_progress)


def run_from_args(args: argparse.Namespace, method: str, weights: str, test_sets: str, hp: dict[str, object],
                  seeds: list[int]) -> int:
    from .engine import run
    from .engine.distributed import Shard

    config = run_config(args, method, weights, test_sets, hp, seeds)
    try:
        run(config)
    except KeyboardInterrupt:
        raise Interrupted(config.out) from None
    if Shard.from_env().rank != 0:  # under torchrun, rank 0 speaks for the job
        return 0
    out = config.out
    print(open(f"{out}/summary.md", encoding="utf-8").read())
    print(f"wrote {out}/summary.md, {out}/summary.csv, {out}/config.json and per-sample records under {out}/seed*/")
    return 0


class Interrupted(Exception):
    """Ctrl-C during a run: what was written stays, and `--resume` continues from it."""

    def __init__(self, out: str) -> None:
        super().__init__(out)
        self.out = out

    def message(self, argv: Sequence[str]) -> str:
        records = sum(sum(1 for _ in open(p, "rb")) for p in Path(self.out).glob("seed*/**/records*.jsonl"))
        again = shlex.join([*argv, *([] if "--resume" in argv else ["--resume"])])
        return (f"interrupted: {records} record(s) kept in {self.out}; continue where it stopped with: {again}")


class TrainingInterrupted(Interrupted):
    def message(self, argv: Sequence[str]) -> str:
        again = shlex.join([*argv, *([] if "--resume" in argv else ["--resume"])])
        return f"interrupted: the training state is kept in {self.out}; continue where it stopped with: {again}"


def _run(args: argparse.Namespace) -> int:
    return run_from_args(args, args.method, args.weights, args.test_sets, parse_hp(args.hp, args.config),
                         args.seeds or [0])


def _sweep(args: argparse.Namespace) -> int:
    from .engine.distributed import Shard
    from .engine.sweep import parse_axes, run_sweep

    if not args.grid and not args.ablation:
        raise UsageError("sweep: give --grid KEY=v1,v2,... and/or --ablation KEY=v1,v2,...")
    if not args.out:
        raise UsageError("sweep: --out names the sweep's folder (a run folder per point goes inside)")
    config = run_config(args, args.method, args.weights, args.test_sets, parse_hp(args.hp, args.config), args.seeds or [0])
    try:
        markdown = run_sweep(config, Path(args.out), parse_axes(args.grid, "--grid"), parse_axes(args.ablation, "--ablation"))
    except KeyboardInterrupt:
        raise Interrupted(args.out) from None
    if Shard.from_env().rank != 0:  # under torchrun, rank 0 speaks for the job
        return 0
    print(markdown)
    print(f"wrote {args.out}/<point>/ (one run folder per point), {args.out}/sweep.json and {args.out}/report/")
    return 0


def _train_prompts(args: argparse.Namespace) -> int:
    from .engine.train_prompts import PromptTrainingRun, train_prompts

    run = PromptTrainingRun(data_root=args.root, train_set=args.train_set, weights=args.weights, out=args.out,
                            method=args.method, shots=args.shots, seed=args.seed, device=device_of(args),
                            workers=args.workers, hp=parse_hp(args.hp, None), resume=args.resume,
                            log=lambda line: print(line, flush=True))
    try:
        path = train_prompts(run)
    except KeyboardInterrupt:
        raise TrainingInterrupted(args.out) from None
    key = "meta" if args.method == "metatpt" else "prompts"
    print(f"use it: mintclip run DATA --test_sets ... --method {args.method} --hp {key}={path}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .engine.report import report_runs

    try:
        print(report_runs([Path(p) for p in args.runs], Path(args.out), args.block, args.bootstrap))
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    print(f"wrote the files listed under 'Files' to {args.out}/")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import torch

    from .bench import format_table, run_benchmark, to_json

    device = device_of(args)
    methods = comma_list(args.method)
    results = run_benchmark(methods, args.arch, args.classes, args.views, args.images, args.warmup, device,
                            args.precision, batch_images=args.batch_images, compile_encoder=args.compile,
                            breakdown=args.breakdown)
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    header = (f"per test image: {args.arch} with random weights, {args.classes} classes, {args.views} views, "
              f"{device} ({name}), precision {args.precision}, {results[0].threads} threads; {args.images} timed "
              f"image(s) after {args.warmup} warm-up" + (f", {args.batch_images} images per call (episodic methods)"
                                                          if args.batch_images > 1 else "")
              + (", mintclip's image encoder under torch.compile" if args.compile else ""))
    print(format_table(results, header))
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "handler"}
        open(args.json, "w").write(to_json(results, {**settings, "device_name": name}))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .shiftbench.demo import DemoConfig, demo, runs_folder

    methods = comma_list(args.methods) if args.methods else None
    config = DemoConfig(out=args.out, per_class=args.per_class, samples=args.samples, weights=args.weights,
                        data=args.data, device=device_of(args), shots=args.shots,
                        progress=not args.no_progress, studies=not args.no_studies,
                        **({"methods": methods} if methods else {}))
    print(demo(config, log=lambda line: print(line, file=sys.stderr)))
    runs = runs_folder(Path(args.out), args.samples)
    print(f"wrote {runs}/<method>/ (records, summaries) and {runs}/report/ (summary.md, summary.csv, gains.csv, "
          "accuracy.png)")
    return 0


def _shiftbench_render(args: argparse.Namespace) -> int:
    from .shiftbench.render import DOMAINS, write_domains

    domains = args.domains.split("/") if args.domains else list(DOMAINS)
    if unknown := sorted(set(domains) - set(DOMAINS)):
        raise UsageError(f"unknown domain(s) {', '.join(unknown)}: use {'/'.join(DOMAINS)}")
    for domain, folder in write_domains(args.out, domains, per_class=args.per_class, seed=args.seed,
                                        size=args.size).items():
        print(f"{domain}: {folder}")
    return 0


def _shiftbench_check(args: argparse.Namespace) -> int:
    import json

    from .model import load_clip
    from .shiftbench.check import format_checks, run_checks, to_dict
    from .shiftbench.render import SHIFTED
    from .shiftbench.train import shipped_checkpoint

    domains = args.domains.split("/") if args.domains else list(SHIFTED)
    if unknown := sorted(set(domains) - set(SHIFTED)):
        raise UsageError(f"unknown domain(s) {', '.join(unknown)}: use some of {'/'.join(SHIFTED)}")
    model, _ = load_clip(args.weights or str(shipped_checkpoint()))
    checks = run_checks(model, args.per_class, tuple(domains))
    print(format_checks(checks))
    if args.json:
        Path(args.json).write_text(json.dumps(to_dict(checks), indent=1))
    return 0


def _shiftbench_train(args: argparse.Namespace) -> int:
    import torch

    from .shiftbench.train import TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    train(TrainConfig(steps=args.steps, batch=args.batch, per_class=args.per_class, seed=args.seed), args.out,
          log=lambda line: print(line, flush=True))
    return 0


STRICT_HELP = "refuse a set with files that are not images, instead of listing and skipping them"


def _populate_info(info: argparse.ArgumentParser) -> None:
    info.add_argument("paths", nargs="+", metavar="PATH", help="checkpoint file or directory")
    info.add_argument("--act", choices=("quick_gelu", "gelu"), help="activation, when the checkpoint does not say")
    info.set_defaults(handler=_info)


def _populate_check_data(check: argparse.ArgumentParser) -> None:
    check.add_argument("root", help="the data root (for 'folder' the tree itself, for 'csv' the CSV file)")
    check.add_argument("--test_sets", "--test-sets", help="sets separated by '/', e.g. A/V/R/K/I/Flower102 "
                                                           "(default: every set id mintclip knows)")
    check.add_argument("--strict", action="store_true", help=STRICT_HELP)
    check.set_defaults(handler=_check_data)


def _populate_run(run_parser: argparse.ArgumentParser) -> None:
    run_parser.add_argument("root", help="the data root")
    run_parser.add_argument("--test_sets", "--test-sets", required=True, help="sets separated by '/', e.g. A/V/R/K")
    run_parser.add_argument("--method", required=True, help=f"one of {method_names()}")
    run_parser.add_argument("--weights", required=True,
                            help="CLIP checkpoint (OpenAI .pt, open_clip, HF directory), or a name such as ViT-B/16 "
                                 "found in the local caches (~/.cache/clip, the Hugging Face hub cache, "
                                 "$MINTCLIP_WEIGHTS); nothing is downloaded")
    add_run_options(run_parser)
    run_parser.set_defaults(handler=_run)


def _populate_sweep(sweep: argparse.ArgumentParser) -> None:
    _populate_run(sweep)
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=v1,v2,...",
                       help="a swept hyper-parameter; several --grid: every combination, the last varying fastest")
    sweep.add_argument("--ablation", action="append", default=[], metavar="KEY=v1,v2,...",
                       help="each value on its own, every other hyper-parameter at the method's default")
    sweep.set_defaults(handler=_sweep)


def _populate_train_prompts(trainer: argparse.ArgumentParser) -> None:
    from .engine.train_prompts import METHODS

    trainer.add_argument("root", help="the data root (for 'folder' the tree itself, for 'csv' the CSV file)")
    trainer.add_argument("--train_set", "--train-set", required=True,
                         help="I (ImageNet's train split), folder, folder:NAME or csv")
    trainer.add_argument("--method", default="coop", choices=sorted(METHODS),
                         help="the prompt learner (metatpt: its augmentation network, designed from the MetaTPT "
                              "abstract, no official code being public)")
    trainer.add_argument("--shots", type=positive_int, default=16, help="training images per class")
    trainer.add_argument("--seed", type=non_negative_int, default=1, help="draws the shots, orders and crops")
    trainer.add_argument("--weights", required=True, help="CLIP checkpoint: a path or a name")
    trainer.add_argument("--out", required=True, help="folder for prompts.safetensors and the training state")
    trainer.add_argument("--hp", nargs="+", default=[], metavar="KEY=VALUE",
                         help="training settings, e.g. epochs=10 lr=0.002 (default: the official config's)")
    trainer.add_argument("--gpu", type=non_negative_int, help="CUDA device index (default: the CPU, or --device)")
    trainer.add_argument("--device", help="torch device, e.g. cuda:1 or cpu (default: the CPU)")
    trainer.add_argument("--workers", type=non_negative_int, default=default_workers(),
                         help="image decoding processes (0: decode in the main process)")
    trainer.add_argument("--resume", action="store_true", help="continue a killed training in --out where it stopped")
    trainer.set_defaults(handler=_train_prompts)


def _populate_report(report: argparse.ArgumentParser) -> None:
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders written by mintclip run")
    report.add_argument("--out", default="report", help="output folder")
    report.add_argument("--block", type=positive_int, default=200, help="images per point of the stream plots")
    report.add_argument("--bootstrap", type=positive_int, default=2000, help="bootstrap resamples of the gain intervals")
    report.set_defaults(handler=_report)


def _populate_bench(bench: argparse.ArgumentParser) -> None:
    from .bench import ARCHS

    bench.add_argument("--method", default="tpt,mint", help="comma-separated methods")
    bench.add_argument("--arch", choices=sorted(ARCHS), default="tiny", help="the CLIP shape, random weights")
    bench.add_argument("--classes", type=positive_int, default=200, help="classes of the text side")
    bench.add_argument("--views", type=positive_int, default=64, help="views per test image")
    bench.add_argument("--images", type=positive_int, default=3, help="timed images per method and path")
    bench.add_argument("--warmup", type=non_negative_int, default=1, help="untimed images first")
    bench.add_argument("--gpu", type=non_negative_int, help="CUDA device index (default: the CPU, or --device)")
    bench.add_argument("--device", help="torch device, e.g. cuda:1 or cpu (default: the CPU)")
    bench.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                       help="auto: bf16 on GPU, fp32 on CPU")
    bench.add_argument("--batch-images", type=positive_int, default=1, help="episodic methods: images adapted per call")
    bench.add_argument("--compile", action="store_true", help="mintclip's path: the image encoder under torch.compile")
    bench.add_argument("--breakdown", action="store_true", help="also time each phase (views, image and text "
                       "forward, backward, optimiser, the rest) and count the tokens encoded per image")
    bench.add_argument("--json", help="also write the figures here")
    bench.set_defaults(handler=_bench)


def _populate_demo(demo: argparse.ArgumentParser) -> None:
    demo.add_argument("--out", default="runs/demo", help="output folder")
    demo.add_argument("--methods", help="comma-separated subset, e.g. zeroshot,tpt,mint (default: all)")
    demo.add_argument("--samples", type=positive_int,
                      help="at most this many images per domain, run under OUT/samples-N (default: all, under OUT)")
    demo.add_argument("--per-class", type=positive_int, default=5, help="images per class and domain (20 classes)")
    demo.add_argument("--shots", type=positive_int, default=16,
                      help="source images per class that CoOp, CoCoOp, MaPLe and MetaTPT train on before the test")
    demo.add_argument("--weights", help="another CLIP checkpoint (default: the shipped shiftbench model)")
    demo.add_argument("--data", help="where the images go (default: <out>/data)")
    demo.add_argument("--gpu", type=non_negative_int, help="CUDA device index (default: the CPU, or --device)")
    demo.add_argument("--device", help="torch device, e.g. cuda:1 or cpu (default: the CPU)")
    demo.add_argument("--no-studies", action="store_true", help="skip the stream studies (MINT, DynaPrompt and TDA "
                      "under the cyclic, dirichlet and open-set scenarios; MINT's bank-size and kappa sweep)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(handler=_demo)


def _populate_shiftbench(shiftbench: argparse.ArgumentParser) -> None:
    from .shiftbench.train import TrainConfig

    train_defaults = TrainConfig()
    tasks = shiftbench.add_subparsers(dest="task", required=True, metavar="TASK", parser_class=LazyParser,
                                      help="render, check or train")
    render = tasks.add_parser("render", help="write the domains as ImageFolder trees (read with --test_sets "
                                             "folder:sketch/folder:rendition/...)")
    render.add_argument("out", help="the folder to write the trees into")
    render.add_argument("--domains", help="e.g. sketch/hard (default: source and the four shifted domains)")
    render.add_argument("--per-class", type=positive_int, default=25, help="images per class and domain")
    render.add_argument("--seed", type=non_negative_int, default=1, help="1 and above are held out; training renders 0")
    render.add_argument("--size", type=positive_int, default=96, help="image side in pixels")
    render.set_defaults(handler=_shiftbench_render)
    check = tasks.add_parser("check", help="can prompts matter on this model? prompt sensitivity, a supervised "
                                           "bound, ZERO's vote and TPT's flips per shifted domain")
    check.add_argument("--weights", help="another shiftbench CLIP (default: the shipped one)")
    check.add_argument("--per-class", type=positive_int, default=10, help="held-out images per class and domain")
    check.add_argument("--domains", help="e.g. sketch/rendition (default: the four shifted domains)")
    check.add_argument("--json", help="also write the figures and verdicts here")
    check.set_defaults(handler=_shiftbench_check)
    trainer = tasks.add_parser("train", help="train the tiny CLIP on its web-like corpus (reproduces the shipped one)")
    trainer.add_argument("--out", default="shiftbench_vit_tiny.safetensors", help="the checkpoint to write")
    trainer.add_argument("--steps", type=positive_int, default=train_defaults.steps, help="optimiser steps")
    trainer.add_argument("--batch", type=positive_int, default=train_defaults.batch, help="images per step")
    trainer.add_argument("--per-class", type=positive_int, default=train_defaults.per_class,
                         help="training images per class")
    trainer.add_argument("--seed", type=non_negative_int, default=train_defaults.seed, help="the training seed")
    trainer.add_argument("--threads", type=positive_int, help="torch threads (default: torch's choice)")
    trainer.set_defaults(handler=_shiftbench_train)


COMMANDS = (  # name, one-line help, description, how its options are added
    ("info", "what a checkpoint is: format, architecture, settings, SHA-256",
     "Describe CLIP checkpoints (OpenAI .pt, open_clip, Hugging Face directory, mintclip safetensors) without "
     "loading a model.", _populate_info),
    ("check-data", "which test sets a data root holds, and any problem with them",
     "Find each test set's layout, count images and classes and report problems, without reading any image.",
     _populate_check_data),
    ("run", "test-time adaptation on benchmark sets, with records and a summary",
     "Run a method over test sets; writes per-sample records, a summary table (Markdown, CSV) and the resolved "
     "config.", _populate_run),
    ("sweep", "a grid or ablations of a method's hyper-parameters, a run folder per point",
     "Run a method once per point of a hyper-parameter grid (--grid) or of one-at-a-time ablations (--ablation), "
     "each point an ordinary run folder with the same images, order and views; --resume continues the sweep; "
     "then the report over the points, with a sensitivity plot per swept key.", _populate_sweep),
    ("train-prompts", "train CoOp, CoCoOp, MaPLe or MetaTPT on K shots per class, before test time",
     "Sample K images per class with a seed from a training set, train a prompt learner with labels as its "
     "official code does (MetaTPT: as designed from its abstract), and save the prompts (safetensors, with the "
     "settings and the sampled files); --resume continues a killed training exactly. Evaluate with `mintclip run "
     "--method METHOD --hp prompts=OUT` (MetaTPT: meta=OUT).",
     _populate_train_prompts),
    ("report", "tables, gains over zero-shot with intervals, and plots over runs",
     "Combine run folders into the papers' table (a row per run), each run's gain over zero-shot with a paired "
     "bootstrap 95% interval, a bar chart per set, top-1 along the stream of online runs and the "
     "diagnostics of online methods (MINT's bank, DynaPrompt's buffer, TDA's caches).", _populate_report),
    ("bench", "time methods per image, mintclip's path against the reference's",
     "Per-image time and peak memory of methods on a CLIP with random weights, with the reference code's order of "
     "work beside mintclip's.", _populate_bench),
    ("demo", "every method on a synthetic distribution shift, no data or weights needed",
     "Render shiftbench's shifted domains, run every method on them with the shipped tiny CLIP (as `mintclip "
     "run`), and report the table and plots. Re-running with the same settings resumes.", _populate_demo),
    ("shiftbench", "the synthetic benchmark: render its images, train its CLIP",
     "Render shiftbench's domains or train its tiny CLIP.", _populate_shiftbench),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mintclip", description="Test-time adaptation of CLIP models.",
                                     formatter_class=Formatter)
    parser.add_argument("--version", action="version", version=f"mintclip {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=LazyParser,
                                     help="run `mintclip COMMAND --help` for its options")
    for name, summary, description, populate in COMMANDS:
        commands.add_parser(name, help=summary, description=description, populate=populate)
    return parser


def one_line_errors() -> tuple[type[Exception], ...]:
    """The errors a user can fix, each printed as one line (imported once a command runs)."""
    from .data.folders import DatasetError
    from .engine import RunError
    from .model import CheckpointError, DeviceError

    return CheckpointError, DatasetError, DeviceError, RunError, UsageError


def main(argv: Sequence[str] | None = None, prog: str = "mintclip") -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    return call(args.handler, args, [prog, *argv], prog)


def call(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace, command: list[str], prog: str) -> int:
    """Run a sub-command; what the user can fix is one line on stderr and exit 2, Ctrl-C exits 130."""
    try:
        return handler(args)
    except Interrupted as e:
        print(f"{prog}: {e.message(command)}", file=sys.stderr)
        return INTERRUPTED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except one_line_errors() as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in WRITE_FAILURES:
            raise
        print(f"{prog}: error: cannot write {e.filename or 'the output'}: {e.strerror}; everything written before "
              "is kept, so free space (or fix the folder) and rerun with --resume", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())


ORIGINAL_TO_HP = {"lr": "lr", "selection_p": "selection", "tta_steps": "steps", "n_ctx": "n_ctx",
                  "ctx_init": "ctx_init", "load": "coop", "batch_size": "n_views"}  # TPT/MINT flag -> hyper-parameter


def original_main(argv: Sequence[str] | None = None) -> int:
    """`python main.py DATA --test_sets A/V/R/K --gpu 0`: the TPT/MINT argument names, on mintclip's engine."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="main.py", description="The TPT / MINT command line on mintclip.",
                                     formatter_class=Formatter)
    parser.add_argument("root", metavar="data", help="the data root")
    parser.add_argument("--test_sets", default="A/R/V/K/I", help="sets separated by '/'")
    parser.add_argument("-a", "--arch", default="ViT-B/16",
                        help="the checkpoint by name, found in the local caches (~/.cache/clip, the Hugging Face hub "
                             "cache, $MINTCLIP_WEIGHTS) when --weights is not given")
    parser.add_argument("--weights", help="the checkpoint (default: the one --arch names)")
    parser.add_argument("--method", default="mint", help="the original repositories' method, MINT")
    parser.add_argument("--resolution", type=positive_int, default=224, help="accepted; the checkpoint's is used")
    parser.add_argument("-j", dest="workers", type=non_negative_int, default=default_workers(),
                        help="image decoding processes (as --workers)")
    parser.add_argument("-b", "--batch_size", type=positive_int, help="views per image (default: 64)")
    parser.add_argument("--lr", "--learning-rate", type=float, help="learning rate (default: the method's)")
    parser.add_argument("--selection_p", type=float, help="share of confident views (default: the method's)")
    parser.add_argument("--tta_steps", type=positive_int, help="adaptation steps (default: the method's)")
    parser.add_argument("--n_ctx", type=positive_int, help="context tokens (default: the method's)")
    parser.add_argument("--ctx_init", help="e.g. a_photo_of_a (default: the method's)")
    parser.add_argument("--load", help="CoOp context checkpoint")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="the stream order")
    parser.add_argument("-p", "--print-freq", type=positive_int, default=200, help="accepted; progress bars report")
    add_run_options(parser)
    args = parser.parse_args(argv)
    return call(lambda args: _original_run(parser, args), args, ["python main.py", *argv], "main.py")


def _original_run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .adapt import available_methods

    methods = available_methods()
    if args.method not in methods:
        parser.error(f"unknown --method {args.method!r}; available: {', '.join(sorted(methods))}")
    known = {f.name for f in dataclasses.fields(methods[args.method].Config)}
    hp = parse_hp(args.hp, args.config)
    for original_name, name in ORIGINAL_TO_HP.items():
        value = getattr(args, original_name)
        if value is not None and name in known:
            hp.setdefault(name, value.replace("_", " ") if original_name == "ctx_init" else value)
    return run_from_args(args, args.method, args.weights or args.arch, args.test_sets, hp, args.seeds or [args.seed])
