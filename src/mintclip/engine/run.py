"""The engine: stream each test set, make its views on the device, call the method, record every sample.

Everything that can be wrong (weights, set ids, data layouts, hyper-parameters, an output folder that
holds another run or is in use by one) is checked before the first image. A run locks its output folder
for as long as it lives and logs what it does to run.log there. Views depend on (seed, index) only, so
every method sees the same views for a sample. The order of the stream is the run's scenario
(scenarios.py; docs/protocols.md § Stream scenarios). Records are flushed one line at a time; online
state is saved atomically every `save_every` samples, and `resume` continues a killed run so that its
records equal an uninterrupted run's. This module checks and orchestrates; the per-sample loop is in
samples.py, online streams in online.py, torchrun sharding in distributed.py.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import math
import os
import shutil
import socket
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import torch

from ..adapt.base import build_method
from ..data import ImageDataset, TestSet, open_dataset, resolve_set_id, set_label
from ..model import check_device, load_clip
from .config import Prepared, RunConfig, RunError, augmix_for, data_difference, data_fingerprint
from .distributed import Shard, merge_shards, shard_path
from .online import merge_sub_streams, run_stream
from .records import RecordWriter, RunLog, atomic_write_json, read_records
from .report import (SetMetrics, detection_metrics, detection_tables, details_table, ece_note, metrics,
                     results_table)
from .samples import run_set
from .scenarios import IID, Item, Prefix, Scenario, first_per_set, parse_scenario

__all__ = ["RunConfig", "RunError", "Prepared", "prepare", "run"]


LOCK_FILE, LOG_FILE = ".lock", "run.log"  # the folder's own files, not results: a fresh run may find them


def prepare(config: RunConfig, shard: Shard, hold: ExitStack) -> Prepared:
    """Every check that needs no image: weights, method, set ids, layouts, and the output folder, which
    the run then holds: its lock and run.log stay open in `hold` until the run ends."""
    set_ids = [resolve_set_id(s) for s in config.test_sets]
    config.test_sets = set_ids
    labels = [set_label(s) for s in set_ids]
    if len(set(labels)) < len(labels):
        raise RunError(f"--test_sets {'/'.join(set_ids)}: a set is named twice")
    try:
        method = build_method(config.method, config.hp)
    except (ValueError, TypeError) as e:
        raise RunError(str(e)) from None
    if config.online_shards is not None and (not method.online or config.online_shards < 1):
        raise RunError(f"--online-shards {config.online_shards}: needs an online method (mint, tda, dynaprompt) and "
                       f"K >= 1; {method.name} is {'online' if method.online else 'episodic, sharded by sample already'}")
    if config.batch_images < 1 or (config.batch_images > 1 and method.online):
        raise RunError(f"--batch-images {config.batch_images}: needs B >= 1, and 1 for an online method, which adapts "
                       "one image at a time in stream order")
    scenario = parse_scenario(config.scenario)
    config.scenario = scenario.spec
    check_scenario(config, scenario, method.online, shard)
    datasets = {s: open_dataset(config.data_root, s, strict=config.strict) for s in set_ids}
    ood = open_dataset(config.data_root, scenario.mixed_in, strict=config.strict) if scenario.mixed_in else None
    scenario.check({s: len(ds) for s, ds in datasets.items()}, len(ood) if ood is not None else 0)
    if (method.online and method.state_per_class_list and scenario.interleaves
            and len({tuple(ds.classnames) for ds in datasets.values()}) > 1):
        raise RunError(f"--scenario {scenario.spec}: {method.name}'s state belongs to one set's classes and these sets' "
                       "classes differ, so it cannot go back and forth between them; use a scenario that meets each "
                       "set once (iid, sequential, dirichlet, open-set, prefix) or sets with the same classes")
    out = Path(config.out)
    check_writable(out)
    lock = claim_output(out, shard)
    if lock is not None:
        hold.enter_context(lock)
    check_previous_run(config, out, datasets, ood)
    log = hold.enter_context(RunLog(out / LOG_FILE if shard.rank == 0 else None,
                                    separator=f"---- {'resumed' if config.resume else 'started again'} ----"))
    if config.compile and config.device.startswith("cpu") and not cxx_compiler():
        raise RunError("--compile on a CPU needs a C++ compiler (g++, c++ or clang++, or $CXX) for torch.compile; "
                       "install one or drop --compile")
    model, _ = load_clip(config.weights, device=config.device, act=config.act)
    if config.compile:
        model.visual.compile(dynamic=False)  # one graph per view count: the views, view 0, MINT's selected views
    try:
        method.check(model)
    except ValueError as e:
        raise RunError(str(e)) from None
    return Prepared(model, method, datasets, log, scenario, ood)


def check_scenario(config: RunConfig, scenario: Scenario, online: bool, shard: Shard) -> None:
    """The combinations a scenario cannot run with, before anything is opened."""
    if isinstance(scenario, Prefix) and config.limit is not None:
        raise RunError(f"--scenario {scenario.spec} with --limit {config.limit}: prefix:N already says how many images "
                       "of each set the run takes; drop --limit (a quick look) or use --scenario iid with it")
    if scenario.mixed_in in config.test_sets:
        raise RunError(f"--scenario {scenario.spec}: {scenario.mixed_in} is a test set of this run; the "
                       "out-of-distribution images must come from another set")
    if online and scenario.interleaves and shard.sharded and not config.online_shards:
        raise RunError(f"--scenario {scenario.spec} under torchrun: an online method's one stream goes back and forth "
                       f"between the sets, so {shard.world} processes cannot take whole sets; run one process, or "
                       "add --online-shards K for K independent sub-streams")


def check_previous_run(config: RunConfig, out: Path, datasets: dict[str, ImageDataset],
                       ood: ImageDataset | None = None) -> None:
    """The output folder holds nothing, or the run this one resumes: the same settings and, where the
    saved run recorded them, the same data (runs saved before data fingerprints resume as they are)."""
    saved = out / "config.json"
    if not saved.is_file():
        if config.resume and any(p.name not in (LOCK_FILE, LOG_FILE) for p in out.iterdir()):
            raise RunError(f"{out}: --resume, but it has no config.json of a mintclip run")
        return
    previous = json.loads(saved.read_text())
    if not config.resume:
        raise RunError(f"{out}: holds a run already; pass --resume to continue it, or choose another --out")
    if previous.get("run") != config.identity():
        raise RunError(f"{out}: holds a different run (its config.json differs); --resume needs the same settings")
    for set_id, dataset in datasets.items():
        before, now = previous.get("datasets", {}).get(set_id, {}).get("fingerprint"), data_fingerprint(dataset)
        if before is not None and before != now:
            raise RunError(f"{out}: holds a run on other data for {set_label(set_id)} (saved vs now: "
                           f"{data_difference(before, now)}); --resume needs the same data")
    if ood is not None and previous.get("ood", {}).get("fingerprint") != data_fingerprint(ood):
        raise RunError(f"{out}: holds a run with other out-of-distribution images of {set_label(ood.set_id)} (saved "
                       f"vs now: {data_difference(previous['ood']['fingerprint'], data_fingerprint(ood))}); --resume "
                       "needs the same data")


def claim_output(out: Path, shard: Shard) -> IO[str] | None:
    """Rank 0 locks the output folder for the whole job (its processes share the folder); every process
    learns whether it could, so a refused job stops everywhere with the same line."""
    held: list[IO[str]] = []
    shard.on_rank_zero(lambda: held.append(lock_output(out)))
    return held[0] if held else None


def lock_output(out: Path) -> IO[str]:
    """An exclusive lock on `out`, held while the returned file is open. The OS releases it when the
    process ends, however it ends, so a lock file left by a killed run blocks no one; the file is never
    removed, as a run could otherwise lock a file that the next run no longer sees."""
    file = open(out / LOCK_FILE, "a+", encoding="utf-8")
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        file.seek(0)
        holder = file.read().strip() or "pid unknown"
        file.close()
        if e.errno in (errno.EAGAIN, errno.EACCES):
            raise RunError(f"{out} is in use by another mintclip run ({holder}); wait for it or choose another "
                           "--out") from None
        raise RunError(f"{out}: cannot lock it against other runs ({e.strerror}); choose an --out on a file "
                       "system with locks") from None
    file.truncate(0)
    file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    file.flush()
    return file


def cxx_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU code needs, if there is one."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    return next((found for found in map(shutil.which, names) if found), None)


def check_writable(out: Path) -> None:
    """An output folder that cannot be written fails here, before any image, in one line."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise RunError(f"{out}: cannot write the run's output there ({e.strerror or e})") from None


