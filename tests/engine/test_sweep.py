"""`mintclip sweep`: every point an ordinary run, paired with the others and with the method's defaults,
resumable as a whole, under torchrun as in one process."""

import csv
import json
import shutil
import statistics
import subprocess
import zlib

import numpy as np
import pytest

from mintclip.cli import main
from mintclip.engine.records import read_records
from mintclip.engine.report import bootstrap_means, metrics, with_interval
from mintclip.engine.sweep import Point, signed, sweep_points, with_defaults
from tests.engine.test_distributed import ENV, torchrun
from tests.helpers import random_images, run_args

GRID = ["--grid", "gamma=0.1,0.3", "--grid", "templates=single,simple_7"]
NAMES = ["gamma-0.1_templates-single", "gamma-0.1_templates-simple_7", "gamma-0.3_templates-single",
         "gamma-0.3_templates-simple_7"]


def sweep_args(tree, checkpoint, out, *extra):
    return ["sweep", *run_args(tree, checkpoint, out, "zero")[1:], "--hp", "precision=fp32", *GRID, *extra]


def records(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.glob("*/seed0/*/records.jsonl"))}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return random_images(tmp_path_factory.mktemp("data") / "tree", ["cat", "dog", "fox"], per_class=2)


def test_the_points_are_the_grid_in_order_then_each_ablation_alone():
    points = sweep_points({"a": ["1", "2"], "b": ["x", "y"]}, {"c": ["0", "1"], "a": ["1"]})
    assert [p.overrides for p in points] == [{"a": "1", "b": "x"}, {"a": "1", "b": "y"}, {"a": "2", "b": "x"},
                                             {"a": "2", "b": "y"}, {"c": "0"}, {"c": "1"}, {"a": "1"}]
    assert Point({"query_layers": "11/11"}).name == "query_layers-11+11"


def test_a_2x2_sweep_is_four_runs_and_resumes_to_the_same_records(tree, checkpoint, tmp_path):
    sweep = tmp_path / "sweep"
    assert main(sweep_args(tree, checkpoint, sweep)) == 0
    assert sorted(p.name for p in sweep.iterdir() if p.name in NAMES) == sorted(NAMES)
    assert not (sweep / "defaults").exists()  # gamma-0.3_templates-single is the method's defaults
    assert (sweep / "report" / "sensitivity_gamma.png").is_file() and "zero gamma-0.3_templates-simple_7" in (
        sweep / "report" / "summary.md").read_text()
    for name in NAMES:  # each point is the run of its settings alone
        gamma, templates = name.split("_templates-")
        alone = tmp_path / f"alone-{name}"
        assert main([*run_args(tree, checkpoint, alone, "zero"), "--hp", "precision=fp32",
                     f"gamma={gamma.removeprefix('gamma-')}", f"templates={templates}"]) == 0
        assert (alone / "seed0" / "folder" / "records.jsonl").read_bytes() == (
            sweep / name / "seed0" / "folder" / "records.jsonl").read_bytes()
    whole = records(sweep)
    third = sweep / NAMES[2] / "seed0" / "folder" / "records.jsonl"  # as a sweep killed in its third point
    third.write_bytes(b"".join(third.read_bytes().splitlines(keepends=True)[:2]))
    shutil.rmtree(sweep / NAMES[3])  # the fourth point never started
    assert main(sweep_args(tree, checkpoint, sweep)) == 2  # without --resume: refused, nothing touched
    assert main(sweep_args(tree, checkpoint, sweep, "--resume")) == 0
    assert records(sweep) == whole


def test_a_bad_point_is_refused_before_any_image(tree, checkpoint, tmp_path, capsys):
    out = tmp_path / "bad"
    args = ["sweep", *run_args(tree, checkpoint, out, "zero")[1:], "--grid", "gamma=0.1,most"]
    assert main(args) == 2
    assert "sweep point gamma-most: hyper-parameter gamma='most': expected a number" in capsys.readouterr().err
    assert not out.exists()


def test_the_defaults_point_is_added_exactly_when_no_point_is_at_the_defaults():
    points, defaults = with_defaults("zero", {"precision": "fp32"}, sweep_points({"gamma": ["0.1", "0.5"]}, {}))
    assert [p.name for p in points] == ["defaults", "gamma-0.1", "gamma-0.5"] and defaults == Point({})
    points, defaults = with_defaults("zero", {}, sweep_points({}, {"gamma": ["0.1", "0.30"], "templates": ["single"]}))
    assert [p.name for p in points] == ["gamma-0.1", "gamma-0.30", "templates-single"]
    assert defaults.name == "gamma-0.30"  # the built configs are compared, not the strings


