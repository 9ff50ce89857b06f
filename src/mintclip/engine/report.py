"""Metrics from per-sample records, and the results table in the papers' layout (Markdown and CSV)."""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw


@dataclass
class SetMetrics:
    samples: int
    skipped: int
    top1: float  # percent
    top5: float
    ece: float  # percent, 20 bins as C-TPT


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool], bins: int = 20) -> float:
    """ECE: sum over equal-width confidence bins of (bin share) x |accuracy - mean confidence|."""
    total = len(confidences)
    if total == 0:
        return 0.0
    ece = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [i for i, c in enumerate(confidences) if lo < c <= hi or (b == 0 and c == 0)]
        if members:
            accuracy = sum(correct[i] for i in members) / len(members)
            confidence = sum(confidences[i] for i in members) / len(members)
            ece += len(members) / total * abs(accuracy - confidence)
    return ece


def metrics(records: list[dict[str, Any]]) -> SetMetrics:
    scored = [r for r in records if "skipped" not in r]
    n = len(scored)
    top1 = sum(r["top5"][0][0] == r["label"] for r in scored)
    top5 = sum(any(c == r["label"] for c, _ in r["top5"]) for r in scored)
    ece = expected_calibration_error([r["top5"][0][1] for r in scored], [r["top5"][0][0] == r["label"] for r in scored])
    pct = (lambda x: 100.0 * x / n) if n else (lambda x: 0.0)
    return SetMetrics(n, len(records) - n, pct(top1), pct(top5), 100.0 * ece)


def mean_std(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def results_table(results: dict[str, dict[str, list[SetMetrics]]], sets: Sequence[str]) -> tuple[str, str]:
    """results[method][set] = one SetMetrics per seed -> (Markdown, CSV): a row per method, a column per
    set and the average top-1; mean ± std over seeds."""
    header = ["method", *sets, "average"]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["method", "set", "seeds", "samples", "skipped", "top1", "top1_std", "top5", "ece"])
    for method, per_set in results.items():
        cells, seed_averages = [], []
        n_seeds = max(len(v) for v in per_set.values())
        for s in sets:
            runs = per_set.get(s, [])
            cells.append(mean_std([m.top1 for m in runs]) if runs else "-")
            if runs:
                top1 = [m.top1 for m in runs]
                writer.writerow([method, s, len(runs), runs[0].samples, runs[0].skipped, f"{statistics.mean(top1):.4f}",
                                 f"{statistics.stdev(top1):.4f}" if len(runs) > 1 else "",
                                 f"{statistics.mean(m.top5 for m in runs):.4f}",
                                 f"{statistics.mean(m.ece for m in runs):.4f}"])
        for seed in range(n_seeds):
            seed_sets = [per_set[s][seed].top1 for s in sets if len(per_set.get(s, [])) > seed]
            if len(seed_sets) == len(sets):
                seed_averages.append(statistics.mean(seed_sets))
        cells.append(mean_std(seed_averages) if seed_averages else "-")
        md.append("| " + " | ".join([method, *cells]) + " |")
    return "\n".join(md) + "\n", out.getvalue()


def details_table(method: str, per_set: dict[str, list[SetMetrics]]) -> str:
    """Markdown: per set, samples scored, images skipped, top-1, top-5 and ECE (mean ± std over seeds)."""
    lines = [f"| {method} | samples | skipped | top-1 | top-5 | ECE |", "|---|---|---|---|---|---|"]
    for set_id, runs in per_set.items():
        lines.append(f"| {set_id} | {runs[0].samples} | {runs[0].skipped} | {mean_std([m.top1 for m in runs])} | "
                     f"{mean_std([m.top5 for m in runs])} | {mean_std([m.ece for m in runs])} |")
    return "\n".join(lines) + "\n"


