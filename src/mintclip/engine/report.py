"""Metrics from per-sample records, and the report over run folders that tells whether a gain is real.

The report holds the papers' table (top-1, mean ± std over seeds), then each run's gain over zero-shot
with a paired bootstrap interval. The gain is measured against the records' own `zeroshot` field (plain
CLIP with "a photo of a {}." on view 0, same model, same image), so every run is paired with its own
baseline and needs no zero-shot run. The accuracy table shows that baseline as a row "zero-shot (records)"
only when no input run is the `zeroshot` method: that run is the same classifier, two rows of the same
numbers under two names would only raise the question which one is right, and its gain row
(+0.00 [+0.00, +0.00]) shows that they agree. Sets are keyed by what they are: runs whose set of one
name was other data (their config.json's data fingerprints differ) get a column each, so they are never
averaged together, and a run's gains pair only its own records. ECE is reported only for methods whose
scores are probabilities (`Method.calibrated`). Records of out-of-distribution images (an open-set
scenario's, `"ood": true`) are never scored for accuracy; where a set has them, the report gives AUROC
and FPR@95 of in- versus out-of-distribution by maximum softmax probability (docs/protocols.md § Scoring
open-set streams). Beside the tables: a bar chart of top-1, top-1 along the stream of online runs, and
the diagnostics of the runs whose methods keep them, drawn as the method gave them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import statistics
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..adapt import available_methods
from ..data import set_label
from .config import FINGERPRINT_WORDS, differing_fields
from .plots import grouped_bar_chart_png, line_chart_png
from .records import read_records


@dataclass
class SetMetrics:
    samples: int
    skipped: int
    top1: float  # percent
    top5: float
    ece: float  # percent, 20 bins as C-TPT; NaN for a method whose scores are not probabilities


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


def in_distribution(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records that accuracy is measured on: all but an open-set stream's out-of-distribution images."""
    return [r for r in records if not r.get("ood")]


def metrics(records: list[dict[str, Any]], calibrated: bool = True) -> SetMetrics:
    """Top-1, top-5 and, when `calibrated` (softmax of the method's logits is a probability), ECE, over
    the in-distribution records."""
    records = in_distribution(records)
    scored = [r for r in records if "skipped" not in r]
    n = len(scored)
    top1 = sum(r["top5"][0][0] == r["label"] for r in scored)
    top5 = sum(any(c == r["label"] for c, _ in r["top5"]) for r in scored)
    ece = expected_calibration_error([r["top5"][0][1] for r in scored], [r["top5"][0][0] == r["label"] for r in scored])
    pct = (lambda x: 100.0 * x / n) if n else (lambda x: 0.0)
    return SetMetrics(n, len(records) - n, pct(top1), pct(top5), 100.0 * ece if calibrated else math.nan)


def ece_note(method: str) -> str:
    return f"ECE not reported for {method}: its scores are not probabilities (e.g. vote counts)"


def zeroshot_metrics(records: list[dict[str, Any]]) -> SetMetrics:
    """Top-1 of the records' zero-shot predictions; they carry no probabilities, so top-5 and ECE are NaN."""
    records = in_distribution(records)
    scored = [r for r in records if "zeroshot" in r]
    top1 = 100.0 * sum(r["zeroshot"] == r["label"] for r in scored) / len(scored) if scored else 0.0
    return SetMetrics(len(scored), len(records) - len(scored), top1, math.nan, math.nan)


def mean_std(values: Sequence[float]) -> str:
    """'61.20 ± 0.35' over seeds; '—' for a number not reported (NaN)."""
    if any(math.isnan(v) for v in values):
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def seed_averages(per_set: dict[str, list[SetMetrics]], sets: Sequence[str]) -> list[float]:
    """The papers' "average" column: per seed that has every set, the mean top-1 over the sets."""
    n_seeds = max((len(v) for v in per_set.values()), default=0)
    return [statistics.mean(per_set[s][seed].top1 for s in sets) for seed in range(n_seeds)
            if all(len(per_set.get(s, [])) > seed for s in sets)]