def resolved_config(config: RunConfig, prepared: Prepared) -> dict[str, Any]:
    method, model = prepared.method, prepared.model
    return {
        "run": config.identity(),
        "method": {"name": method.name, "online": method.online, "calibrated": method.calibrated,
                   "source": method.source, "hyper_parameters": dataclasses.asdict(method.config),
                   "notes": method.notes()},
        "model": {"architecture": model.config.arch_name, "act": model.config.act,
                  "preprocess": dataclasses.asdict(model.config.preprocess), "sources": model.config.sources},
        "datasets": {s: {"layout": ds.layout, "root": str(ds.root), "images": len(ds), "classes": len(ds.classnames),
                         "augmix": augmix_for(config, method, ds), "notes": ds.notes,
                         "fingerprint": data_fingerprint(ds)}
                     for s, ds in prepared.datasets.items()},
        **({"ood": {"set_id": prepared.ood.set_id, "layout": prepared.ood.layout, "root": str(prepared.ood.root),
                    "images": len(prepared.ood), "fingerprint": data_fingerprint(prepared.ood)}}
           if prepared.ood is not None else {}),
    }


def describe(config: RunConfig, prepared: Prepared) -> str:
    """What the run is about to do, in a few lines, before the first image."""
    model, method = prepared.model.config, prepared.method
    extras = ([f"{config.batch_images} images at a time"] if config.batch_images > 1 else []) + (
        ["image encoder under torch.compile"] if config.compile else [])
    lines = [f"mintclip run: {method.name} ({'online' if method.online else 'episodic'}) on {config.device}, "
             f"seeds {config.seeds}, {''.join(e + ', ' for e in extras)}writing to {config.out}",
             f"  model {model.arch_name}, act {model.act}, {model.preprocess.image_size}px "
             f"{model.preprocess.interpolation}, sha256 {model.sources.get('sha256', '?')[:12]}"]
    lines += [f"  {ds.summary()}" for ds in prepared.datasets.values()]
    if prepared.ood is not None:
        lines.append(f"  out-of-distribution: {prepared.ood.summary()}")
    if not isinstance(prepared.scenario, IID):
        lines.append(f"  {prepared.scenario.description}")
    lines += [f"  {note}" for note in method.notes()]
    return "\n".join(lines)


