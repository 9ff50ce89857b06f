"""`mintclip info` as a user runs it: the installed console script, one line per problem."""

import argparse
import contextlib
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import save_file

import mintclip
from mintclip.cli import main
from tests.helpers import tiny_clip


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
    assert out[1] == "    classes: n01498041 -> stingray, n01531178 -> goldfinch, n01534433 -> junco, ... (200)"
    assert out[2].startswith("V: PROBLEM: ") and out[3] == "1 of 2 sets ready"
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


def test_help_and_version_import_no_torch():
    code = ("import sys; from mintclip.cli import main\n"
            "for argv in (['--help'], ['--version']):\n"
            "    try: main(argv)\n"
            "    except SystemExit: pass\n"
            "print(sorted(m for m in ('torch', 'PIL', 'numpy') if m in sys.modules))")
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert printed.splitlines()[-1] == "[]"


def every_parser():
    """The top-level parser and every sub-command's, with their options added."""
    from mintclip.cli import build_parser

    parser = build_parser()
    found = [parser]
    for current in found:  # grows as sub-commands are found
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    with contextlib.suppress(SystemExit):  # parsing adds its options; required ones are missing
                        sub.parse_known_args([])
                    found.append(sub)
    return found


def test_every_option_of_every_command_says_what_it_is(capsys):
    parsers = every_parser()
    assert {p.prog for p in parsers} >= {"mintclip run", "mintclip bench", "mintclip shiftbench train"}
    for parser in parsers:
        for action in parser._actions:
            assert action.help, f"{parser.prog} {action.option_strings or action.dest} has no help"
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    from mintclip.adapt import available_methods
    assert all(name in help_text for name in available_methods())  # the list comes from the registry
    assert "(default: 50)" in help_text  # --save-every


@pytest.mark.parametrize("flag, value", [("--limit", "-5"), ("--limit", "0"), ("--workers", "-1"),
                                         ("--save-every", "0"), ("--seeds", "-1"), ("--seeds", "0,0"),
                                         ("--batch-images", "0"), ("--online-shards", "0")])
def test_numbers_out_of_range_are_refused_before_any_work(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as stopped:
        main(["run", str(tmp_path), "--test_sets", "folder", "--method", "zeroshot", "--weights", "w.pt",
              "--out", str(tmp_path / "out"), flag, value])
    assert stopped.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"mintclip run: error: argument {flag}") and value in last
    assert not (tmp_path / "out").exists()


def test_seeds_are_one_comma_list_so_the_data_root_is_not_swallowed(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--seeds", "0", "1", "DATA", "--test_sets", "folder", "--method", "zeroshot", "--weights", "w"])
    assert "unrecognized arguments: DATA" in capsys.readouterr().err  # "1" was read as the data root


@pytest.mark.parametrize("extra, expected", [
    (["--config", "missing.yaml"], "--config missing.yaml: cannot read it"),
    (["--config", "broken.yaml"], "--config broken.yaml: not valid YAML at line 3"),
    (["--coop", "missing.pth"], "--coop missing.pth: no such file"),
    (["--hp", "steps=abc"], "hyper-parameter steps='abc': expected an integer"),
    (["--hp", "steps"], "--hp 'steps': expected key=value"),
])
def test_unusable_files_and_values_are_one_line(tmp_path, capsys, monkeypatch, extra, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.yaml").write_text("steps: 1\nlr: [0.1\n")
    assert main(["run", str(tmp_path), "--test_sets", "folder", "--method", "tpt", "--weights", "w.pt",
                 "--out", "out", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mintclip: error: ") and expected in err
    assert not (tmp_path / "out").exists()


def test_info_reports_every_path_even_after_a_bad_one(tmp_path, capsys):
    mintclip.save_clip(tiny_clip("vit", act="gelu"), tmp_path / "tiny.safetensors")
    (tmp_path / "notes.txt").write_text("not weights")
    assert main(["info", str(tmp_path / "notes.txt"), str(tmp_path / "tiny.safetensors")]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "notes.txt" in captured.err
    assert "format         safetensors" in captured.out