def results_table(results: dict[str, dict[str, list[SetMetrics]]], sets: Sequence[str]) -> tuple[str, str]:
    """results[method][set] = one SetMetrics per seed -> (Markdown, CSV): a row per method, a column per
    set and the average top-1; mean ± std over seeds."""
    header = ["method", *sets, "average"]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["method", "set", "seeds", "samples", "skipped", "top1", "top1_std", "top5", "ece"])
    for method, per_set in results.items():
        cells = []
        for s in sets:
            runs = per_set.get(s, [])
            cells.append(mean_std([m.top1 for m in runs]) if runs else "-")
            if runs:
                top1 = [m.top1 for m in runs]
                writer.writerow([method, s, len(runs), runs[0].samples, runs[0].skipped, f"{statistics.mean(top1):.4f}",
                                 f"{statistics.stdev(top1):.4f}" if len(runs) > 1 else "",
                                 csv_mean([m.top5 for m in runs]), csv_mean([m.ece for m in runs])])
        averages = seed_averages(per_set, sets)
        cells.append(mean_std(averages) if averages else "-")
        md.append("| " + " | ".join([method, *cells]) + " |")
    return "\n".join(md) + "\n", out.getvalue()


def csv_mean(values: Sequence[float]) -> str:
    """The mean as a CSV cell; empty for a number not reported (NaN)."""
    mean = statistics.mean(values)
    return "" if math.isnan(mean) else f"{mean:.4f}"


def details_table(method: str, per_set: dict[str, list[SetMetrics]]) -> str:
    """Markdown: per set, samples scored, images skipped, top-1, top-5 and ECE (mean ± std over seeds)."""
    lines = [f"| {method} | samples | skipped | top-1 | top-5 | ECE |", "|---|---|---|---|---|---|"]
    for set_id, runs in per_set.items():
        lines.append(f"| {set_id} | {runs[0].samples} | {runs[0].skipped} | {mean_std([m.top1 for m in runs])} | "
                     f"{mean_std([m.top5 for m in runs])} | {mean_std([m.ece for m in runs])} |")
    return "\n".join(lines) + "\n"


def stream_accuracy(records: list[dict[str, Any]], block: int = 200) -> list[float]:
    """Top-1 (%) of consecutive blocks of scored samples, in stream order: prompt collapse shows as a decline."""
    hits = [r["top5"][0][0] == r["label"] for r in in_distribution(records) if "skipped" not in r]
    return [100.0 * sum(hits[i:i + block]) / len(hits[i:i + block]) for i in range(0, len(hits), block)]


@dataclass
class DetectionMetrics:
    in_distribution: int  # scored images of each kind
    out_of_distribution: int
    auroc: float  # percent
    fpr95: float  # percent: false positive rate at 95% true positive rate


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """The probability that a positive scores above a negative, a tie counting 1/2 (Mann-Whitney U over
    n_pos·n_neg): the area under the ROC curve whose steps are the distinct scores."""
    below = np.sort(np.asarray(negative, dtype=np.float64))
    scores = np.asarray(positive, dtype=np.float64)
    lower = np.searchsorted(below, scores, side="left")
    ties = np.searchsorted(below, scores, side="right") - lower
    return float((lower.sum() + 0.5 * ties.sum()) / (len(scores) * len(below)))