def run(config: RunConfig) -> dict[str, list]:
    """Run every seed over every set; returns {set: [SetMetrics per seed]} and writes the summary.
    Under torchrun the processes share the work (see distributed.py) and rank 0 writes the summary."""
    shard = Shard.from_env()
    config.device = shard.device(config.device)
    config.progress = config.progress and shard.rank == 0
    check_device(config.device)  # before torchrun's set_device, whose own error is a traceback
    created = shard.start(config.device)
    try:
        with ExitStack() as hold:
            return _run(config, shard, hold)
    finally:
        if created:
            torch.distributed.destroy_process_group()


def _run(config: RunConfig, shard: Shard, hold: ExitStack) -> dict[str, list]:
    prepared = prepare(config, shard, hold)
    out = Path(config.out)
    shard.barrier()  # every process has checked the output folder before rank 0 claims it
    if shard.rank == 0:
        atomic_write_json(out / "config.json", resolved_config(config, prepared))
    settings = describe(config, prepared)
    prepared.log.write(settings)
    if config.progress:
        print(settings, file=sys.stderr)
    for seed in config.seeds:
        items = stream_items(config, prepared, seed)
        if prepared.method.online:
            for stream in shard.online_streams(config.test_sets, config.online_shards):
                run_stream(config, prepared, seed, out / f"seed{seed}", stream, items)
            if (config.online_shards or 1) > 1:
                shard.barrier()
                if shard.rank == 0:
                    merge_sub_streams(config, prepared, out / f"seed{seed}", items)
        else:
            for set_id in config.test_sets:
                run_episodic_set(config, prepared, seed, out / f"seed{seed}", set_id,
                                 [item for item in items if item.set_id == set_id], shard)
    shard.barrier()
    results: dict[str, list] = {s: [] for s in config.test_sets}
    detection: dict[str, list] = {s: [] for s in config.test_sets}
    for seed in config.seeds:
        for set_id in config.test_sets:
            records = read_records(out / f"seed{seed}" / set_label(set_id) / "records.jsonl")
            results[set_id].append(metrics(records, prepared.method.calibrated))
            prepared.log.write(result_line(set_label(set_id), seed, results[set_id][-1]))
            if (found := detection_metrics(records)) is not None:
                detection[set_id].append(found)
                prepared.log.write(f"{set_label(set_id)} seed {seed}: AUROC {found.auroc:.2f}%, FPR@95 {found.fpr95:.2f}% "
                                   f"({found.in_distribution} in-distribution, {found.out_of_distribution} "
                                   "out-of-distribution images)")
    if shard.rank == 0:
        write_summary(config, prepared, results, {s: runs for s, runs in detection.items() if runs}, shard)
        prepared.log.write(f"done: wrote {out / 'summary.md'} and {out / 'summary.csv'}")
    shard.barrier()
    return results


