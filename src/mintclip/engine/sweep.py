"""`mintclip sweep`: a grid or one-at-a-time ablations of a method's hyper-parameters, each point an
ordinary run folder under the sweep's folder, run in a stated order.

Every point is `run` with the same settings but its own `--hp` values, so it has records, resume and a
summary like any run, and every point sees the same images in the same order with the same views (the
seeds are shared): differences between points are paired. `resume` continues the sweep: finished
points are read back as they are, the unfinished one resumes where it stopped. All points are checked
(hyper-parameter names and values) before the first image of the first point.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

from ..adapt import build_method
from .config import RunConfig, RunError
from .plots import line_chart_png
from .records import atomic_write_json, read_records
from .report import metrics, report_runs
from .run import run

MANIFEST = "sweep.json"


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


def run_sweep(base: RunConfig, out: Path, grid: dict[str, list[str]], ablation: dict[str, list[str]]) -> str:
    """Every point in order under `out`, then the report of them all (out/report); returns its Markdown."""
    points = sweep_points(grid, ablation)
    check_points(base.method, base.hp, points)
    manifest = {"method": base.method, "grid": grid, "ablation": ablation,
                "points": [{"name": p.name, "hp": p.overrides} for p in points]}
    saved = out / MANIFEST
    if saved.is_file() and json.loads(saved.read_text()) != manifest:
        raise RunError(f"{out}: holds another sweep (its {MANIFEST} differs); choose another --out")
    if saved.is_file() and not base.resume:
        raise RunError(f"{out}: holds this sweep already; pass --resume to continue it")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(saved, manifest)
    folders = []
    for point in points:
        folders.append(out / point.name)
        run(dataclasses.replace(base, out=str(folders[-1]), hp={**base.hp, **point.overrides}))
    markdown = report_runs(folders, out / "report", labels=[f"{base.method} {p.name}" for p in points])
    for key in {**grid, **ablation}:
        sensitivity_plot(out, points, key, grid, base.seeds[0])
    return markdown


def sensitivity_plot(out: Path, points: list[Point], key: str, grid: dict[str, list[str]], seed: int) -> None:
    """Top-1 of one seed against the values of one swept key, one line per set, into
    out/report/sensitivity_<key>.png: a grid key with the other grid keys at their first value, an
    ablation key alone."""
    if key in grid:
        wanted = [{**{k: v[0] for k, v in grid.items()}, key: value} for value in grid[key]]
    else:
        wanted = [p.overrides for p in points if list(p.overrides) == [key]]
    chosen = [p for p in points if p.overrides in wanted]
    series: dict[str, list[float]] = {}
    for point in chosen:
        for records_path in sorted((out / point.name / f"seed{seed}").glob("*/records.jsonl")):
            series.setdefault(records_path.parent.name, []).append(metrics(read_records(records_path)).top1)
    values = ", ".join(p.overrides[key] for p in chosen)
    line_chart_png(series, out / "report" / f"sensitivity_{key}.png",
                   f"top-1 (%) against {key} = {values}", key)
