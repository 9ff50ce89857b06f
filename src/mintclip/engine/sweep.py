"""`mintclip sweep`: a grid or one-at-a-time ablations of a method's hyper-parameters, each point an
ordinary run folder under the sweep's folder, run in a stated order.

Every point is `run` with the same settings but its own `--hp` values, so it has records, resume and a
summary like any run, and every point sees the same images in the same order with the same views (the
seeds are shared): differences between points are paired. Each point is compared with the method's
defaults: the point whose method config equals theirs, or, where none does, a point `defaults` that the
sweep adds and runs first. `resume` continues the sweep: finished points are read back as they are, the
unfinished one resumes where it stopped. All points are checked (hyper-parameter names and values)
before the first image of the first point. Under torchrun every process runs every point, each point's
images shared out as `run` shares them, and rank 0 alone checks and writes sweep.json and the report
(docs/protocols.md § Sweeps).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..adapt import build_method
from ..adapt.base import MethodConfig
from ..model import check_device
from .config import RunConfig, RunError
from .distributed import Shard
from .plots import interval_chart_png
from .records import atomic_write_json
from .report import Gain, SetMetrics, gains_over_reference, gains_table, load_runs, metrics, report_runs, seed_averages
from .run import run

MANIFEST = "sweep.json"
BOOTSTRAP = 2000  # draws of each paired interval against the defaults


@dataclasses.dataclass(frozen=True)
class Point:
    overrides: dict[str, str]  # the swept values, as given on the command line

    @property
    def name(self) -> str:
        """Its folder: 'bank_size-128_selection-0.05' ('/' in a value becomes '+')."""
        return "_".join(f"{k}-{v.replace('/', '+')}" for k, v in self.overrides.items()) or "defaults"


def parse_axes(items: list[str], option: str) -> dict[str, list[str]]:
    """['bank_size=128,256', 'selection=0.1'] -> {'bank_size': ['128', '256'], 'selection': ['0.1']}."""
    axes: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values or key in axes:
            raise RunError(f"{option} {item!r}: expected KEY=v1,v2,... with each key once")
        axes[key] = [v for v in values.split(",") if v]
    return axes


def sweep_points(grid: dict[str, list[str]], ablation: dict[str, list[str]]) -> list[Point]:
    """The grid's product in the order given (the last key varies fastest), then each ablation value on
    its own with everything else at the method's defaults; a point listed twice runs once."""
    points = [Point(dict(zip(grid, values))) for values in itertools.product(*grid.values())] if grid else []
    points += [Point({key: value}) for key, values in ablation.items() for value in values]
    return list({p.name: p for p in points}.values()) if points else [Point({})]


def check_points(method: str, base_hp: dict[str, Any], points: list[Point]) -> None:
    """Every point's method builds (its names, values and the method's own checks), before any image."""
    for point in points:
        try:
            build_method(method, {**base_hp, **point.overrides})
        except (ValueError, TypeError) as e:
            raise RunError(f"sweep point {point.name}: {e}") from None


def method_config(method: str, base_hp: dict[str, Any], point: Point) -> MethodConfig:
    return build_method(method, {**base_hp, **point.overrides}).config


def with_defaults(method: str, base_hp: dict[str, Any], points: list[Point]) -> tuple[list[Point], Point]:
    """The points, and the one every point is compared with: the first whose built config equals the
    method's defaults (under the sweep's own --hp), so that gamma=0.30 is the default gamma=0.3, or, where
    none does, a point `defaults` with no overrides, added to run first."""
    defaults = build_method(method, base_hp).config
    same = [p for p in points if method_config(method, base_hp, p) == defaults]
    return (points, same[0]) if same else ([Point({}), *points], Point({}))


def claim_sweep(out: Path, manifest: dict[str, Any], resume: bool) -> None:
    """`out` holds no sweep, or this one and `resume` continues it; then it holds this sweep's manifest."""
    saved = out / MANIFEST
    if saved.is_file() and json.loads(saved.read_text()) != manifest:
        raise RunError(f"{out}: holds another sweep (its {MANIFEST} differs); choose another --out")
    if saved.is_file() and not resume:
        raise RunError(f"{out}: holds this sweep already; pass --resume to continue it")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(saved, manifest)