def result_line(label: str, seed: int, m: SetMetrics) -> str:
    ece = "ECE not reported" if math.isnan(m.ece) else f"ECE {m.ece:.2f}%"
    return (f"{label} seed {seed}: top-1 {m.top1:.2f}%, top-5 {m.top5:.2f}%, {ece} ({m.samples} samples scored, "
            f"{m.skipped} skipped)")


def stream_items(config: RunConfig, prepared: Prepared, seed: int) -> list[Item]:
    """The scenario's stream of a seed over the run's sets, cut by --limit; every process makes the same."""
    labels = {s: [label for _, label in ds.samples] for s, ds in prepared.datasets.items()}
    ood_size = len(prepared.ood) if prepared.ood is not None else 0
    return first_per_set(prepared.scenario.stream(labels, seed, ood_size), config.limit)


def write_summary(config: RunConfig, prepared: Prepared, results: dict[str, list], detection: dict[str, list],
                  shard: Shard) -> None:
    out = Path(config.out)
    by_label = {set_label(s): runs for s, runs in results.items()}
    markdown, table = results_table({prepared.method.name: by_label}, list(by_label))
    details = details_table(prepared.method.name, by_label)
    notes = [*prepared.method.notes(), *([] if prepared.method.calibrated else [ece_note(prepared.method.name)])]
    if not isinstance(prepared.scenario, IID):
        notes.append(prepared.scenario.description)
        if prepared.method.online and prepared.scenario.interleaves:
            notes.append("online method across switches of set: its state flows on unchanged; each set is prepared "
                         "once, and the method's between-set policy (its reset options) acts at a set's first image")
    if config.online_shards:
        k = config.online_shards
        notes.append(f"online method in {k} independent sub-streams per set: sub-stream i took positions i, i + {k}, "
                     f"... of every set's stream, starting from a fresh state; each saw 1/{k} of the images, so the "
                     "accuracy is not that of one stream")
    elif shard.sharded and prepared.method.online:
        notes.append(f"online method over {shard.world} processes: each took whole sets (set i to process i mod "
                     f"{shard.world}), and its state flowed only between its own sets")
    listed = "".join(f"- {note}\n" for note in notes)
    sections = [f"Top-1 accuracy (%), {len(config.seeds)} seed(s)\n\n{markdown}\n",
                f"Per set (%; ECE with 20 bins)\n\n{details}"]
    if detection:
        found, csv_table = detection_tables({prepared.method.name: {set_label(s): runs for s, runs in detection.items()}})
        sections.append(f"\nOut-of-distribution detection (%; in-distribution positive, by maximum softmax "
                        f"probability; the OOD images are left out of top-1, top-5 and ECE)\n\n{found}")
        (out / "ood.csv").write_text(csv_table)
    (out / "summary.md").write_text("".join(sections) + (f"\n{listed}" if listed else ""))
    (out / "summary.csv").write_text(table)


def run_episodic_set(config: RunConfig, prepared: Prepared, seed: int, folder: Path, set_id: str, items: list[Item],
                     shard: Shard) -> None:
    """One set of an episodic method, its `items` in the scenario's order (the records of an episodic
    method do not depend on it); this process takes positions rank, rank + N, ... of them. Resume
    continues each process's own records where they stop."""
    records_path = folder / set_label(set_id) / "records.jsonl"
    if config.resume and len(read_records(records_path)) >= len(items):
        return
    mine = items[shard.rank::shard.world]
    shard_records = shard_path(records_path, shard)
    start = min(len(read_records(shard_records)), len(mine)) if config.resume else 0
    start -= start % config.batch_images  # resume at a group boundary: the same groups, the same rounding
    if start < len(mine):
        prepared.method.setup(prepared.model, TestSet.of(prepared.datasets[set_id]))
        run_set(config, prepared, set_id, mine, start, seed, RecordWriter(shard_records, keep=start))
    shard.barrier()
    if shard.sharded and shard.rank == 0:
        merge_shards(records_path, [shard_path(records_path, Shard(r, shard.world)) for r in range(shard.world)],
                     len(items))
    shard.barrier()
