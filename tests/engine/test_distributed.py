"""Runs under torchrun with 2 CPU processes (gloo), as CI can: the sharded run equals the single one,
a killed job resumes, corrupt images are recorded skips, online methods take whole sets."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mintclip.cli import main
from mintclip.engine.records import read_records
from tests.helpers import random_images, run_args


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "mintclip", *args]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Two sets of 9 images; one image of each set is corrupt."""
    root = tmp_path_factory.mktemp("data")
    for name, seed in (("day", 1), ("night", 2)):
        random_images(root / name, ["cat", "dog", "fox"], per_class=3, seed=seed)
        (root / name / "dog" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def sharded_args(data, checkpoint, out, method, *extra):
    args = run_args(data, checkpoint, out, method, *extra)
    args[args.index("folder")] = "folder:day/folder:night"
    return args


def outputs(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("seed0/*/records.jsonl"))} | {
        "summary.csv": (out / "summary.csv").read_bytes()}


def test_two_processes_write_exactly_the_records_of_one(data, checkpoint, tmp_path):
    args = ["--hp", "precision=fp32"]
    assert main(sharded_args(data, checkpoint, tmp_path / "single", "tpt", *args)) == 0
    done = subprocess.run(torchrun(sharded_args(data, checkpoint, tmp_path / "two", "tpt", *args)), env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert outputs(tmp_path / "two") == outputs(tmp_path / "single")
    records = read_records(tmp_path / "two" / "seed0" / "night" / "records.jsonl")
    assert len(records) == 9 and sum("skipped" in r for r in records) == 1
    assert not list((tmp_path / "two").glob("seed0/*/records.rank*"))  # shards merged and removed
    assert done.stdout.count("Top-1 accuracy") == 1  # rank 0 speaks for the job


SLOW_ZERO = """import sys, time
from mintclip.adapt.zero import Zero
from mintclip.cli import main
predict = Zero.predict
Zero.predict = lambda self, views: (time.sleep(0.2), predict(self, views))[1]  # time to kill it part-way
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_job_resumes_to_the_same_records(data, checkpoint, tmp_path):
    args = sharded_args(data, checkpoint, tmp_path / "two", "zero", "--hp", "precision=fp32")
    (tmp_path / "slow_zero.py").write_text(SLOW_ZERO)
    command = torchrun(args)
    command[command.index("-m", 3):command.index("-m", 3) + 2] = [str(tmp_path / "slow_zero.py")]
    job = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    out = tmp_path / "two"
    shard = out / "seed0" / "day" / "records.rank1-of-2.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and len(read_records(shard)) < 2 and job.poll() is None:
        time.sleep(0.02)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert not (out / "seed0" / "day" / "records.jsonl").exists()  # killed before the first merge
    done = subprocess.run(torchrun([*args, "--resume"]), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert main(sharded_args(data, checkpoint, tmp_path / "single", "zero", "--hp", "precision=fp32")) == 0
    assert outputs(out) == outputs(tmp_path / "single")


def test_online_methods_take_whole_sets(data, checkpoint, tmp_path):
    out = tmp_path / "tda"
    done = subprocess.run(torchrun(sharded_args(data, checkpoint, out, "tda")), env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("day", "night"):
        assert len(read_records(out / "seed0" / name / "records.jsonl")) == 9
    assert (out / "seed0" / "state.rank0-of-2.pt").is_file() and (out / "seed0" / "state.rank1-of-2.pt").is_file()
    assert "each took whole sets" in (out / "summary.md").read_text()


def test_online_sub_streams_depend_on_their_number_not_on_the_processes(data, checkpoint, tmp_path):
    args = ["--online-shards", "2", "--hp", "precision=fp32", "n_views=8", "query_layers=0,1,2", "bank_size=16"]
    assert main(sharded_args(data, checkpoint, tmp_path / "single", "mint", *args)) == 0
    done = subprocess.run(torchrun(sharded_args(data, checkpoint, tmp_path / "two", "mint", *args)), env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    diagnostics = {p.relative_to(tmp_path / "two"): p.read_bytes() for p in (tmp_path / "two").glob("seed0/*/diag*")}
    assert len(diagnostics) == 12  # day and night, per sub-stream: numbers, the bank, its usage chart
    assert all((tmp_path / "single" / name).read_bytes() == content for name, content in diagnostics.items())
    assert outputs(tmp_path / "two") == outputs(tmp_path / "single")
    assert (tmp_path / "two" / "seed0" / "state.stream1-of-2.pt").is_file()
    assert "2 independent sub-streams" in (tmp_path / "two" / "summary.md").read_text()


def test_two_nodes_write_exactly_the_records_of_one_process(data, checkpoint, tmp_path):
    """Two torchrun launchers with --nnodes 2 and their own --node_rank, as on two machines, meeting at a
    TCP address: each node's process has local rank 0 and its own global rank."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    args = sharded_args(data, checkpoint, tmp_path / "nodes", "tpt", "--hp", "precision=fp32", "n_views=8")
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
                               "--master_addr", "127.0.0.1", "--master_port", str(port), "--nproc_per_node", "1",
                               "-m", "mintclip", *args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for rank in (0, 1)]
    for node in nodes:
        _, err = node.communicate(timeout=300)
        assert node.returncode == 0, err[-2000:]
    assert main(sharded_args(data, checkpoint, tmp_path / "single", "tpt", "--hp", "precision=fp32", "n_views=8")) == 0
    assert outputs(tmp_path / "nodes") == outputs(tmp_path / "single")
    assert (tmp_path / "nodes" / "seed0" / "day" / "timing.rank1-of-2.json").is_file()