def fpr_at_tpr(positive: Sequence[float], negative: Sequence[float], tpr: int = 95) -> float:
    """The share of negatives scoring at least t, t the largest score that keeps `tpr`% of the positives at
    or above it: the k-th highest positive score, k = ceil(tpr·n_pos / 100). Ties at t count as positive
    predictions, as in a ROC curve thresholded at the distinct scores (sklearn's roc_curve)."""
    k = -(-tpr * len(positive) // 100)
    threshold = np.sort(np.asarray(positive, dtype=np.float64))[::-1][k - 1]
    return float(np.mean(np.asarray(negative, dtype=np.float64) >= threshold))


def detection_metrics(records: list[dict[str, Any]]) -> DetectionMetrics | None:
    """In- (positive) versus out-of-distribution images by maximum softmax probability (top5[0][1]) over
    the scored records; None for records with no scored image of either kind."""
    scored = [r for r in records if "skipped" not in r]
    known = [r["top5"][0][1] for r in scored if not r.get("ood")]
    unknown = [r["top5"][0][1] for r in scored if r.get("ood")]
    if not known or not unknown:
        return None
    return DetectionMetrics(len(known), len(unknown), 100 * auroc(known, unknown), 100 * fpr_at_tpr(known, unknown))


def detection_tables(runs: dict[str, dict[str, list[DetectionMetrics]]]) -> tuple[str, str]:
    """runs[label][set] = DetectionMetrics per seed -> (Markdown, CSV): a row per run and set with the
    images of each kind, AUROC and FPR@95 (%), mean ± std over seeds."""
    md = ["| run | set | ID | OOD | AUROC | FPR@95 |", "|---|---|---|---|---|---|"]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["run", "set", "seeds", "id", "ood", "auroc", "auroc_std", "fpr95", "fpr95_std"])
    for label, per_set in runs.items():
        for s, seeds in per_set.items():
            aurocs, fprs = [m.auroc for m in seeds], [m.fpr95 for m in seeds]
            md.append(f"| {label} | {s} | {seeds[0].in_distribution} | {seeds[0].out_of_distribution} | "
                      f"{mean_std(aurocs)} | {mean_std(fprs)} |")
            writer.writerow([label, s, len(seeds), seeds[0].in_distribution, seeds[0].out_of_distribution,
                             f"{statistics.mean(aurocs):.4f}", f"{statistics.stdev(aurocs):.4f}" if len(seeds) > 1 else "",
                             f"{statistics.mean(fprs):.4f}", f"{statistics.stdev(fprs):.4f}" if len(seeds) > 1 else ""])
    return "\n".join(md) + "\n", out.getvalue()


def paired_differences(per_seed: list[list[dict[str, Any]]]) -> np.ndarray:
    """Per sample (by index, in index order) that some seed scored: the run's correctness averaged over
    its seeds minus zero-shot's. Skipped samples have no `zeroshot` and drop out."""
    total: dict[int, int] = {}
    seeds: dict[int, int] = {}
    for records in per_seed:
        for r in in_distribution(records):
            if "zeroshot" in r:
                i = r["index"]
                total[i] = total.get(i, 0) + (r["top5"][0][0] == r["label"]) - (r["zeroshot"] == r["label"])
                seeds[i] = seeds.get(i, 0) + 1
    return np.array([total[i] / seeds[i] for i in sorted(total)], dtype=np.float64)


