"""`mintclip report` on run folders written by hand, where the right answer is known without a model."""

import csv
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mintclip.cli import main
from mintclip.engine.plots import BAR, GROUP_GAP, HEIGHT, LEFT, LEGEND, bar_chart_png
from mintclip.engine.report import bootstrap_means, report_runs


def records(method_right: list[bool], zeroshot_right: list[bool]) -> list[dict]:
    """One record per sample of a two-class set; every label is 0, so being right means predicting 0."""
    return [{"index": i, "path": f"{i}.png", "label": 0, "top5": [[0 if m else 1, 0.8], [1 if m else 0, 0.2]],
             "zeroshot": 0 if z else 1} for i, (m, z) in enumerate(zip(method_right, zeroshot_right))]


def write_run(folder: Path, method: str, per_set: dict[str, list[list[dict]]], online: bool = False) -> Path:
    """A run folder as `mintclip run` leaves it: per set, the records of each seed (an empty list: not run yet)."""
    seeds = list(range(max(len(per_seed) for per_seed in per_set.values())))
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"run": {"test_sets": list(per_set), "seeds": seeds},
                                                    "method": {"name": method, "online": online}}))
    for set_id, per_seed in per_set.items():
        for seed, lines in enumerate(per_seed):
            path = folder / f"seed{seed}" / set_id / "records.jsonl"
            path.parent.mkdir(parents=True)
            path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder


def gains(out: Path) -> dict[tuple[str, str], dict[str, float]]:
    return {(row["run"], row["set"]): {k: float(v) for k, v in row.items() if k not in ("run", "set")}
            for row in csv.DictReader(open(out / "gains.csv"))}


def right(n: int, of: int) -> list[bool]:
    return [True] * n + [False] * (of - n)


def test_a_method_equal_to_zeroshot_gains_nothing(tmp_path):
    same = records(right(30, 50), right(30, 50))
    report = report_runs([write_run(tmp_path / "copy", "copy", {"X": [same]})], tmp_path / "report")
    assert gains(tmp_path / "report")[("copy", "X")] == {"samples": 50, "gain": 0, "ci_low": 0, "ci_high": 0}
    assert "| copy | +0.00 [+0.00, +0.00] | +0.00 [+0.00, +0.00] |" in report  # X, and the average


def test_right_on_a_superset_of_zeroshot_is_a_real_gain(tmp_path):
    better = records(right(60, 100), right(40, 100))  # right wherever zero-shot is, and on 20 more
    report = report_runs([write_run(tmp_path / "tpt", "tpt", {"X": [better]})], tmp_path / "report")
    gain = gains(tmp_path / "report")[("tpt", "X")]
    assert gain["gain"] == 20 and 10 <= gain["ci_low"] < gain["ci_high"] <= 30  # the interval excludes 0
    assert f"| tpt | **+20.00 [{gain['ci_low']:+.2f}, {gain['ci_high']:+.2f}]** |" in report
    assert "| zero-shot (records) | 40.00 | 40.00 |" in report  # the baseline, as no zeroshot run is given


def test_seeds_are_averaged_per_sample(tmp_path):
    # zero-shot is wrong on all four samples; seed 0 is right on samples 0 and 1, seed 1 on sample 0 only
    seed0, seed1 = records(right(2, 4), right(0, 4)), records(right(1, 4), right(0, 4))
    report = report_runs([write_run(tmp_path / "mint", "mint", {"X": [seed0, seed1]})], tmp_path / "report")
    assert gains(tmp_path / "report")[("mint", "X")]["gain"] == 100 * (1 + 0.5 + 0 + 0) / 4
    assert "| mint | 37.50 ± 17.68 | 37.50 ± 17.68 |" in report


def test_the_average_column_resamples_each_set_on_its_own(tmp_path):
    x = records(right(60, 100), right(40, 100))  # +20, uncertain
    y = records(right(10, 50), right(10, 50))  # +0, exactly: its resamples never move
    report_runs([write_run(tmp_path / "tda", "tda", {"X": [x], "Y": [y]})], tmp_path / "report")
    table = gains(tmp_path / "report")
    assert table[("tda", "average")]["gain"] == 10 and table[("tda", "average")]["samples"] == 150
    for bound in ("ci_low", "ci_high"):
        assert abs(table[("tda", "average")][bound] - table[("tda", "X")][bound] / 2) < 1e-3


