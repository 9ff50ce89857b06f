"""`mintclip sweep`: every point an ordinary run, paired with the others, resumable as a whole."""

import shutil

import pytest

from mintclip.cli import main
from mintclip.engine.sweep import Point, sweep_points
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
