"""What an online method did along its whole stream, for the studies (docs/protocols.md § Introspection):
its per-sample trace (`Method.sample_trace`: DynaPrompt's buffer, MINT's bank use, TDA's cache fill) and
its top-1 along the stream, drawn against the stream position with the switches of set marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data import set_label
from .plots import line_chart_png
from .records import read_records
from .report import stream_accuracy

TRACE = "trace.jsonl"  # beside each set's records.jsonl: one line per sample, in the set's stream order
MOST_POINTS = 400  # drawn per line; longer streams are sampled evenly


def stream_rows(folder: Path, sets: list[str]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(set, record, trace) of every sample of a seed folder's stream, in stream order."""
    rows = []
    for set_id in sets:
        records = read_records(folder / set_label(set_id) / "records.jsonl")
        traces = read_records(folder / set_label(set_id) / TRACE)
        rows += [(set_id, record, trace) for record, trace in zip(records, traces)]
    return sorted(rows, key=lambda row: row[2]["stream_position"])


def trace_series(traces: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Numbers to draw along the stream: each numeric field as it is; each field that names a slot or is
    None ('appended', 'deleted') as a running count of the samples where it named one."""
    series: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    for trace in traces:
        for key, value in trace.items():
            if key in ("index", "stream_position") or isinstance(value, list):
                continue
            if key in ("appended", "deleted"):
                counts[key] = counts.get(key, 0) + (value is not None)
                series.setdefault(f"{key} (running count)", []).append(counts[key])
            elif isinstance(value, (int, float)):
                series.setdefault(key, []).append(float(value))
    return series


def switches(sets: list[str], every: int = 1) -> list[tuple[float, str]]:
    """(point, set entered) wherever the stream enters a set, in points of `every` samples."""
    return [(position / every, set_label(s)) for position, s in enumerate(sets)
            if position == 0 or s != sets[position - 1]]


def draw_stream_study(folder: Path, sets: list[str], method: str) -> list[Path]:
    """stream_trace.png (when the method traces) and stream_accuracy.png in a seed folder; returns them."""
    rows = stream_rows(folder, sets)
    if not rows:
        return []
    order = [set_id for set_id, _, _ in rows]
    drawn = []
    series = trace_series([trace for _, _, trace in rows])
    step = max(1, -(-len(rows) // MOST_POINTS))
    if series:
        sampled = {key: values[::step] for key, values in series.items()}
        drawn.append(folder / "stream_trace.png")
        line_chart_png(sampled, drawn[-1], f"{method}: its state along the stream (every {step} samples)",
                       "stream position", marks=switches(order, step))
    scored = [(set_id, record) for set_id, record, _ in rows if "skipped" not in record and not record.get("ood")]
    block = max(10, len(scored) // 40)
    drawn.append(folder / "stream_accuracy.png")
    line_chart_png({method: stream_accuracy([record for _, record in scored], block)}, drawn[-1],
                   f"{method}: top-1 (%) per block of {block} scored images along the stream", "stream position",
                   marks=switches([set_id for set_id, _ in scored], block))
    return drawn