def test_the_zeroshot_reference_row_appears_only_without_a_zeroshot_run(tmp_path):
    zeroshot = write_run(tmp_path / "zeroshot", "zeroshot", {"X": [records(right(4, 10), right(4, 10))]})
    mta = write_run(tmp_path / "mta", "mta", {"X": [records(right(6, 10), right(4, 10))]})
    report = report_runs([zeroshot, mta], tmp_path / "report")
    assert "| zeroshot | 40.00 | 40.00 |" in report and "zero-shot (records)" not in report
    assert "| zeroshot | +0.00 [+0.00, +0.00] |" in report  # the run and the records' zero-shot agree
    other = write_run(tmp_path / "other", "tpt", {"X": [records(right(6, 10), right(5, 10))]})
    assert "Zero-shot accuracy differs between runs on X" in report_runs([mta, other], tmp_path / "report2")


def test_a_set_not_run_yet_shows_a_dash(tmp_path):
    done = records(right(60, 100), right(40, 100))
    report = report_runs([write_run(tmp_path / "tpt", "tpt", {"X": [done], "Y": []})], tmp_path / "report")
    assert "| tpt | 60.00 | - | - |" in report  # Y, and so the average over X and Y
    assert "| tpt | **+20.00 [" in report and "]** | - | - |" in report
    assert set(gains(tmp_path / "report")) == {("tpt", "X")}


def test_plots_bars_per_set_streams_of_online_runs_and_memory_usage(tmp_path):
    mint = write_run(tmp_path / "mint", "mint", {"X": [records(right(6, 10), right(4, 10))] * 2,
                                                 "Y": [records(right(3, 10), right(4, 10))] * 2}, online=True)
    diagnostics = {"entries_retrieved": 7, "key_cosine_mean": 0.25}
    (mint / "seed0" / "X" / "diagnostics.json").write_text(json.dumps(diagnostics))
    bar_chart_png(torch.tensor([5.0, 3.0, 1.0]), mint / "seed0" / "X" / "diagnostics_usage.png", "usage")
    bar_chart_png(torch.tensor([1.0, 2.0]), mint / "seed0" / "stream_trace.png", "the bank along the stream")
    zero = write_run(tmp_path / "zero", "zero", {"X": [records(right(5, 10), right(4, 10))]})
    report = report_runs([mint, zero], tmp_path / "report", block=5)
    written = sorted(p.name for p in (tmp_path / "report").iterdir())
    assert written == ["accuracy.png", "gains.csv", "stream_X.png", "stream_Y.png", "stream_trace_mint.png",
                       "summary.csv", "summary.md", "usage_mint_X.png"]  # online run only; Y has no usage histogram
    assert "![stream_trace mint](stream_trace_mint.png)" in report
    assert all(f"- {name}\n" in report for name in written)
    groups, bars = 3, 3  # X, Y and the average; mint, zero and the zero-shot reference
    assert Image.open(tmp_path / "report" / "accuracy.png").size == (LEFT + groups * (bars * BAR + GROUP_GAP) + LEGEND,
                                                                      HEIGHT)
    for name in ("stream_X.png", "usage_mint_X.png"):
        Image.open(tmp_path / "report" / name).verify()
    assert "### mint\n\n| set | entries_retrieved | key_cosine_mean |\n|---|---|---|\n| X | 7 | 0.2500 |" in report


def test_memory_diagnostics_of_sub_streams_have_a_row_each(tmp_path):
    mint = write_run(tmp_path / "mint", "mint", {"X": [records(right(6, 10), right(4, 10))]}, online=True)
    for k, retrieved in enumerate((5, 9)):
        (mint / "seed0" / "X" / f"diagnostics.stream{k}-of-2.json").write_text(json.dumps({"entries_retrieved": retrieved}))
        bar_chart_png(torch.tensor([5.0, 3.0]), mint / "seed0" / "X" / f"diagnostics_usage.stream{k}-of-2.png", "usage")
    report = report_runs([mint], tmp_path / "report")
    assert "| X (stream0-of-2) | 5 |\n| X (stream1-of-2) | 9 |" in report
    assert (tmp_path / "report" / "usage_mint_X.stream1-of-2.png").is_file()