def bootstrap_means(values: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """`draws` means of `values` resampled with replacement. A resample only changes how often each
    distinct value is drawn, and paired differences take a handful of values (k/seeds - 0 or 1), so
    drawing those counts from a multinomial is the index bootstrap at a cost independent of the samples."""
    distinct, counts = np.unique(values, return_counts=True)
    drawn = np.random.default_rng(seed).multinomial(len(values), counts / len(values), size=draws)
    return drawn @ distinct / len(values)


@dataclass
class Gain:
    samples: int
    gain: float  # top-1 points over zero-shot
    low: float  # the 95% percentile interval
    high: float
    draws: np.ndarray  # the bootstrap gains, for the average over sets


def with_interval(samples: int, gain: float, draws: np.ndarray) -> Gain:
    low, high = np.percentile(draws, [2.5, 97.5])
    return Gain(samples, gain, float(low), float(high), draws)


def gains_over_zeroshot(per_set: dict[str, list[list[dict[str, Any]]]], sets: Sequence[str],
                        bootstrap: int) -> dict[str, Gain]:
    """Per set with paired samples, and "average" when every set has them: the gain with its paired
    bootstrap interval. The average resamples each set on its own (stratified) and averages the gains,
    as the accuracy table averages sets. Each set's generator is seeded by its name: a run's interval does
    not depend on the other runs of the report, and sets draw independently."""
    gains = {}
    for s in sets:
        differences = paired_differences(per_set.get(s, []))
        if len(differences):
            draws = 100 * bootstrap_means(differences, bootstrap, zlib.crc32(s.encode()))
            gains[s] = with_interval(len(differences), 100 * float(differences.mean()), draws)
    if gains and len(gains) == len(sets):
        parts = list(gains.values())
        gains["average"] = with_interval(sum(g.samples for g in parts), statistics.mean(g.gain for g in parts),
                                         np.mean([g.draws for g in parts], axis=0))
    return gains


def with_reference(per_seed: list[list[dict[str, Any]]],
                   reference: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    """The records with the reference run's prediction on the same image and seed in the place of
    `zeroshot`, so that paired_differences and gains_over_zeroshot pair a run with another run (a sweep's
    point with its defaults) as they pair it with zero-shot. `reference` holds the same seeds in the same
    order; a sample either run skipped under a seed has no `zeroshot` there and drops out of that seed."""
    paired = []
    for records, theirs in zip(per_seed, reference):
        predicted = {r["index"]: r["top5"][0][0] for r in theirs if "skipped" not in r}
        rows = []
        for r in records:
            rows.append({key: value for key, value in r.items() if key != "zeroshot"})
            if "skipped" not in r and r["index"] in predicted:
                rows[-1]["zeroshot"] = predicted[r["index"]]
        paired.append(rows)
    return paired


def gains_over_reference(per_set: dict[str, list[list[dict[str, Any]]]],
                         reference: dict[str, list[list[dict[str, Any]]]], sets: Sequence[str],
                         bootstrap: int) -> dict[str, Gain]:
    """gains_over_zeroshot with another run's predictions as the baseline (with_reference): the same
    pairing over images and seeds, the same bootstrap, the same seeds per set."""
    return gains_over_zeroshot({s: with_reference(per_set.get(s, []), reference.get(s, [])) for s in sets}, sets,
                               bootstrap)


def points(x: float) -> str:
    """Signed top-1 points; a tiny negative prints as +0.00, not -0.00."""
    return f"{x:+.2f}".replace("-0.00", "+0.00")


def gains_table(gains: dict[str, dict[str, Gain]], sets: Sequence[str]) -> tuple[str, str]:
    """(Markdown, CSV) of gains: cells `+3.20 [+1.10, +5.30]`, bold where the interval as printed excludes 0."""
    columns = [*sets, "average"]
    md = ["| " + " | ".join(["method", *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["run", "set", "samples", "gain", "ci_low", "ci_high"])
    for label, per_set in gains.items():
        cells = []
        for s in columns:
            g = per_set.get(s)
            cell = f"{points(g.gain)} [{points(g.low)}, {points(g.high)}]" if g else "-"
            cells.append(f"**{cell}**" if g and (round(g.low, 2) > 0 or round(g.high, 2) < 0) else cell)
            if g:
                writer.writerow([label, s, g.samples, f"{g.gain:.4f}", f"{g.low:.4f}", f"{g.high:.4f}"])
        md.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(md) + "\n", out.getvalue()


@dataclass
class Run:
    label: str  # the method, or "method (folder)" when another input already has that name
    folder: Path
    config: dict[str, Any]
    records: dict[str, list[list[dict[str, Any]]]]  # column -> the records of each seed that has some
    folders: dict[str, str]  # column -> the set's folder in the run (its label)
    data: dict[str, dict[str, Any] | None]  # column -> the set's data fingerprint; None: saved before them

    @property
    def calibrated(self) -> bool:
        """Whether its scores are probabilities, as config.json says; a run saved before it said so
        takes its method's word (a method unknown here: yes)."""
        method = self.config["method"]
        return method.get("calibrated", getattr(available_methods().get(method["name"]), "calibrated", True))

    def rename(self, column: str, new: str) -> None:
        """Moves a set to another column, in place, so the columns keep their order."""
        for table in (self.records, self.folders, self.data):
            items = list(table.items())
            table.clear()
            table.update((new if key == column else key, value) for key, value in items)


def load_runs(run_dirs: Sequence[Path], labels: Sequence[str] | None = None) -> list[Run]:
    """The runs, each labelled by its method (and folder, when two share one), or by `labels`."""
    runs: list[Run] = []
    for i, folder in enumerate(run_dirs):
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{folder}: not a mintclip run folder (no config.json)")
        config = json.loads(config_path.read_text())
        label = config["method"]["name"]
        label = f"{label} ({folder.name})" if label in [r.label for r in runs] else label
        label = labels[i] if labels else label
        per_set, data = {}, {}
        for set_id in config["run"]["test_sets"]:
            name = set_label(set_id)
            per_seed = [read_records(folder / f"seed{k}" / name / "records.jsonl") for k in config["run"]["seeds"]]
            per_set[name] = [records for records in per_seed if records]
            data[name] = config.get("datasets", {}).get(set_id, {}).get("fingerprint")
        runs.append(Run(label, folder, config, per_set, {name: name for name in per_set}, data))
    return runs


def fingerprint_key(fingerprint: dict[str, Any]) -> str:
    return json.dumps(fingerprint, sort_keys=True)


DATA_PARTS = (lambda f: f"{f.get('classes', '?')} classes", lambda f: str(f.get("root", "?")),
              lambda f: f"{f.get('samples', '?')} images",
              lambda f: f"data {zlib.crc32(fingerprint_key(f).encode()):08x}")


def data_columns(name: str, fingerprints: list[dict[str, Any]]) -> list[str]:
    """Column names that tell different data under one set name apart: 'folder (4 classes, /data/a)',
    with the number of images, then a hash of the whole fingerprint, where that is not enough."""
    for parts in range(2, len(DATA_PARTS)):
        names = [f"{name} ({', '.join(part(f) for part in DATA_PARTS[:parts])})" for f in fingerprints]
        if len(set(names)) == len(names):
            return names
    return [f"{name} ({', '.join(part(f) for part in DATA_PARTS)})" for f in fingerprints]


def separate_data(runs: list[Run]) -> list[str]:
    """Where runs hold different data under one set name (their fingerprints differ), one column per
    data, so no number of one is averaged or paired with the other's; there, runs that did not record
    their data get a column of their own (elsewhere they join the others: unknown is accepted).
    Renames the runs' sets in place and returns the report's notes on it."""
    notes = []
    for name in dict.fromkeys(s for run in runs for s in run.data):
        holders = [run for run in runs if name in run.data]
        known = {fingerprint_key(run.data[name]): run.data[name] for run in holders if run.data[name] is not None}
        if len(known) < 2:
            continue
        columns = dict(zip(known, data_columns(name, list(known.values()))))
        placed: dict[str, list[str]] = {}
        for run in holders:
            fingerprint = run.data[name]
            column = (columns[fingerprint_key(fingerprint)] if fingerprint is not None
                      else f"{name} (data not recorded)")
            run.rename(name, column)
            placed.setdefault(column, []).append(run.label)
        how = ", ".join(FINGERPRINT_WORDS[key] for key in differing_fields(list(known.values())))
        where = "; ".join(f"{column}: {', '.join(labels)}" for column, labels in placed.items())
        notes.append(f"Note: {name} is not the same data in every run (they differ in {how}), so it has one column "
                     f"per data, never averaged or paired across them: {where}.")
    return notes


def file_part(name: str) -> str:
    """A run or column name as part of a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def zeroshot_reference(runs: list[Run]) -> tuple[dict[str, list[SetMetrics]], list[str]]:
    """Per set, the records' zero-shot top-1 (per seed) of the first run that has the set, and the sets on
    which runs disagree about it (other weights, precision or samples): there one reference misleads."""
    reference: dict[str, list[SetMetrics]] = {}
    disagree: list[str] = []
    for run in runs:
        for s, per_seed in run.records.items():
            zs = [m for m in map(zeroshot_metrics, per_seed) if m.samples]
            if not zs:
                continue
            if s not in reference:
                reference[s] = zs
            elif abs(statistics.mean(m.top1 for m in zs) - statistics.mean(m.top1 for m in reference[s])) >= 0.005:
                disagree += [] if s in disagree else [s]
    return reference, disagree




def diagnostics_section(runs: list[Run], out: Path) -> tuple[str, list[str]]:
    """Per run whose method kept diagnostics (MINT's bank, DynaPrompt's buffer, TDA's caches), its first
    seed's numbers per set (per sub-stream when it ran with --online-shards), its bar charts copied
    into the report as <chart>_<run>_<set>.png, and its state and top-1 along the whole stream
    (stream_trace.png, stream_accuracy.png) as stream_<kind>_<run>.png; returns (Markdown, files written)."""
    blocks: list[str] = []
    files: list[str] = []
    for run in runs:
        first_seed = run.folder / f"seed{run.config['run']['seeds'][0]}"
        numbers: dict[str, dict] = {}
        for s, name in run.folders.items():
            for path in sorted((first_seed / name).glob("diagnostics*.json")):
                stream = path.stem.removeprefix("diagnostics")  # '' or '.stream0-of-2'
                row = f"{s} ({stream[1:]})" if stream else s
                numbers[row] = json.loads(path.read_text())
                for chart in sorted((first_seed / name).glob(f"diagnostics_*{stream}.png")):
                    chart_name = chart.name.removeprefix("diagnostics_").removesuffix(f"{stream}.png")
                    if "." not in chart_name:  # not another sub-stream's
                        files.append(f"{chart_name}_{file_part(run.label)}_{file_part(s)}{stream}.png")
                        shutil.copyfile(chart, out / files[-1])
        streams = []
        for chart in sorted(first_seed.glob("stream_*.png")):  # study.py: the state and top-1 along the stream
            files.append(f"{chart.stem}_{file_part(run.label)}.png")
            shutil.copyfile(chart, out / files[-1])
            streams.append(f"![{chart.stem} {run.label}]({files[-1]})")
        if not numbers:
            continue
        keys = list(dict.fromkeys(k for n in numbers.values() for k in n))
        lines = [f"### {run.label}", "", "| set | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for row, n in numbers.items():
            values = [f"{n[k]:.4f}" if isinstance(n.get(k), float) else str(n.get(k, "-")) for k in keys]
            lines.append(f"| {row} | " + " | ".join(values) + " |")
        blocks.append("\n".join(lines + ([""] + streams if streams else [])) + "\n")
    return ("## Diagnostics (first seed)\n\n" + "\n".join(blocks) if blocks else ""), files


def accuracy_chart(results: dict[str, dict[str, list[SetMetrics]]], sets: list[str], path: Path) -> None:
    """Grouped bars of the accuracy table: mean top-1 per set and the average, seed std as error bars."""
    series = {}
    for label, per_set in results.items():
        columns = [[m.top1 for m in per_set.get(s, [])] for s in sets] + [seed_averages(per_set, sets)]
        series[label] = [(statistics.mean(v), statistics.stdev(v) if len(v) > 1 else None) if v else None
                         for v in columns]
    grouped_bar_chart_png([*sets, "average"], series, path, "Top-1 accuracy per test set, mean over seeds "
                          "(error bars: ± std)", "test set", "top-1 (%)")


def report_runs(run_dirs: Sequence[Path], out: Path, block: int = 200, bootstrap: int = 2000,
                labels: Sequence[str] | None = None) -> str:
    """Combine run folders into summary.md (returned), summary.csv, gains.csv and the plots listed at the
    end of summary.md. A set a run names but has no records for yet shows "-". `labels`: the rows'
    names (default: each run's method)."""
    runs = load_runs(run_dirs, labels)
    notes = separate_data(runs)
    notes += [f"Note: {ece_note(run.label)}; summary.csv leaves its ece empty." for run in runs if not run.calibrated]
    scenarios = [f"{run.label} {run.config['run']['scenario']}" for run in runs if "scenario" in run.config["run"]]
    if scenarios:
        notes.append(f"Note: stream scenarios (docs/protocols.md): {'; '.join(scenarios)}; any other run iid.")
    sets = list(dict.fromkeys(s for run in runs for s in run.records))
    results = {run.label: {s: [metrics(r, run.calibrated) for r in per_seed] for s, per_seed in run.records.items()}
               for run in runs}
    reference, disagree = zeroshot_reference(runs)
    if all(run.config["method"]["name"] != "zeroshot" for run in runs) and reference:
        results = {"zero-shot (records)": reference, **results}
    gains = {run.label: gains_over_zeroshot(run.records, sets, bootstrap) for run in runs}
    out.mkdir(parents=True, exist_ok=True)
    accuracy, accuracy_csv = results_table(results, sets)
    gain, gain_csv = gains_table(gains, sets)
    diagnostics, chart_files = diagnostics_section(runs, out)
    accuracy_chart(results, sets, out / "accuracy.png")
    files = ["summary.md", "summary.csv", "gains.csv", "accuracy.png"]
    detection = {run.label: {s: found for s, per_seed in run.records.items()
                             if (found := [m for m in map(detection_metrics, per_seed) if m is not None])}
                 for run in runs}
    detection = {label: per_set for label, per_set in detection.items() if per_set}
    detected = ""
    if detection:
        table, detection_csv = detection_tables(detection)
        (out / "ood.csv").write_text(detection_csv)
        files.append("ood.csv")
        detected = ("## Out-of-distribution detection (%), mean ± std over seeds\n\nIn-distribution images are the "
                    "positives, scored by their maximum softmax probability; AUROC counts ties as 1/2, FPR@95 is the "
                    "share of OOD images at or above the score that keeps 95% of the ID images. The OOD images are "
                    f"left out of every accuracy above.\n\n{table}")
    for s in sets:
        streams = {run.label: stream_accuracy(run.records[s][0], block) for run in runs
                   if run.config["method"]["online"] and run.records.get(s)}
        if streams:
            files.append(f"stream_{file_part(s)}.png")
            line_chart_png(streams, out / files[-1], f"{s}: top-1 (%) per block of {block} images, first seed",
                           "stream position")
    runs_table = "".join(f"| {run.label} | {run.folder} | {' '.join(map(str, run.config['run']['seeds']))} | "
                         f"{run.config['run'].get('weights', '-')} |\n" for run in runs)
    note = (f"\nZero-shot accuracy differs between runs on {', '.join(disagree)} (other weights, precision or "
            "samples): each gain is against its own run's zero-shot.\n" if disagree else "")
    sections = [
        f"# mintclip report\n\n| run | folder | seeds | weights |\n|---|---|---|---|\n{runs_table}"
        + "".join(f"\n{line}\n" for line in notes),
        f"## Top-1 accuracy (%), mean ± std over seeds\n\n{accuracy}",
        f"## Gain over zero-shot (top-1 points), mean [95% CI], paired bootstrap over samples, B={bootstrap}\n\n"
        "Per sample, the run's correctness averaged over its seeds minus that of zero-shot CLIP on the same image "
        "(the records' `zeroshot`); the average column resamples each set on its own. **Bold**: the interval "
        f"excludes 0.\n\n{gain}{note}",
        detected,
        diagnostics,
        "## Files\n\n" + "".join(f"- {name}\n" for name in [*files, *chart_files]),
    ]
    markdown = "\n".join(section for section in sections if section)
    (out / "summary.md").write_text(markdown)
    (out / "summary.csv").write_text(accuracy_csv)
    (out / "gains.csv").write_text(gain_csv)
    return markdown