def run_sweep(base: RunConfig, out: Path, grid: dict[str, list[str]], ablation: dict[str, list[str]]) -> str:
    """Every point in order under `out`, then the report of them all (out/report); returns its Markdown
    on rank 0, '' on the other processes of a torchrun job. The job keeps one process group for the
    whole sweep, which each point's `run` uses as it finds it."""
    points = sweep_points(grid, ablation)
    check_points(base.method, base.hp, [*points, Point({})])
    points, defaults = with_defaults(base.method, base.hp, points)
    manifest = {"method": base.method, "grid": grid, "ablation": ablation, "defaults": defaults.name,
                "points": [{"name": p.name, "hp": p.overrides} for p in points]}
    shard = Shard.from_env()
    device = shard.device(base.device)
    check_device(device)  # before the process group's set_device, as `run` does
    created = shard.start(device)
    try:
        shard.on_rank_zero(lambda: claim_sweep(out, manifest, base.resume))
        for point in points:
            run(dataclasses.replace(base, out=str(out / point.name), hp={**base.hp, **point.overrides}))
    finally:
        if created:
            torch.distributed.destroy_process_group()
    return sweep_report(out, base, points, defaults, grid, ablation) if shard.rank == 0 else ""


def sweep_report(out: Path, base: RunConfig, points: list[Point], defaults: Point, grid: dict[str, list[str]],
                 ablation: dict[str, list[str]]) -> str:
    """report_runs over the points, then what a sweep asks of them, in out/report: each point against
    the defaults with paired intervals (vs_defaults.csv), the ablation table (ablation.csv), every number
    (report.json) and a sensitivity plot per swept key; returns summary.md, which holds it all."""
    folder = out / "report"
    labels = {p.name: f"{base.method} {p.name}" for p in points}
    folders = [out / p.name for p in points]
    markdown = report_runs(folders, folder, bootstrap=BOOTSTRAP, labels=list(labels.values()))
    runs = dict(zip(labels, load_runs(folders, list(labels.values()))))
    sets = list(dict.fromkeys(s for r in runs.values() for s in r.records))
    results = {name: {s: [metrics(records, r.calibrated) for records in per_seed] for s, per_seed in r.records.items()}
               for name, r in runs.items()}
    gains = {p.name: gains_over_reference(runs[p.name].records, runs[defaults.name].records, sets, BOOTSTRAP)
             for p in points if p != defaults}
    against, against_csv = gains_table({labels[name]: g for name, g in gains.items()}, sets)
    (folder / "vs_defaults.csv").write_text(against_csv)
    added = " (no point of the sweep is at them, so the sweep ran them as the point `defaults`)" if (
        defaults == Point({})) else ""
    sections = [f"## Against the defaults (top-1 points), mean [95% CI], paired bootstrap over samples, B={BOOTSTRAP}\n\n"
                f"Each point against {labels[defaults.name]}, the method's defaults{added}: per sample, the point's "
                "correctness minus the defaults' on the same image and seed, averaged over the seeds; the average column "
                f"resamples each set on its own. **Bold**: the interval excludes 0.\n\n{against}"]
    files = ["vs_defaults.csv"]
    if ablation:
        table, table_csv = ablation_table(ablation_rows(base, defaults, ablation, results), sets)
        (folder / "ablation.csv").write_text(table_csv)
        files.append("ablation.csv")
        sections.append("## Ablations: top-1 (%), mean over seeds, and the difference from the default row\n\n" + table)
    files.append("report.json")
    plots = []
    for key in {**grid, **ablation}:
        plots.append(f"sensitivity_{key}.png")
        sensitivity_plot(folder / plots[-1], key, plotted_points(points, key, grid), results, gains, defaults.name, sets)
    sections.append("## Sensitivity\n\nTop-1 (%) against each swept value, mean over seeds, a line per set; the bars are "
                    "each point's paired 95% interval against the defaults, placed around its mean, and the dashed line of "
                    "each set is the defaults' top-1: a bar misses it where the interval excludes 0 (exactly so where both scored "
                    "the same images).\n\n"
                    + "".join(f"![{name[:-4]}]({name})\n" for name in plots))
    atomic_write_json(folder / "report.json", sweep_numbers(base, points, defaults, sets, results, gains))
    head, files_heading, listed = markdown.rpartition("## Files\n\n")
    markdown = (head + "\n".join(sections) + "\n" + files_heading + listed
                + "".join(f"- {name}\n" for name in [*files, *plots]))
    (folder / "summary.md").write_text(markdown)
    return markdown


def ablation_rows(base: RunConfig, defaults: Point, ablation: dict[str, list[str]],
                  results: dict[str, dict[str, list[SetMetrics]]]) -> dict[str, dict[str, list[SetMetrics]]]:
    """The ablation table's rows by their setting: first the defaults, written as the default value of
    every ablated key, then each ablated value in order, marked "(default)" where it is the default."""
    default_config = build_method(base.method, base.hp).config
    rows = {", ".join(f"{key} = {getattr(default_config, key)}" for key in ablation) + " (default)":
            results[defaults.name]}
    for key, values in ablation.items():
        for value in values:
            point = Point({key: value})
            if point != defaults:
                at_default = method_config(base.method, base.hp, point) == default_config
                rows[f"{key} = {value}" + (" (default)" if at_default else "")] = results[point.name]
    return rows


