"""Charts drawn with Pillow alone (no plotting dependency): a run's usage histogram and stream curve,
the report's grouped bars of top-1 per set and run, and a sweep's top-1 with intervals against a swept value."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def bar_chart_png(values: torch.Tensor, path: Path, title: str, width: int = 800, height: int = 320) -> None:
    """A plain bar chart of a 1-D tensor."""
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


def line_chart_png(series: dict[str, list[float]], path: Path, title: str, x_label: str,
                   width: int = 800, height: int = 360, marks: Sequence[tuple[float, str]] = ()) -> None:
    """Lines of accuracy (%) against block number, one per run; `marks` (x in points, label) draw grey
    vertical lines, e.g. where a stream changes set."""
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
    for x, label in marks:
        draw.line([x_of(x), top, x_of(x), bottom], fill=(170, 170, 170))
        draw.text((x_of(x) + 2, bottom - 12), label[:12], fill=(120, 120, 120))
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


BAR, GROUP_GAP, LEFT, LEGEND, HEIGHT = 36, 28, 64, 200, 420  # pixels: grouped_bar_chart_png's layout


def grouped_bar_chart_png(groups: list[str], series: dict[str, list[tuple[float, float | None] | None]], path: Path,
                          title: str, x_label: str, y_label: str) -> None:
    """Bars of percentages, (mean, std or None) per group (x) and series (colour), each labelled with its mean; a std
    draws a thin error bar, a missing value a "-". The width grows with the bars, so labels stay legible:
    LEFT + groups x (series x BAR + GROUP_GAP) + LEGEND by HEIGHT pixels."""
    width = LEFT + len(groups) * (len(series) * BAR + GROUP_GAP) + LEGEND
    image = Image.new("RGB", (width, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font, small, big = (ImageFont.load_default(size=s) for s in (12, 11, 15))
    top, bottom, right = 60, HEIGHT - 52, width - LEGEND
    highest = max((v[0] + (v[1] or 0.0) for line in series.values() for v in line if v is not None), default=0.0)
    peak = 10 * max(1, math.ceil(highest / 10))  # percentages: a tick every 10
    y_of = lambda v: bottom - (bottom - top) * v / peak  # noqa: E731
    for tick in range(0, peak + 1, 10):
        draw.line([LEFT, y_of(tick), right, y_of(tick)], fill=(225, 225, 225))
        draw.text((LEFT - 6, y_of(tick)), f"{tick}", fill="black", font=font, anchor="rm")
    for g, group in enumerate(groups):
        x0 = LEFT + GROUP_GAP / 2 + g * (len(series) * BAR + GROUP_GAP)
        for i, line in enumerate(series.values()):
            x, value = x0 + i * BAR, line[g]
            if value is None:
                draw.text((x + BAR / 2, bottom - 2), "-", fill="black", font=font, anchor="mb")
                continue
            mean, std = value
            draw.rectangle([x + 2, y_of(mean), x + BAR - 2, bottom], fill=PALETTE[i % len(PALETTE)])
            if std:
                centre = x + BAR / 2
                draw.line([centre, y_of(max(mean - std, 0)), centre, y_of(mean + std)], fill="black")
                draw.line([centre - 4, y_of(mean + std), centre + 4, y_of(mean + std)], fill="black")
            draw.text((x + BAR / 2, y_of(mean + (std or 0)) - 3), f"{mean:.1f}", fill="black", font=small, anchor="mb")
        draw.text((x0 + len(series) * BAR / 2, bottom + 6), group[: (len(series) * BAR + GROUP_GAP) // 7],
                  fill="black", font=font, anchor="mt")
    draw.line([LEFT, bottom, right, bottom], fill="black")
    draw.line([LEFT, top, LEFT, bottom], fill="black")
    draw.text((LEFT, 12), title, fill="black", font=big)
    draw.text((LEFT, top - 10), y_label, fill="black", font=font, anchor="ld")
    draw.text(((LEFT + right) / 2, HEIGHT - 12), x_label, fill="black", font=font, anchor="ms")
    for i, label in enumerate(series):
        y = top + 20 * i
        draw.rectangle([right + 16, y, right + 28, y + 12], fill=PALETTE[i % len(PALETTE)])
        draw.text((right + 34, y + 6), label[:26], fill="black", font=font, anchor="lm")
    image.save(path)


def interval_chart_png(ticks: list[str], series: dict[str, list[tuple[float, float, float] | None]], path: Path,
                       title: str, x_label: str, y_label: str, references: dict[str, float] | None = None) -> None:
    """Means joined by a line, one line per series (colour), at evenly spaced categorical ticks (x), each with
    an error bar from its low to its high ((mean, low, high) per tick, None: not drawn). The series lie a
    few pixels apart so that their bars do not hide each other; `references` draws a series' level as a
    dashed line of its colour (a sensitivity plot's defaults)."""
    references = references or {}
    width = max(640, LEFT + 90 * len(ticks) + LEGEND)
    image = Image.new("RGB", (width, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font, big = ImageFont.load_default(size=12), ImageFont.load_default(size=15)
    top, bottom, right = 60, HEIGHT - 52, width - LEGEND
    values = [v for line in series.values() for value in line if value is not None for v in value]
    values += list(references.values())
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    pad = max(0.05 * (high - low), 0.5)
    low, high = low - pad, high + pad
    step = (right - LEFT) / max(len(ticks), 1)
    x_of = lambda i: LEFT + step * (i + 0.5)  # noqa: E731
    y_of = lambda v: bottom - (bottom - top) * (v - low) / (high - low)  # noqa: E731
    for k in range(5):
        tick = low + (high - low) * k / 4
        draw.line([LEFT, y_of(tick), right, y_of(tick)], fill=(225, 225, 225))
        draw.text((LEFT - 6, y_of(tick)), f"{tick:.1f}", fill="black", font=font, anchor="rm")
    for i, tick in enumerate(ticks):
        draw.text((x_of(i), bottom + 6), tick[:14], fill="black", font=font, anchor="mt")
    for s, (label, line) in enumerate(series.items()):
        color = PALETTE[s % len(PALETTE)]
        if label in references:
            y = y_of(references[label])
            for x in range(LEFT, right, 10):
                draw.line([x, y, min(x + 5, right), y], fill=color)
        shift = 5 * (s - (len(series) - 1) / 2)
        drawn = [(x_of(i) + shift, value) for i, value in enumerate(line) if value is not None]
        if len(drawn) > 1:
            draw.line([(x, y_of(mean)) for x, (mean, _, _) in drawn], fill=color, width=2)
        for x, (mean, lo, hi) in drawn:
            draw.line([x, y_of(lo), x, y_of(hi)], fill=color)
            for end in (lo, hi):
                draw.line([x - 3, y_of(end), x + 3, y_of(end)], fill=color)
            draw.ellipse([x - 3, y_of(mean) - 3, x + 3, y_of(mean) + 3], fill=color)
        draw.rectangle([right + 16, top + 20 * s, right + 28, top + 20 * s + 12], fill=color)
        draw.text((right + 34, top + 20 * s + 6), label[:26], fill="black", font=font, anchor="lm")
    draw.line([LEFT, bottom, right, bottom], fill="black")
    draw.line([LEFT, top, LEFT, bottom], fill="black")
    draw.text((LEFT, 12), title, fill="black", font=big)
    draw.text((LEFT, top - 10), y_label, fill="black", font=font, anchor="ld")
    draw.text(((LEFT + right) / 2, HEIGHT - 12), x_label, fill="black", font=font, anchor="ms")
    image.save(path)
