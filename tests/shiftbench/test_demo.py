"""The demo as CI runs it: a few images per shifted domain, every method, through the real engine."""

import json

from mintclip.cli import main
from mintclip.engine.records import read_records
from mintclip.shiftbench.demo import DEMO_METHODS
from mintclip.shiftbench.render import SHIFTED


def test_a_reduced_demo_runs_every_method_on_every_domain(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--samples", "3", "--per-class", "1", "--shots", "1", "--no-progress"]
    assert main(args) == 0
    printed, logged = capsys.readouterr()
    runs = out / "samples-3"  # a demo of every image writes to out itself
    table = (runs / "report" / "summary.md").read_text()
    assert f"| method | {' | '.join(SHIFTED)} | average |" in table
    for method in DEMO_METHODS:
        assert f"| {method} |" in table and f"| {method} |" in printed
        for domain in SHIFTED:
            records = read_records(runs / method / "seed0" / domain / "records.jsonl")
            assert len(records) == 3 and all("top5" in r for r in records)
    assert (runs / "report" / "accuracy.png").is_file()
    # whether prompts can matter on the model at all: the figures in the report, the verdicts in the output
    assert "## Can prompts matter on this model?" in table and "| sketch | 20 |" in table
    assert "check PASS: prompt sensitivity" in logged or "check FAIL: prompt sensitivity" in logged
    assert json.loads((out / "data" / "shiftbench.json").read_text())["per_class"] == 1
    assert "coop: prompts trained on 1 source images per class" in logged  # before test time, on the source
    # the stream studies: the online methods under the scenarios, MINT's bank size and kappa one at a time
    assert "| method | sequential | cyclic:3 | dirichlet:0.1 | open-set top-1 | AUROC | FPR@95 |" in table
    for method in ("mint", "dynaprompt", "tda"):
        assert f"| {method} | " in table.split("## Online methods under stream scenarios")[1]
        assert len(read_records(runs / f"{method}-cyclic" / "seed0" / SHIFTED[0] / "records.jsonl")) == 3
    assert (runs / "sweep-mint" / "report" / "sensitivity_bank_size.png").is_file()
    assert (runs / "sweep-mint" / "report" / "sensitivity_selection.png").is_file()

    before = {p: p.read_bytes() for p in runs.glob("*/seed0/*/records.jsonl")}
    assert main(args) == 0  # the same command again resumes: every run is complete, nothing changes
    assert {p: p.read_bytes() for p in runs.glob("*/seed0/*/records.jsonl")} == before
    quicker = ["demo", "--out", str(out), "--samples", "2", "--per-class", "1", "--no-progress", "--methods", "zeroshot"]
    assert main(quicker) == 0  # other --samples: their own folder, the first runs untouched
    assert len(read_records(out / "samples-2" / "zeroshot" / "seed0" / SHIFTED[0] / "records.jsonl")) == 2
    assert {p: p.read_bytes() for p in runs.glob("*/seed0/*/records.jsonl")} == before
    assert main([*args, "--per-class", "2", "--methods", "zeroshot"]) == 2  # other images under the old runs
    assert "made with other settings" in capsys.readouterr().err
