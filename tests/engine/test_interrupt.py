"""Ctrl-C during a run: one line that says what was kept and the command that continues, exit 130,
and `--resume` then gives exactly the records of an uninterrupted run."""

import shlex
import signal
import subprocess
import sys
import time

from mintclip.cli import main
from mintclip.engine.records import read_records
from tests.helpers import ROOT, random_images


def test_ctrl_c_keeps_the_records_and_names_the_resume_command(tmp_path, checkpoint):
    data = random_images(tmp_path / "tree", ["cat", "dog"], per_class=12)
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    common = ["--test_sets", "folder", "--method", "tpt", "--weights", str(checkpoint), "--workers", "0",
              "--no-progress", "--hp", "n_views=8"]
    assert main(["run", str(data), *common, "--out", str(whole)]) == 0
    args = ["run", str(data), *common, "--out", str(stopped)]
    records = stopped / "seed0" / "folder" / "records.jsonl"
    code = "import sys; from mintclip.cli import main; sys.exit(main(sys.argv[1:]))"
    process = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (records.is_file() and records.read_bytes().count(b"\n") >= 3):
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    kept = len(read_records(records))
    assert 3 <= kept < 24
    assert err.count("\n") == 1 and err.startswith(f"mintclip: interrupted: {kept} record(s) kept in {stopped}")
    resume = shlex.split(err.split("continue where it stopped with: ")[1])
    assert resume[0] == "mintclip" and resume[-1] == "--resume"
    assert main(resume[1:]) == 0
    assert (stopped / "summary.csv").read_text() == (whole / "summary.csv").read_text()
    assert [r["top5"] for r in read_records(records)] == [r["top5"] for r in read_records(
        whole / "seed0" / "folder" / "records.jsonl")]
