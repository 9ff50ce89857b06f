"""The tools a session runs by hand: the prepared GPU check and the table of bench figures."""

import json
import subprocess
import sys

from mintclip.bench import Timing, to_json
from tests.helpers import ROOT


def test_the_gpu_check_lists_what_it_would_run_and_exits_0_without_a_gpu():
    done = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--dry-run", "/tmp/out"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    steps = done.stdout.splitlines()
    assert steps[0] == "python -m pytest -q -m cuda tests/test_cuda.py"
    bench = [s for s in steps if " bench " in s]
    assert len(bench) == 3 and all("--arch ViT-B/16 --classes 1000" in s and "--gpu 0" in s for s in bench)
    assert "--compile" in bench[1] and "--batch-images 8" in bench[2] and steps[-1].endswith("--out /tmp/out/bench.md")


def test_bench_figures_of_several_runs_make_one_table(tmp_path):
    timing = Timing("tpt", "mintclip", 12.5, 12.0, 80.0, 900.0, "CUDA", "ViT-B/16", 16, batch_images=8)
    (tmp_path / "batch8.json").write_text(to_json([timing], {"arch": "ViT-B/16", "device_name": "NVIDIA H200"}))
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_table.py"), str(tmp_path / "batch8.json"),
                           "--out", str(tmp_path / "bench.md")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    table = (tmp_path / "bench.md").read_text()
    assert "| batch8 | tpt | mintclip | 12.5 | 80.00 | 900 | 8 | False |" in table
    assert json.dumps("NVIDIA H200") in table
