"""`mintclip run` end to end on a tiny model and tiny generated image trees: records, summary, resume."""

import json
import subprocess
import sys

import pytest

from mintclip.adapt import available_methods
from mintclip.cli import main, original_main
from mintclip.engine.records import read_records
from mintclip.engine.run import cxx_compiler
from mintclip.engine.train_prompts import PromptTrainingRun, train_prompts
from tests.engine.online_toy import RunningMeanMethod
from tests.helpers import ROOT, comparable, kill_part_way, make_coop_set, random_images, run_args


TINY_MODEL_HP = {"mint": ["query_layers=0,1,2", "bank_size=16"]}  # the tiny ViT has 3 blocks


def trained_prompts(method, tree, checkpoint, out) -> str:
    """One quick epoch of `train-prompts` on the test tree itself: enough for a method that needs prompts."""
    return str(train_prompts(PromptTrainingRun(str(tree), "folder", str(checkpoint), str(out), method=method, shots=1,
                                               hp={"epochs": 1}, log=lambda _: None)))


@pytest.mark.parametrize("method", sorted(set(available_methods()) - {"online_toy"}))
def test_every_method_runs_end_to_end(method, tree, checkpoint, tmp_path, capsys):
    out = tmp_path / method
    hp = ["precision=fp32", *TINY_MODEL_HP.get(method, [])]
    if method in ("cocoop", "maple", "metatpt"):  # untrained, their extra parts are random: they refuse to run so
        key = "meta" if method == "metatpt" else "prompts"
        hp.append(f"{key}={trained_prompts(method, tree, checkpoint, tmp_path / 'prompts')}")
    assert main(run_args(tree, checkpoint, out, method, "--limit", "3", "--hp", *hp)) == 0
    records = read_records(out / "seed0" / "folder" / "records.jsonl")
    assert len(records) == 3
    for record in records:
        assert record.keys() == {"index", "path", "label", "top5", "zeroshot"}
        assert len(record["top5"]) == 3 and abs(sum(p for _, p in record["top5"]) - 1) < 1e-3
    config = json.loads((out / "config.json").read_text())
    assert config["method"]["name"] == method and config["model"]["act"] == "quick_gelu"
    assert config["datasets"]["folder"]["images"] == 12
    assert f"| {method} |" in (out / "summary.md").read_text()
    assert "top1" in (out / "summary.csv").read_text()
    assert f"| {method} |" in capsys.readouterr().out


def test_resume_after_kill_equals_an_uninterrupted_run(tmp_path, checkpoint):
    data = random_images(tmp_path / "tree", ["cat", "dog"], per_class=12)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main(run_args(data, checkpoint, whole, "tpt", "--hp", "n_views=8")) == 0
    args = run_args(data, checkpoint, killed, "tpt", "--hp", "n_views=8")
    kill_part_way(args, killed / "seed0" / "folder" / "records.jsonl", at_least=5)
    assert 5 <= len(read_records(killed / "seed0" / "folder" / "records.jsonl")) < 24
    assert main([*args, "--resume"]) == 0
    assert comparable(killed) == comparable(whole)


