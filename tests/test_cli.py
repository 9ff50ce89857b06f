"""`mintclip info` as a user runs it: the installed console script, one line per problem."""

import shutil
import subprocess
import sys

import pytest
from safetensors.torch import save_file

import mintclip
from mintclip.cli import main
from tests.conftest import tiny_clip


def test_info_describes_a_checkpoint(tmp_path, capsys):
    mintclip.save_clip(tiny_clip("vit", act="gelu"), tmp_path / "tiny.safetensors")
    assert main(["info", str(tmp_path / "tiny.safetensors")]) == 0
    out = capsys.readouterr().out
    for expected in ("format         safetensors", "ViT  width 128, 3 layers, 2 heads, patch 8", "embed dim      32",
                     "activation     gelu  (from mintclip metadata in the file)", "sha256         ",
                     "not a known checkpoint", "parameters     "):
        assert expected in out


def test_info_on_a_resnet_with_unstated_activation(tmp_path, capsys):
    save_file(tiny_clip("resnet").state_dict(), str(tmp_path / "rn.safetensors"))
    assert main(["info", str(tmp_path / "rn.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "ModifiedResNet  width 16, stages [1, 2, 1, 1]" in out
    assert "activation     unknown" in out


def test_info_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not weights")
    assert main(["info", str(tmp_path / "notes.txt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mintclip: error: ") and "not a checkpoint" in err


@pytest.mark.skipif(shutil.which("mintclip") is None, reason="console script not installed")
def test_console_script_and_module_entry_points():
    help_text = subprocess.run(["mintclip", "--help"], capture_output=True, text=True, check=True).stdout
    assert "info" in help_text
    version = subprocess.run([sys.executable, "-m", "mintclip", "--version"], capture_output=True, text=True)
    assert version.stdout.strip() == f"mintclip {mintclip.__version__}"


def test_check_data_lists_sets_and_problems(tmp_path, capsys):
    from tests.data.test_catalog import ASSETS, make_tree

    make_tree(tmp_path / "imagenet-a", ASSETS["imagenet_a_wnids"])
    assert main(["check-data", str(tmp_path), "--test_sets", "A/V"]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("A: 200 images, 200 classes, layout imagenet-a (TPT, MINT, DynaPrompt, ZERO)")
    assert out[1].startswith("V: PROBLEM: ") and out[2] == "1 of 2 sets ready"
    assert main(["check-data", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1 of 15 sets ready"


def test_bench_times_both_paths_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--method", "tpt,zeroshot", "--arch", "micro", "--classes", "5", "--views", "8",
                 "--images", "1", "--warmup", "0", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tpt: reference / mintclip = " in printed and "zeroshot   mintclip" in printed
    import json
    results = json.loads(out.read_text())["results"]
    assert [(r["method"], r["path"]) for r in results] == [("tpt", "mintclip"), ("tpt", "reference"),
                                                            ("zeroshot", "mintclip")]
    assert all(r["ms_per_image"] > 0 for r in results)
