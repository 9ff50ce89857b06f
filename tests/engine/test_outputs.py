"""What a run leaves in its output folder and how the report reads it: data fingerprints that keep runs
on different data apart, ECE only where scores are probabilities, the folder's lock, and run.log."""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mintclip.cli import main
from mintclip.engine.records import RecordWriter
from mintclip.engine.report import report_runs
from tests.helpers import ROOT, random_images, run_args


def files_of(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_runs_on_other_data_under_one_set_name_are_never_averaged(tmp_path, checkpoint, capsys):
    four = random_images(tmp_path / "four", ["cat", "dog", "fox", "owl"], per_class=2)
    two = random_images(tmp_path / "two", ["cat", "dog"], per_class=3, seed=1)
    for out, data, seeds in (("on_four", four, "0"), ("on_two", two, "0"), ("on_four_again", four, "1")):
        assert main(run_args(data, checkpoint, tmp_path / out, "zeroshot", "--seeds", seeds)) == 0
    fingerprint = json.loads((tmp_path / "on_two" / "config.json").read_text())["datasets"]["folder"]["fingerprint"]
    assert fingerprint["root"] == str(two.resolve()) and (fingerprint["samples"], fingerprint["classes"]) == (6, 2)
    capsys.readouterr()

    runs = [tmp_path / "on_four", tmp_path / "on_two", tmp_path / "on_four_again"]
    report = report_runs(runs, tmp_path / "report")
    a, b = f"folder (4 classes, {four.resolve()})", f"folder (2 classes, {two.resolve()})"
    assert f"| method | {a} | {b} | average |" in report
    assert "| zeroshot (on_two) | - | " in report  # its own column only, and so no average
    assert (f"Note: folder is not the same data in every run (they differ in classes, root, images), so it has "
            f"one column per data, never averaged or paired across them: {a}: zeroshot, zeroshot (on_four_again); "
            f"{b}: zeroshot (on_two).") in report
    rows = list(csv.DictReader(open(tmp_path / "report" / "gains.csv")))
    assert {(row["run"], row["set"]) for row in rows} == {("zeroshot", a), ("zeroshot (on_two)", b),
                                                          ("zeroshot (on_four_again)", a)}
    assert {row["samples"] for row in rows if row["set"] == b} == {"6"}  # paired on its own data only
    same = report_runs([runs[0], runs[2]], tmp_path / "same")  # the same data: one column, no note
    assert "| method | folder | average |" in same and "Note:" not in same


def test_resume_refuses_other_data_and_accepts_a_run_saved_without_a_fingerprint(tmp_path, checkpoint, capsys):
    data = random_images(tmp_path / "tree", ["cat", "dog"], per_class=2)
    out = tmp_path / "out"
    assert main(run_args(data, checkpoint, out, "zeroshot")) == 0
    random_images(data, ["fox"], per_class=2)
    capsys.readouterr()
    assert main(run_args(data, checkpoint, out, "zeroshot", "--resume")) == 2
    err = capsys.readouterr().err
    assert "holds a run on other data for folder (saved vs now: classes 2 vs 3, images 4 vs 6)" in err
    assert err.count("\n") == 1
    config = json.loads((out / "config.json").read_text())
    del config["datasets"]["folder"]["fingerprint"]  # as a run saved before fingerprints
    (out / "config.json").write_text(json.dumps(config))
    assert main(run_args(data, checkpoint, out, "zeroshot", "--resume")) == 0


def details_row(summary: str) -> str:
    """The per-set line of a summary's details table: set, samples, skipped, top-1, top-5, ECE."""
    return next(line for line in summary.splitlines() if line.startswith("| folder | 3 | 0 |"))


def test_ece_is_reported_only_for_scores_that_are_probabilities(tree, checkpoint, tmp_path):
    for method in ("zero", "zeroshot"):
        assert main(run_args(tree, checkpoint, tmp_path / method, method, "--limit", "3", "--hp", "precision=fp32")) == 0
    zero = (tmp_path / "zero" / "summary.md").read_text()
    assert "- ECE not reported for zero: its scores are not probabilities (e.g. vote counts)" in zero
    assert details_row(zero).endswith("| — |")
    assert [row["ece"] for row in csv.DictReader(open(tmp_path / "zero" / "summary.csv"))] == [""]
    assert json.loads((tmp_path / "zero" / "config.json").read_text())["method"]["calibrated"] is False
    zeroshot = (tmp_path / "zeroshot" / "summary.md").read_text()
    assert "ECE not reported" not in zeroshot and "—" not in details_row(zeroshot)
    ece = [row["ece"] for row in csv.DictReader(open(tmp_path / "zeroshot" / "summary.csv"))]
    assert len(ece) == 1 and 0 <= float(ece[0]) <= 100
    report = report_runs([tmp_path / "zero", tmp_path / "zeroshot"], tmp_path / "report")
    assert "Note: ECE not reported for zero: its scores are not probabilities" in report
    assert {row["method"]: row["ece"] for row in csv.DictReader(open(tmp_path / "report" / "summary.csv"))} == {
        "zero": "", "zeroshot": ece[0]}


HOLD_THE_LOCK = ("import sys, time; from pathlib import Path; from mintclip.engine.run import lock_output; "
                 "lock = lock_output(Path(sys.argv[1])); print('locked', flush=True); time.sleep(600)")


def test_a_folder_in_use_is_refused_and_a_dead_runs_lock_blocks_nothing(tree, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(run_args(tree, checkpoint, out, "zeroshot", "--limit", "4")) == 0
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(out)], cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"locked\n"  # as a run still going would hold it
        before = files_of(out)
        capsys.readouterr()
        for extra in ([], ["--resume"]):
            assert main(run_args(tree, checkpoint, out, "zeroshot", "--limit", "4", *extra)) == 2
            err = capsys.readouterr().err
            assert f"{out} is in use by another mintclip run (pid {holder.pid} on " in err, err
            assert "wait for it or choose another --out" in err and err.count("\n") == 1
        assert files_of(out) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert f"pid {holder.pid} " in (out / ".lock").read_text()  # left behind by the dead process
    assert main(run_args(tree, checkpoint, out, "zeroshot", "--limit", "4", "--resume")) == 0


def test_a_torchrun_job_into_a_folder_in_use_stops_on_every_process(tree, checkpoint, tmp_path):
    """Rank 0 holds the lock for the job and tells the others when it cannot: none waits for it forever."""
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(out)], cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"locked\n"
        job = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                              "-m", "mintclip", *run_args(tree, checkpoint, out, "zeroshot")],
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert job.returncode != 0
    assert job.stderr.count(f"mintclip: error: {out} is in use by another mintclip run (pid {holder.pid} ") == 2
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_two_runs_started_together_into_one_folder(tree, checkpoint, tmp_path):
    out = tmp_path / "out"
    code = ("import tests.engine.online_toy as t; t.RunningMeanMethod.delay = 0.1; import sys; "
            "from mintclip.cli import main; sys.exit(main(sys.argv[1:]))")
    runs = [subprocess.Popen([sys.executable, "-c", code, *run_args(tree, checkpoint, out, "online_toy")], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    done = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    assert sorted(code for code, _ in done) == [0, 2], done
    refused = next(err for code, err in done if code == 2)
    assert "is in use by another mintclip run" in refused or "holds a run already" in refused
    assert refused.count("\n") == 1


def test_run_log_holds_the_settings_results_warnings_and_errors(tree, checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "out"
    write = RecordWriter.write

    def fail_on_the_third(self, record):
        if self.path.read_bytes().count(b"\n") == 2:
            import warnings

            warnings.warn("the third record is trouble")
            raise RuntimeError("disk on fire")
        write(self, record)

    monkeypatch.setattr(RecordWriter, "write", fail_on_the_third)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError):
        main(run_args(tree, checkpoint, out, "zeroshot", "--limit", "4"))
    log = (out / "run.log").read_text()
    assert "mintclip run: zeroshot (episodic) on cpu" in log
    assert "warning: UserWarning: the third record is trouble" in log
    assert log.splitlines()[-1].endswith("error: RuntimeError: disk on fire")
    monkeypatch.setattr(RecordWriter, "write", write)
    assert main(run_args(tree, checkpoint, out, "zeroshot", "--limit", "4", "--resume")) == 0
    log = (out / "run.log").read_text()
    resumed = log[log.index("---- resumed ----"):]
    assert "mintclip run: zeroshot" in resumed and "error" not in resumed
    assert "folder seed 0: top-1 " in resumed and "(4 samples scored, 0 skipped)" in resumed
    assert resumed.splitlines()[-1].endswith(f"done: wrote {out / 'summary.md'} and {out / 'summary.csv'}")