def bar_chart_png(values: torch.Tensor, path: Path, title: str, width: int = 800, height: int = 320) -> None:
    """A plain bar chart of a 1-D tensor, drawn with Pillow (no plotting dependency)."""
    values = values.detach().float().cpu()
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, top, bottom = 50, 30, height - 30
    peak = float(values.max()) if len(values) and float(values.max()) > 0 else 1.0
    step = (width - left - 10) / max(len(values), 1)
    for i, v in enumerate(values.tolist()):
        x = left + i * step
        draw.rectangle([x, bottom - (bottom - top) * v / peak, x + max(step - 1, 1), bottom], fill=(60, 110, 180))
    draw.line([left, bottom, width - 10, bottom], fill="black")
    draw.line([left, top, left, bottom], fill="black")
    draw.text((left, 8), title, fill="black")
    draw.text((5, top), f"{peak:g}", fill="black")
    draw.text((5, bottom - 10), "0", fill="black")
    draw.text((left, bottom + 8), f"{len(values)} entries", fill="black")
    image.save(path)


def stream_accuracy(records: list[dict[str, Any]], block: int = 200) -> list[float]:
    """Top-1 (%) of consecutive blocks of scored samples, in stream order: prompt collapse shows as a decline."""
    hits = [r["top5"][0][0] == r["label"] for r in records if "skipped" not in r]
    return [100.0 * sum(hits[i:i + block]) / len(hits[i:i + block]) for i in range(0, len(hits), block)]


PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def line_chart_png(series: dict[str, list[float]], path: Path, title: str, x_label: str,
                   width: int = 800, height: int = 360) -> None:
    """Lines of accuracy (%) against block number, one per run, drawn with Pillow."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 50, width - 170, 30, height - 35
    values = [v for line in series.values() for v in line] or [0.0]
    low, high = min(values), max(values)
    low, high = (low - 1, high + 1) if high - low < 1e-9 else (low, high)
    longest = max((len(line) for line in series.values()), default=1)
    x_of = lambda i: left + (right - left) * (i / max(longest - 1, 1))  # noqa: E731
    y_of = lambda v: bottom - (bottom - top) * (v - low) / (high - low)  # noqa: E731
    draw.line([left, bottom, right, bottom], fill="black")
    draw.line([left, top, left, bottom], fill="black")
    for i, (label, line) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        points = [(x_of(j), y_of(v)) for j, v in enumerate(line)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        for x, y in points:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
        draw.text((right + 10, top + 14 * i), label[:26], fill=color)
    draw.text((left, 8), title, fill="black")
    draw.text((5, top), f"{high:.1f}", fill="black")
    draw.text((5, bottom - 10), f"{low:.1f}", fill="black")
    draw.text((left, bottom + 10), x_label, fill="black")
    image.save(path)


def report_runs(run_dirs: Sequence[Path], out: Path, block: int = 200) -> str:
    """The papers' table over several run folders (one row per run), and per set the accuracy along the
    stream for every run; returns the Markdown table. Streams use each run's first seed."""
    import json

    from ..data import set_label
    from .records import read_records

    results: dict[str, dict[str, list[SetMetrics]]] = {}
    streams: dict[str, dict[str, list[float]]] = {}
    sets: list[str] = []
    for folder in run_dirs:
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{folder}: not a mintclip run folder (no config.json)")
        config = json.loads(config_path.read_text())
        label = config["method"]["name"]
        label = label if label not in results else f"{label} ({folder.name})"
        results[label] = {}
        for set_id in map(set_label, config["run"]["test_sets"]):
            sets += [] if set_id in sets else [set_id]
            per_seed = [read_records(folder / f"seed{seed}" / set_id / "records.jsonl") for seed in config["run"]["seeds"]]
            results[label][set_id] = [metrics(records) for records in per_seed if records]
            if per_seed and per_seed[0]:
                streams.setdefault(set_id, {})[label] = stream_accuracy(per_seed[0], block)
    out.mkdir(parents=True, exist_ok=True)
    markdown, table = results_table(results, sets)
    (out / "summary.md").write_text(f"Top-1 accuracy (%)\n\n{markdown}")
    (out / "summary.csv").write_text(table)
    for set_id, series in streams.items():
        line_chart_png(series, out / f"stream_{set_id}.png", f"{set_id}: top-1 (%) per block of {block} images",
                       "stream position")
    return markdown