def predict(path, right):
    """Rewrites the records' predictions: the label where right(index), another class elsewhere."""
    rows = read_records(path)
    for r in rows:
        r["top5"][0][0] = r["label"] if right(r["index"]) else (r["label"] + 1) % 3
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def ablated(tree, checkpoint, tmp_path_factory):
    """A 2-value ablation of gamma, neither value the default 0.3, over two seeds. The tiny CLIP predicts
    one class whatever the settings, so the points' predictions are rewritten and the finished sweep
    resumed, which reports it again: paired differences of every kind (-1, -1/2, 0, 1/2, 1)."""
    out = tmp_path_factory.mktemp("ablation") / "sweep"
    args = ["sweep", *run_args(tree, checkpoint, out, "zero")[1:], "--hp", "precision=fp32", "--seeds", "0,1",
            "--ablation", "gamma=0.1,0.5"]
    assert main(args) == 0
    for seed in (0, 1):
        predict(out / "gamma-0.1" / f"seed{seed}" / "folder" / "records.jsonl", lambda i: (i + seed) % 2 == 0)
        predict(out / "gamma-0.5" / f"seed{seed}" / "folder" / "records.jsonl", lambda i: seed == 0 and i < 4)
    assert main([*args, "--resume"]) == 0
    return out


def top1(folder, seed):
    return metrics(read_records(folder / f"seed{seed}" / "folder" / "records.jsonl")).top1


def test_an_added_defaults_point_runs_first_and_the_summary_has_the_seed_std(ablated):
    manifest = json.loads((ablated / "sweep.json").read_text())
    assert manifest["defaults"] == "defaults" and [p["name"] for p in manifest["points"]] == [
        "defaults", "gamma-0.1", "gamma-0.5"]
    assert (ablated / "defaults" / "seed1" / "folder" / "records.jsonl").is_file()
    accuracy = (ablated / "report" / "summary.md").read_text().split("## Top-1 accuracy")[1].split("## ")[0]
    row = next(line for line in accuracy.splitlines() if line.startswith("| zero gamma-0.5 |"))
    assert row.count(" ± ") == 2  # mean ± std over the two seeds, the set and the average


def test_the_intervals_against_the_defaults_are_the_reports_bootstrap_of_the_paired_records(ablated):
    numbers = json.loads((ablated / "report" / "report.json").read_text())
    for point in numbers["points"][1:]:
        per_index = {}
        for seed in (0, 1):
            theirs = {r["index"]: r for r in read_records(ablated / "defaults" / f"seed{seed}" / "folder" / "records.jsonl")}
            for r in read_records(ablated / point["name"] / f"seed{seed}" / "folder" / "records.jsonl"):
                hit = lambda record: record["top5"][0][0] == record["label"]  # noqa: E731
                per_index.setdefault(r["index"], []).append(hit(r) - hit(theirs[r["index"]]))
        differences = np.array([statistics.mean(per_index[i]) for i in sorted(per_index)])
        expected = with_interval(len(differences), 100 * differences.mean(),
                                 100 * bootstrap_means(differences, 2000, zlib.crc32(b"folder")))
        found = point["vs_defaults"]["folder"]
        assert (found["samples"], found["gain"], found["low"], found["high"]) == (
            expected.samples, expected.gain, expected.low, expected.high)
        assert point["top1"]["folder"]["seeds"] == [top1(ablated / point["name"], seed) for seed in (0, 1)]
    assert numbers["points"][0]["vs_defaults"] == {}
    assert "| zero gamma-0.1 |" in (ablated / "report" / "summary.md").read_text().split("## Against the defaults")[1]


def test_the_ablation_table_has_the_default_row_first_and_each_rows_difference(ablated):
    rows = list(csv.DictReader((ablated / "report" / "ablation.csv").open()))
    assert [(r["setting"], r["set"]) for r in rows] == [(setting, column) for setting in (
        "gamma = 0.3 (default)", "gamma = 0.1", "gamma = 0.5") for column in ("folder", "average")]
    default = statistics.mean(top1(ablated / "defaults", seed) for seed in (0, 1))
    assert rows[0]["difference"] == ""
    summary = (ablated / "report" / "summary.md").read_text()
    for name, row in (("gamma-0.1", rows[2]), ("gamma-0.5", rows[4])):
        mean = statistics.mean(top1(ablated / name, seed) for seed in (0, 1))
        assert float(row["difference"]) == pytest.approx(mean - default, abs=1e-4)
        assert f"| {row['setting']} | {mean:.1f} ({signed(mean - default)}) |" in summary
    assert (ablated / "report" / "sensitivity_gamma.png").is_file()


def test_two_processes_sweep_to_exactly_the_records_of_one(tree, checkpoint, tmp_path):
    def args(out):
        return ["sweep", *run_args(tree, checkpoint, out, "zero")[1:], "--hp", "precision=fp32", "--grid",
                "gamma=0.1,0.3"]
    assert main(args(tmp_path / "single")) == 0
    done = subprocess.run(torchrun(args(tmp_path / "two")), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert records(tmp_path / "two") == records(tmp_path / "single") and len(records(tmp_path / "two")) == 2
    assert (tmp_path / "two" / "sweep.json").read_bytes() == (tmp_path / "single" / "sweep.json").read_bytes()
    assert done.stdout.count("## Against the defaults") == 1  # rank 0 alone wrote and printed the report