def test_online_state_resumes_exactly_across_sets(tmp_path, checkpoint):
    make_coop_set(tmp_path / "data" / "eurosat", ["Forest", "River"], "EuroSAT", "2750", per_class=8)
    make_coop_set(tmp_path / "data" / "dtd", ["banded", "zigzagged"], "DescribableTextures", "images", per_class=8)
    base = ["run", str(tmp_path / "data"), "--test_sets", "EuroSAT/DTD", "--method", "online_toy", "--weights",
            str(checkpoint), "--workers", "0", "--no-progress", "--save-every", "3"]
    prelude = "import tests.engine.online_toy as t; t.RunningMeanMethod.delay = 0.05; "
    subprocess.run([sys.executable, "-c", f"{prelude}import sys; from mintclip.cli import main; "
                    "sys.exit(main(sys.argv[1:]))", *base, "--out", str(tmp_path / "whole")], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    for stop_in, at_least in (("EuroSAT", 7), ("DTD", 5)):
        out = tmp_path / f"killed_in_{stop_in}"
        kill_part_way([*base, "--out", str(out)], out / "seed0" / stop_in / "records.jsonl", at_least, prelude)
        subprocess.run([sys.executable, "-c", f"{prelude}import sys; from mintclip.cli import main; "
                        "sys.exit(main(sys.argv[1:]))", *base, "--out", str(out), "--resume"], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        assert comparable(out) == comparable(tmp_path / "whole"), stop_in


@pytest.mark.parametrize("method", ["tda", "dynaprompt"])
def test_online_methods_resume_exactly_after_a_kill(method, tmp_path, checkpoint):
    data = random_images(tmp_path / "tree", ["cat", "dog", "fox"], per_class=6)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    args = ["--hp", "precision=fp32", *{"dynaprompt": ["n_views=8"]}.get(method, []), "--save-every", "3"]
    assert main(run_args(data, checkpoint, whole, method, *args)) == 0
    slow = (f"import time, mintclip.adapt as a; cls = a.available_methods()[{method!r}]; p = cls.predict; "
            "cls.predict = lambda self, views: (time.sleep(0.05), p(self, views))[1]; ")
    records = killed / "seed0" / "folder" / "records.jsonl"
    kill_part_way(run_args(data, checkpoint, killed, method, *args), records, at_least=7, prelude=slow)
    assert 7 <= len(read_records(records)) < 18
    assert main(run_args(data, checkpoint, killed, method, *args, "--resume")) == 0
    assert comparable(killed) == comparable(whole)


def test_online_sub_streams_are_independent_and_resume_exactly(tmp_path, checkpoint):
    """--online-shards 2: positions 0, 2, 4, ... and 1, 3, 5, ... are two streams from a fresh state each;
    a kill part-way and --resume give the records of an uninterrupted run; K = 1 is the single stream."""
    data = random_images(tmp_path / "tree", ["cat", "dog"], per_class=6)
    prelude = "import tests.engine.online_toy as t; t.RunningMeanMethod.delay = 0.05; "

    def args(out, *extra):
        return run_args(data, checkpoint, tmp_path / out, RunningMeanMethod.name, "--save-every", "2", *extra)

    assert main(args("single")) == 0
    assert main(args("one_sub_stream", "--online-shards", "1")) == 0
    assert comparable(tmp_path / "one_sub_stream") == comparable(tmp_path / "single")
    assert main(args("whole", "--online-shards", "2")) == 0
    whole = read_records(tmp_path / "whole" / "seed0" / "folder" / "records.jsonl")
    assert [r["index"] for r in whole] == [r["index"] for r in read_records(tmp_path / "single" / "seed0" / "folder"
                                                                           / "records.jsonl")]
    single = read_records(tmp_path / "single" / "seed0" / "folder" / "records.jsonl")
    assert whole[0] == single[0]  # sub-stream 0 starts from the fresh state the single stream starts from
    assert whole[2:] != single[2:]  # later images see only their own sub-stream's memory
    assert "2 independent sub-streams" in (tmp_path / "whole" / "summary.md").read_text()
    killed = tmp_path / "killed"
    kill_part_way(args("killed", "--online-shards", "2"), killed / "seed0" / "folder" / "records.stream1-of-2.jsonl",
                  at_least=3, prelude=prelude)
    assert main(args("killed", "--online-shards", "2", "--resume")) == 0
    assert comparable(killed) == comparable(tmp_path / "whole")
    assert not list(killed.glob("seed0/folder/records.stream*"))


def test_images_adapted_in_batches_give_the_predictions_of_one_at_a_time(tmp_path, checkpoint):
    data = random_images(tmp_path / "tree", ["cat", "dog"], per_class=5)
    (data / "dog" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # a PNG by its first bytes, unreadable
    args = ["--hp", "precision=fp32", "n_views=8"]
    assert main(run_args(data, checkpoint, tmp_path / "one", "tpt", *args)) == 0
    assert main(run_args(data, checkpoint, tmp_path / "three", "tpt", *args, "--batch-images", "3")) == 0
    one, three = (read_records(tmp_path / out / "seed0" / "folder" / "records.jsonl") for out in ("one", "three"))
    assert [r.get("skipped") for r in three] == [r.get("skipped") for r in one] and len(three) == 10
    for a, b in zip(one, three):
        assert (a["index"], a.get("zeroshot")) == (b["index"], b.get("zeroshot"))
        if "top5" in a:
            assert [c for c, _ in a["top5"]] == [c for c, _ in b["top5"]]
            assert all(abs(p - q) < 1e-5 for (_, p), (_, q) in zip(a["top5"], b["top5"]))
    timing = json.loads((tmp_path / "three" / "seed0" / "folder" / "timing.json").read_text())
    assert timing["images"] == 9  # the unreadable image took no adaptation


@pytest.mark.skipif(cxx_compiler() is None, reason="torch.compile on a CPU needs a C++ compiler")
def test_a_compiled_image_encoder_gives_the_same_predictions(tree, checkpoint, tmp_path):
    args = ["--limit", "3", "--hp", "precision=fp32", "n_views=8"]
    assert main(run_args(tree, checkpoint, tmp_path / "eager", "tpt", *args)) == 0
    assert main(run_args(tree, checkpoint, tmp_path / "compiled", "tpt", *args, "--compile")) == 0
    eager, compiled = (read_records(tmp_path / out / "seed0" / "folder" / "records.jsonl") for out in ("eager", "compiled"))
    for a, b in zip(eager, compiled, strict=True):
        assert [c for c, _ in a["top5"]] == [c for c, _ in b["top5"]] and a["zeroshot"] == b["zeroshot"]
        assert all(abs(p - q) < 1e-4 for (_, p), (_, q) in zip(a["top5"], b["top5"]))
    assert json.loads((tmp_path / "compiled" / "config.json").read_text())["run"]["compile"] is True


def test_each_image_goes_through_the_image_encoder_once_for_a_one_view_method(tree, checkpoint, tmp_path, monkeypatch):
    """The record's zero-shot prediction reuses the method's view-0 features instead of encoding again."""
    from mintclip.model import CLIP

    calls = []
    encode_image = CLIP.encode_image
    monkeypatch.setattr(CLIP, "encode_image", lambda self, images: (calls.append(len(images)),
                                                                     encode_image(self, images))[1])
    assert main(run_args(tree, checkpoint, tmp_path / "out", "zeroshot", "--limit", "5")) == 0
    assert calls == [1] * 5
    assert all("zeroshot" in r for r in read_records(tmp_path / "out" / "seed0" / "folder" / "records.jsonl"))


def test_a_batched_run_resumes_at_a_group_boundary(tmp_path, checkpoint):
    """A kill while a group of 4 is being written leaves 6 records: resume redoes the whole group 4-7."""
    data = random_images(tmp_path / "tree", ["cat", "dog"], per_class=6)
    args = ["--hp", "precision=fp32", "n_views=8", "--batch-images", "4"]
    for out in ("whole", "killed"):
        assert main(run_args(data, checkpoint, tmp_path / out, "tpt", *args)) == 0
    records = tmp_path / "killed" / "seed0" / "folder" / "records.jsonl"
    records.write_text("".join(records.read_text().splitlines(keepends=True)[:6]))
    assert main(run_args(data, checkpoint, tmp_path / "killed", "tpt", *args, "--resume")) == 0
    assert comparable(tmp_path / "killed") == comparable(tmp_path / "whole")


def test_mistakes_fail_before_any_work(tree, checkpoint, tmp_path, capsys):
    cases = [
        (run_args(tree, checkpoint, tmp_path / "a", "tpt")[:3] + ["Q", *run_args(tree, checkpoint, tmp_path / "a", "tpt")[4:]],
         "unknown set id 'Q'"),
        (["run", str(tmp_path), "--test_sets", "A", "--method", "tpt", "--weights", str(checkpoint), "--out",
          str(tmp_path / "b"), "--no-progress"], "no ImageNet-A here"),
        (run_args(tree, tmp_path / "missing.pt", tmp_path / "c", "tpt"), "missing.pt: no such file"),
        (run_args(tree, checkpoint, tmp_path / "d", "nosuch"), "unknown method 'nosuch'"),
        (run_args(tree, checkpoint, tmp_path / "e", "tpt", "--hp", "lr=fast"), "lr='fast': expected a number"),
        (run_args(tree, checkpoint, tmp_path / "f", "mint", "--hp", "query_layers=3,7,11"),
         "need blocks that this 3-block ViT lacks"),
        (run_args(tree, checkpoint, tmp_path / "g", "tpt", "--online-shards", "2"), "needs an online method"),
        (run_args(tree, checkpoint, tmp_path / "h", "tda", "--batch-images", "4"), "1 for an online method"),
        *([(run_args(tree, checkpoint, tmp_path / "i", "tpt", "--compile"), "needs a C++ compiler")]
          if cxx_compiler() is None else []),
    ]
    for args, message in cases:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not list(tmp_path.glob("*/seed0"))
    out = tmp_path / "done"
    assert main(run_args(tree, checkpoint, out, "zeroshot", "--limit", "2")) == 0
    assert main(run_args(tree, checkpoint, out, "zeroshot", "--limit", "2")) == 2
    assert "holds a run already" in capsys.readouterr().err
    assert main(run_args(tree, checkpoint, out, "zeroshot", "--limit", "3", "--resume")) == 2
    assert "holds a different run" in capsys.readouterr().err


def test_an_output_folder_that_cannot_be_written_fails_first(tree, checkpoint, tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    assert main(run_args(tree, checkpoint, tmp_path / "a_file" / "out", "zeroshot")) == 2
    assert "cannot write the run's output there" in capsys.readouterr().err


def test_a_full_disk_is_one_line_and_resume_finishes_the_run(tree, checkpoint, tmp_path, capsys, monkeypatch):
    import errno

    from mintclip.engine.records import RecordWriter

    write = RecordWriter.write

    def fill_up(self, record):
        if len(read_records(self.path)) == 5:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        write(self, record)

    monkeypatch.setattr(RecordWriter, "write", fill_up)
    assert main(run_args(tree, checkpoint, tmp_path / "out", "zeroshot")) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "--resume" in err and err.count("\n") == 1
    assert len(read_records(tmp_path / "out" / "seed0" / "folder" / "records.jsonl")) == 5
    monkeypatch.setattr(RecordWriter, "write", write)
    assert main(run_args(tree, checkpoint, tmp_path / "out", "zeroshot", "--resume")) == 0
    assert main(run_args(tree, checkpoint, tmp_path / "whole", "zeroshot")) == 0
    assert comparable(tmp_path / "out") == comparable(tmp_path / "whole")


def test_seeds_give_mean_and_std(tree, checkpoint, tmp_path):
    out = tmp_path / "seeds"
    assert main(run_args(tree, checkpoint, out, "zeroshot", "--seeds", "0,1")) == 0
    assert "±" in (out / "summary.md").read_text()
    orders = [[r["index"] for r in read_records(out / f"seed{s}" / "folder" / "records.jsonl")] for s in (0, 1)]
    assert sorted(orders[0]) == sorted(orders[1]) == list(range(12)) and orders[0] != orders[1]


def test_each_seed_is_its_own_stream_from_a_fresh_state(tree, checkpoint, tmp_path):
    """An online method's memory must not flow from seed 0 into seed 1: seed 1 run alone is the same."""

    for out, seeds in (("both", ["0,1"]), ("alone", ["1"])):
        assert main(run_args(tree, checkpoint, tmp_path / out, RunningMeanMethod.name, "--seeds", *seeds)) == 0
    assert ((tmp_path / "both" / "seed1" / "folder" / "records.jsonl").read_bytes()
            == (tmp_path / "alone" / "seed1" / "folder" / "records.jsonl").read_bytes())


def test_the_seed_repositorys_command_line(tree, checkpoint, tmp_path):
    out = tmp_path / "seed_cli"
    assert original_main([str(tree), "--test_sets", "folder", "-a", "ViT-B/16", "--weights", str(checkpoint),
                      "--resolution", "224", "-j", "0", "-b", "16", "--lr", "0.005", "--selection_p", "0.25",
                      "--tta_steps", "1", "--n_ctx", "4", "--ctx_init", "a_photo_of_a", "--seed", "0", "-p", "10",
                      "--out", str(out), "--limit", "2", "--no-progress", "--method", "tpt"]) == 0
    hp = json.loads((out / "config.json").read_text())["method"]["hyper_parameters"]
    assert hp["ctx_init"] == "a photo of a" and hp["selection"] == 0.25 and hp["steps"] == 1


def test_the_seed_command_line_runs_mint_by_default(tree, checkpoint, tmp_path):
    out = tmp_path / "seed_mint"
    coop = tmp_path / "coop.pth"
    import torch
    torch.save({"state_dict": {"ctx": torch.randn(4, 64)}}, coop)
    assert original_main([str(tree), "--test_sets", "folder", "--weights", str(checkpoint), "--load", str(coop), "-b", "8",
                      "--out", str(out), "--limit", "2", "--no-progress", "-j", "0",
                      "--hp", "query_layers=0,1,2", "bank_size=16"]) == 0
    config = json.loads((out / "config.json").read_text())["method"]
    assert config["name"] == "mint" and config["hyper_parameters"]["coop"] == str(coop)
    assert f"CoOp context from {coop}" in (out / "summary.md").read_text()
    assert (out / "seed0" / "folder" / "diagnostics_usage.png").is_file() and (out / "seed0" / "folder" / "diagnostics.safetensors").is_file()


def test_the_same_command_gives_byte_identical_records_on_cpu(tree, checkpoint, tmp_path):
    for out in ("first", "second"):
        assert main(run_args(tree, checkpoint, tmp_path / out, "mint", "--limit", "4", "--hp", "precision=fp32",
                             *TINY_MODEL_HP["mint"])) == 0
    first = (tmp_path / "first" / "seed0" / "folder" / "records.jsonl").read_bytes()
    assert first == (tmp_path / "second" / "seed0" / "folder" / "records.jsonl").read_bytes()
    assert json.loads((tmp_path / "first" / "seed0" / "folder" / "timing.json").read_text())["images"] == 4


def test_a_non_finite_loss_skips_the_update_counts_it_and_poisons_nothing(tree, checkpoint, tmp_path, monkeypatch):
    from mintclip.adapt.mint import MINT

    calls = {"n": 0}
    loss = MINT.loss

    def nan_on_the_second_image(self, logits, distance):  # 3 steps per image: calls 4, 5, 6 are image 2's
        calls["n"] += 1
        value = loss(self, logits, distance)
        return value * float("nan") if calls["n"] in (4, 5, 6) else value

    monkeypatch.setattr(MINT, "loss", nan_on_the_second_image)
    assert main(run_args(tree, checkpoint, tmp_path / "out", "mint", "--limit", "4", "--hp", "precision=fp32",
                         *TINY_MODEL_HP["mint"])) == 0
    records = read_records(tmp_path / "out" / "seed0" / "folder" / "records.jsonl")
    assert [r.get("skipped_updates", 0) for r in records] == [0, 3, 0, 0]
    assert all("top5" in r for r in records)
    from safetensors.torch import load_file

    bank = load_file(str(tmp_path / "out" / "seed0" / "folder" / "diagnostics.safetensors"))
    assert all(t.isfinite().all() for t in bank.values())


def test_domains_as_image_folders_under_one_root(tmp_path, checkpoint, capsys):
    for domain in ("sketch", "cartoon"):
        random_images(tmp_path / "data" / domain, ["cat", "dog"], per_class=2, seed=len(domain))
    args = run_args(tmp_path / "data", checkpoint, tmp_path / "out", "zeroshot")
    args[args.index("folder")] = "folder:sketch/folder:cartoon"
    assert main(args) == 0
    assert len(read_records(tmp_path / "out" / "seed0" / "cartoon" / "records.jsonl")) == 4
    assert "| method | sketch | cartoon | average |" in (tmp_path / "out" / "summary.md").read_text()
    args[args.index("folder:sketch/folder:cartoon")] = "folder:sketch/folder:sketch"
    args[args.index("--out") + 1] = str(tmp_path / "twice")
    assert main(args) == 2
    assert "a set is named twice" in capsys.readouterr().err


def test_report_combines_runs_and_plots_the_stream(tree, checkpoint, tmp_path, capsys):
    from mintclip.engine.report import stream_accuracy

    for method in ("zeroshot", "tda"):
        assert main(run_args(tree, checkpoint, tmp_path / method, method)) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "zeroshot"), str(tmp_path / "tda"), "--out", str(tmp_path / "rep"),
                 "--block", "5"]) == 0
    table = (tmp_path / "rep" / "summary.md").read_text()
    assert "| zeroshot |" in table and "| tda |" in table
    assert (tmp_path / "rep" / "stream_folder.png").is_file()
    records = [{"label": 0, "top5": [[0, 0.9]]}] * 3 + [{"label": 1, "top5": [[0, 0.9]]}] * 2 + [{"skipped": "x"}]
    assert stream_accuracy(records, block=2) == [100.0, 50.0, 0.0]
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "rep2")]) == 2
    assert "not a mintclip run folder" in capsys.readouterr().err