def signed(x: float) -> str:
    """A difference in top-1 points as the papers print it: +0.4, −1.2 (a minus sign), +0.0 for a tiny one."""
    return f"{x:+.1f}".replace("-0.0", "+0.0").replace("-", "\u2212")


def ablation_table(rows: dict[str, dict[str, list[SetMetrics]]], sets: Sequence[str]) -> tuple[str, str]:
    """(Markdown, CSV) in the layout of the papers' ablation tables: a row per setting, the first the
    defaults, a column per set and the average; each cell the top-1 (mean over seeds) and beside it
    its difference from the first row, `61.3 (−1.2)`."""
    columns = [*sets, "average"]
    md = ["| " + " | ".join(["setting", *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["setting", "set", "seeds", "top1", "difference"])
    means = {label: column_means(per_set, sets) for label, per_set in rows.items()}
    reference = next(iter(means.values()))
    for row, (label, mean) in enumerate(means.items()):
        cells = []
        for column in columns:
            value, seeds = mean.get(column, (None, 0))
            if value is None:
                cells.append("-")
                continue
            against = reference[column][0]
            difference = value - against if row and against is not None else None
            cells.append(f"{value:.1f}" + (f" ({signed(difference)})" if difference is not None else ""))
            writer.writerow([label, column, seeds, f"{value:.4f}", "" if difference is None else f"{difference:.4f}"])
        md.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(md) + "\n", out.getvalue()


def column_means(per_set: dict[str, list[SetMetrics]], sets: Sequence[str]) -> dict[str, tuple[float | None, int]]:
    """Per set and the average: (mean top-1 over seeds, seeds), None for a column without any."""
    columns = {s: [m.top1 for m in per_set.get(s, [])] for s in sets} | {"average": seed_averages(per_set, sets)}
    return {c: (statistics.mean(v) if v else None, len(v)) for c, v in columns.items()}


def top1_numbers(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "seeds": values}


def sweep_numbers(base: RunConfig, points: list[Point], defaults: Point, sets: list[str],
                  results: dict[str, dict[str, list[SetMetrics]]], gains: dict[str, dict[str, Gain]]) -> dict[str, Any]:
    """report.json: per point its top-1 per set and average (mean, std, per seed) and, but for the
    defaults, its gain over them with the paired interval."""
    numbers = []
    for p in points:
        per_set = results[p.name]
        top1 = {s: top1_numbers([m.top1 for m in per_set[s]]) for s in sets if per_set.get(s)}
        if averages := seed_averages(per_set, sets):
            top1["average"] = top1_numbers(averages)
        against = {column: {"samples": g.samples, "gain": g.gain, "low": g.low, "high": g.high}
                   for column, g in gains.get(p.name, {}).items()}
        numbers.append({"name": p.name, "hp": p.overrides, "top1": top1, "vs_defaults": against})
    return {"method": base.method, "hp": base.hp, "seeds": base.seeds, "sets": sets, "defaults": defaults.name,
            "bootstrap": BOOTSTRAP, "points": numbers}


def plotted_points(points: list[Point], key: str, grid: dict[str, list[str]]) -> list[Point]:
    """The points a key's sensitivity plot shows: a grid key's values with the other grid keys at their
    first value, an ablation key's values alone."""
    if key in grid:
        wanted = [{**{k: v[0] for k, v in grid.items()}, key: value} for value in grid[key]]
    else:
        wanted = [p.overrides for p in points if list(p.overrides) == [key]]
    return [p for p in points if p.overrides in wanted]


def sensitivity_plot(path: Path, key: str, chosen: list[Point], results: dict[str, dict[str, list[SetMetrics]]],
                     gains: dict[str, dict[str, Gain]], defaults: str, sets: list[str]) -> None:
    """Top-1 (mean over seeds) against the values of one swept key, one line per set, each point with
    its paired 95% interval against the defaults placed around its mean (mean + low - gain to mean +
    high - gain) and the defaults' top-1 as a dashed line: a bar misses the line where the interval
    excludes 0. The defaults' own point has no bar."""
    series: dict[str, list[tuple[float, float, float] | None]] = {}
    for s in sets:
        line = []
        for point in chosen:
            top1 = [m.top1 for m in results[point.name].get(s, [])]
            mean = statistics.mean(top1) if top1 else None
            gain = gains.get(point.name, {}).get(s)
            line.append(None if mean is None else (mean, mean + gain.low - gain.gain, mean + gain.high - gain.gain)
                        if gain else (mean, mean, mean))
        series[s] = line
    references = {s: statistics.mean(m.top1 for m in results[defaults][s]) for s in sets if results[defaults].get(s)}
    interval_chart_png([point.overrides[key] for point in chosen], series, path, f"Top-1 against {key}, mean over seeds",
                       key, "top-1 (%); bars: paired 95% interval against the defaults (dashed)", references)
