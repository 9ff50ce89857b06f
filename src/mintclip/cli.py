"""The `mintclip` command line. Every failure the user can fix is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import sys
from collections.abc import Sequence

from . import __version__
from .data.catalog import SET_IDS, DatasetError, check_data
from .engine import RunConfig, RunError, run
from .engine.distributed import Shard
from .model import CheckpointError, inspect_checkpoint


WRITE_FAILURES = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)  # disk full, quota, read-only, denied


def device_of(args: argparse.Namespace) -> str:
    """--device as given, else cuda:<--gpu>, else the CPU."""
    return args.device or (f"cuda:{args.gpu}" if args.gpu is not None else "cpu")


def comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


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


def parse_hp(pairs: Sequence[str], config_file: str | None) -> dict[str, object]:
    """Hyper-parameters from a YAML mapping, then `key=value` pairs on top."""
    hp: dict[str, object] = {}
    if config_file:
        import yaml

        loaded = yaml.safe_load(open(config_file, encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise RunError(f"{config_file}: expected a mapping of hyper-parameter names to values")
        hp.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise RunError(f"--hp {pair!r}: expected key=value")
        hp[key.strip()] = value.strip()
    return hp


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="output folder (default: runs/<method>)")
    parser.add_argument("--gpu", type=int, help="CUDA device index (default: CPU, or --device)")
    parser.add_argument("--device", help="torch device, e.g. cuda:1 or cpu")
    parser.add_argument("--resume", action="store_true", help="continue a killed run in --out where it stopped")
    parser.add_argument("--seeds", type=int, nargs="+", help="stream orders to run; the summary gives mean ± std")
    parser.add_argument("--hp", nargs="+", default=[], metavar="KEY=VALUE", help="method hyper-parameters")
    parser.add_argument("--config", help="YAML file of method hyper-parameters (--hp wins)")
    parser.add_argument("--limit", type=int, help="at most this many samples per set")
    parser.add_argument("--augmix", choices=("auto", "on", "off"), default="auto",
                        help="AugMix views: auto = the method's choice, else the set's reference default")
    parser.add_argument("--act", choices=("quick_gelu", "gelu"), help="activation, when the checkpoint does not say")
    parser.add_argument("--save-every", type=int, default=50, help="samples between saves of online state")
    parser.add_argument("--batch-images", type=int, default=1, metavar="B",
                        help="episodic methods: adapt B test images at once, each with its own prompt and optimiser "
                             "state (the same predictions as one at a time, faster on a GPU)")
    parser.add_argument("--compile", action="store_true",
                        help="run the frozen image encoder under torch.compile (static shapes; compiles on the first "
                             "images of each view count; numbers equal up to float rounding)")
    parser.add_argument("--online-shards", type=int, metavar="K",
                        help="online methods: split every set into K independent sub-streams (k, k+K, ...), each "
                             "from a fresh state, spread over the torchrun processes; records depend on K only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--coop", help="CoOp context checkpoint that starts the text prompt (tpt, ctpt, mint)")
    parser.add_argument("--reset-memory", choices=("never", "per-set"), help="mint: reset the bank at each set")


def run_from_args(args: argparse.Namespace, method: str, weights: str, test_sets: str, hp: dict[str, object],
                  seeds: list[int]) -> int:
    device = device_of(args)
    for flag, name in ((args.coop, "coop"), (args.reset_memory, "reset_memory")):
        if flag is not None:
            hp.setdefault(name, flag)
    config = RunConfig(data_root=args.root, test_sets=test_sets.split("/"), method=method, weights=weights,
                       out=args.out or f"runs/{method}", seeds=seeds, device=device, workers=args.workers, hp=hp,
                       act=args.act, augmix=args.augmix, limit=args.limit, save_every=args.save_every,
                       online_shards=args.online_shards, batch_images=args.batch_images, compile=args.compile,
                       resume=args.resume, progress=not args.no_progress)
    run(config)
    if Shard.from_env().rank != 0:  # under torchrun, rank 0 speaks for the job
        return 0
    out = config.out
    print(open(f"{out}/summary.md", encoding="utf-8").read())
    print(f"wrote {out}/summary.md, {out}/summary.csv, {out}/config.json and per-sample records under {out}/seed*/")
    return 0


def _run(args: argparse.Namespace) -> int:
    return run_from_args(args, args.method, args.weights, args.test_sets, parse_hp(args.hp, args.config),
                         args.seeds or [0])


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .engine.report import report_runs

    if args.block < 1 or args.bootstrap < 1:
        raise RunError("--block and --bootstrap need at least 1")
    try:
        print(report_runs([Path(p) for p in args.runs], Path(args.out), args.block, args.bootstrap))
    except FileNotFoundError as e:
        raise RunError(str(e)) from None
    print(f"wrote the files listed under 'Files' to {args.out}/")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import torch

    from .bench import format_table, run_benchmark, to_json

    device = device_of(args)
    methods = comma_list(args.method)
    results = run_benchmark(methods, args.arch, args.classes, args.views, args.images, args.warmup, device,
                            args.precision, batch_images=args.batch_images, compile_encoder=args.compile)
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    header = (f"per test image: {args.arch} with random weights, {args.classes} classes, {args.views} views, "
              f"{device} ({name}), precision {args.precision}, {results[0].threads} threads; {args.images} timed "
              f"image(s) after {args.warmup} warm-up" + (f", {args.batch_images} images per call (episodic methods)"
                                                          if args.batch_images > 1 else "")
              + (", mintclip's image encoder under torch.compile" if args.compile else ""))
    print(format_table(results, header))
    if args.json:
        open(args.json, "w").write(to_json(results, {k: v for k, v in vars(args).items() if k != "handler"}))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .shiftbench.demo import DemoConfig, demo

    methods = comma_list(args.methods) if args.methods else None
    config = DemoConfig(out=args.out, per_class=args.per_class, samples=args.samples, weights=args.weights,
                        data=args.data, device=device_of(args),
                        progress=not args.no_progress, **({"methods": methods} if methods else {}))
    print(demo(config, log=lambda line: print(line, file=sys.stderr)))
    print(f"wrote {args.out}/<method>/ (records, summaries) and {args.out}/report/ (summary.md, summary.csv, "
          "gains.csv, accuracy.png)")
    return 0


def _shiftbench_render(args: argparse.Namespace) -> int:
    from .shiftbench.render import DOMAINS, write_domains

    domains = args.domains.split("/") if args.domains else list(DOMAINS)
    if unknown := sorted(set(domains) - set(DOMAINS)):
        raise RunError(f"unknown domain(s) {', '.join(unknown)}: use {'/'.join(DOMAINS)}")
    for domain, folder in write_domains(args.out, domains, per_class=args.per_class, seed=args.seed,
                                        size=args.size).items():
        print(f"{domain}: {folder}")
    return 0


def _shiftbench_train(args: argparse.Namespace) -> int:
    import torch

    from .shiftbench.train import TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    train(TrainConfig(steps=args.steps, batch=args.batch, per_class=args.per_class, seed=args.seed), args.out,
          log=lambda line: print(line, flush=True))
    return 0


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
    run_parser = commands.add_parser("run", help="test-time adaptation on benchmark sets, with records and a summary",
                                     description="Run a method over test sets; writes per-sample records, a "
                                                 "summary table (Markdown, CSV) and the resolved config.")
    run_parser.add_argument("root", help="the data root")
    run_parser.add_argument("--test_sets", "--test-sets", required=True, help="sets separated by '/', e.g. A/V/R/K")
    run_parser.add_argument("--method", required=True, help="zeroshot, ensemble, tpt, ctpt, zero, mta, mint")
    run_parser.add_argument("--weights", required=True, help="CLIP checkpoint (OpenAI .pt, open_clip, HF directory)")
    run_parser.add_argument("--workers", type=int, default=4, help="image decoding processes")
    add_run_options(run_parser)
    run_parser.set_defaults(handler=_run)
    report = commands.add_parser("report", help="tables, gains over zero-shot with intervals, and plots over runs",
                                 description="Combine run folders into the papers' table (a row per run), each "
                                             "run's gain over zero-shot with a paired bootstrap 95% interval, "
                                             "a bar chart per set, top-1 along the stream of online runs and "
                                             "the memory diagnostics of MINT runs.")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR")
    report.add_argument("--out", default="report", help="output folder (default: report)")
    report.add_argument("--block", type=int, default=200, help="images per point of the stream plots")
    report.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the gain intervals")
    report.set_defaults(handler=_report)
    from .bench import ARCHS

    bench = commands.add_parser("bench", help="time methods per image, mintclip's path against the reference's",
                                description="Per-image time and peak memory of methods on a CLIP with random "
                                            "weights, with the reference code's order of work beside mintclip's.")
    bench.add_argument("--method", default="tpt,mint", help="comma-separated methods (default: tpt,mint)")
    bench.add_argument("--arch", choices=sorted(ARCHS), default="tiny")
    bench.add_argument("--classes", type=int, default=200)
    bench.add_argument("--views", type=int, default=64)
    bench.add_argument("--images", type=int, default=3, help="timed images per method and path")
    bench.add_argument("--warmup", type=int, default=1)
    bench.add_argument("--gpu", type=int)
    bench.add_argument("--device")
    bench.add_argument("--precision", default="auto", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32")
    bench.add_argument("--batch-images", type=int, default=1, help="episodic methods: images adapted per call")
    bench.add_argument("--compile", action="store_true", help="mintclip's path: the image encoder under torch.compile")
    bench.add_argument("--json", help="also write the figures here")
    bench.set_defaults(handler=_bench)
    demo = commands.add_parser("demo", help="every method on a synthetic distribution shift, no data or weights needed",
                               description="Render shiftbench's shifted domains, run every method on them with the "
                                           "shipped tiny CLIP (as `mintclip run`), and report the table and plots. "
                                           "Re-running with the same settings resumes.")
    demo.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    demo.add_argument("--methods", help="comma-separated subset, e.g. zeroshot,tpt,mint (default: all)")
    demo.add_argument("--samples", type=int, help="at most this many images per domain (default: all)")
    demo.add_argument("--per-class", type=int, default=5, help="images per class and domain (default 5: 100 per domain)")
    demo.add_argument("--weights", help="another CLIP checkpoint (default: the shipped shiftbench model)")
    demo.add_argument("--data", help="where the images go (default: <out>/data)")
    demo.add_argument("--gpu", type=int)
    demo.add_argument("--device")
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(handler=_demo)
    from .shiftbench.train import TrainConfig

    train_defaults = TrainConfig()
    shiftbench = commands.add_parser("shiftbench", help="the synthetic benchmark: render its images, train its CLIP")
    tasks = shiftbench.add_subparsers(dest="task", required=True, metavar="TASK")
    render = tasks.add_parser("render", help="write the domains as ImageFolder trees (read with --test_sets "
                                             "folder:sketch/folder:rendition/...)")
    render.add_argument("out")
    render.add_argument("--domains", help="e.g. sketch/hard (default: source and the four shifted domains)")
    render.add_argument("--per-class", type=int, default=25)
    render.add_argument("--seed", type=int, default=1, help="1 and above are held out; training renders seed 0")
    render.add_argument("--size", type=int, default=96)
    render.set_defaults(handler=_shiftbench_render)
    trainer = tasks.add_parser("train", help="train the tiny CLIP on the source style (reproduces the shipped one)")
    trainer.add_argument("--out", default="shiftbench_vit_tiny.safetensors")
    trainer.add_argument("--steps", type=int, default=train_defaults.steps)
    trainer.add_argument("--batch", type=int, default=train_defaults.batch)
    trainer.add_argument("--per-class", type=int, default=train_defaults.per_class)
    trainer.add_argument("--seed", type=int, default=train_defaults.seed)
    trainer.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    trainer.set_defaults(handler=_shiftbench_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (CheckpointError, DatasetError, RunError) as e:
        print(f"mintclip: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in WRITE_FAILURES:
            raise
        print(f"mintclip: error: cannot write {e.filename or 'the output'}: {e.strerror}; everything written before "
              "is kept, so free space (or fix the folder) and rerun with --resume", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())


SEED_TO_HP = {"lr": "lr", "selection_p": "selection", "tta_steps": "steps", "n_ctx": "n_ctx", "ctx_init": "ctx_init",
              "load": "coop", "batch_size": "n_views"}  # the seed's argument -> mintclip's hyper-parameter


def seed_main(argv: Sequence[str] | None = None) -> int:
    """`python main.py DATA --test_sets A/V/R/K --gpu 0`: the TPT/MINT argument names, on mintclip's engine."""
    from pathlib import Path

    from .adapt import available_methods

    parser = argparse.ArgumentParser(prog="main.py", description="The TPT / MINT command line on mintclip.")
    parser.add_argument("root", metavar="data", help="the data root")
    parser.add_argument("--test_sets", default="A/R/V/K/I")
    parser.add_argument("-a", "--arch", default="ViT-B/16", help="names the default checkpoint ~/.cache/clip/<arch>.pt")
    parser.add_argument("--weights", help="the checkpoint (overrides --arch)")
    parser.add_argument("--method", default="mint", help="the seed's method, MINT, by default")
    parser.add_argument("--resolution", type=int, default=224, help="accepted; the checkpoint's resolution is used")
    parser.add_argument("-j", "--workers", type=int, default=4)
    parser.add_argument("-b", "--batch_size", type=int, help="views per image (64)")
    parser.add_argument("--lr", "--learning-rate", type=float)
    parser.add_argument("--selection_p", type=float)
    parser.add_argument("--tta_steps", type=int)
    parser.add_argument("--n_ctx", type=int)
    parser.add_argument("--ctx_init", help="e.g. a_photo_of_a")
    parser.add_argument("--load", help="CoOp context checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-p", "--print-freq", type=int, default=200, help="accepted; progress bars report instead")
    add_run_options(parser)
    args = parser.parse_args(argv)
    methods = available_methods()
    if args.method not in methods:
        parser.error(f"unknown --method {args.method!r}; available: {', '.join(sorted(methods))}")
    known = {f.name for f in dataclasses.fields(methods[args.method].Config)}
    hp = parse_hp(args.hp, args.config)
    for seed_name, name in SEED_TO_HP.items():
        value = getattr(args, seed_name)
        if value is not None and name in known:
            hp.setdefault(name, value.replace("_", " ") if seed_name == "ctx_init" else value)
    weights = args.weights or str(Path("~/.cache/clip").expanduser() / f"{args.arch.replace('/', '-').replace('@', '-')}.pt")
    try:
        return run_from_args(args, args.method, weights, args.test_sets, hp, args.seeds or [args.seed])
    except (CheckpointError, DatasetError, RunError) as e:
        print(f"main.py: error: {e}", file=sys.stderr)
        return 2