def test_the_same_report_twice_is_identical(tmp_path):
    runs = [write_run(tmp_path / "a", "tpt", {"X": [records(right(60, 100), right(40, 100))]}),
            write_run(tmp_path / "b", "tpt", {"X": [records(right(30, 100), right(40, 100))]}, online=True)]
    for out in ("one", "two"):
        report_runs(runs, tmp_path / out)
    one, two = ({p.name: p.read_bytes() for p in (tmp_path / out).iterdir()} for out in ("one", "two"))
    assert one == two and len(one) == 5
    assert b"| tpt (b) | **-10.00 [" in one["summary.md"]  # the second run of a method is told apart by its folder


def test_counting_draws_is_the_index_bootstrap():
    values = np.repeat([-1.0, -0.5, 0.0, 0.5, 1.0], [5, 10, 60, 15, 10])  # two seeds: per-sample steps of 0.5
    by_index = values[np.random.default_rng(1).integers(len(values), size=(50_000, len(values)))].mean(1)
    by_count = bootstrap_means(values, 50_000, seed=2)
    assert np.abs(np.percentile(by_index, [2.5, 50, 97.5]) - np.percentile(by_count, [2.5, 50, 97.5])).max() < 0.01


def test_the_command_line(tmp_path, capsys):
    run = write_run(tmp_path / "tpt", "tpt", {"X": [records(right(6, 10), right(4, 10))]})
    assert main(["report", str(run), "--out", str(tmp_path / "report"), "--bootstrap", "500"]) == 0
    printed = capsys.readouterr().out
    assert "paired bootstrap over samples, B=500" in printed and "- gains.csv" in printed
    assert f"wrote the files listed under 'Files' to {tmp_path / 'report'}/" in printed
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "report2")]) == 2
    err = capsys.readouterr().err
    assert "not a mintclip run folder" in err and err.count("\n") == 1


def with_data(run: Path, set_id: str, **fingerprint) -> Path:
    """The run's config.json with a data fingerprint of `set_id`, as `mintclip run` writes it."""
    config = json.loads((run / "config.json").read_text())
    config["datasets"] = {set_id: {"fingerprint": {"set_id": set_id, "root": "/data", "samples": 10, "classes": 2,
                                                   "classes_sha256": "c", "samples_sha256": "s", **fingerprint}}}
    (run / "config.json").write_text(json.dumps(config))
    return run


def test_a_run_that_did_not_record_its_data_joins_one_data_and_stands_apart_among_several(tmp_path):
    same = records(right(6, 10), right(4, 10))
    a = with_data(write_run(tmp_path / "a", "tpt", {"X": [same]}), "X", root="/data/a")
    old = write_run(tmp_path / "old", "mta", {"X": [same]})
    joined = report_runs([a, old], tmp_path / "joined")
    assert "| method | X | average |" in joined and "Note:" not in joined  # unknown data is accepted
    b = with_data(write_run(tmp_path / "b", "tda", {"X": [same]}), "X", root="/data/b")
    report = report_runs([a, old, b], tmp_path / "apart")
    assert "| method | X (2 classes, /data/a) | X (data not recorded) | X (2 classes, /data/b) | average |" in report
    assert "(they differ in root)" in report and "X (data not recorded): mta;" in report
    assert "| tda | - | - | +20.00 [" in gains_md(report)  # its gain in its own column, and no average
    c = with_data(write_run(tmp_path / "c", "zeroshot", {"X": [same]}), "X", root="/data/a", samples=12,
                  samples_sha256="t")
    told_apart = report_runs([a, c], tmp_path / "told_apart")
    assert "| method | X (2 classes, /data/a, 10 images) | X (2 classes, /data/a, 12 images) | average |" in told_apart


def gains_md(report: str) -> str:
    return report[report.index("## Gain over zero-shot"):]


def test_ece_is_left_out_for_a_method_whose_scores_are_not_probabilities(tmp_path):
    """A run saved before config.json said whether its scores are probabilities takes its method's word."""
    runs = [write_run(tmp_path / name, name, {"X": [records(right(6, 10), right(4, 10))]}) for name in ("zero", "tpt")]
    report = report_runs(runs, tmp_path / "report")
    assert "Note: ECE not reported for zero: its scores are not probabilities (e.g. vote counts)" in report
    ece = {row["method"]: row["ece"] for row in csv.DictReader(open(tmp_path / "report" / "summary.csv"))}
    assert ece == {"zero-shot (records)": "", "zero": "", "tpt": "20.0000"}  # tpt: confidence 0.8, accuracy 0.6
