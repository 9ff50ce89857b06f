"""Stream scenarios (docs/protocols.md § Stream scenarios): each order against one worked by hand, runs
under them (episodic records independent of the order, an online state that flows across switches,
exact resume inside a scenario), open-set scoring, and the refusals."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mintclip.adapt.mint import MINT
from mintclip.adapt.prompts import encode_class_prompts
from mintclip.cli import main
from mintclip.data import ViewMaker, min_side_for, open_dataset
from mintclip.data.loader import DecodedImages
from mintclip.engine import RunConfig, RunError
from mintclip.engine.distributed import Shard
from mintclip.engine.online import read_state
from mintclip.engine.records import atomic_torch_save, read_records
from mintclip.engine.report import auroc, detection_metrics, fpr_at_tpr, metrics, report_runs
from mintclip.engine.run import check_scenario
from mintclip.engine.scenarios import (IID, Cyclic, Dirichlet, Item, Mixed, OpenSet, Prefix, Sequential, chunks,
                                       dirichlet_order, first_per_set, open_set_count, open_set_order, parse_scenario,
                                       seeded_order, set_positions)
from mintclip.model import load_clip
from tests.engine.online_toy import RunningMeanMethod
from tests.helpers import comparable, kill_part_way, random_images, run_args

MINT_HP = ["--hp", "precision=fp32", "n_views=8", "query_layers=0,1,2", "bank_size=16"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """day and night: the same three classes; other: two other classes; ood: images of neither."""
    root = tmp_path_factory.mktemp("sets")
    random_images(root / "day", ["cat", "dog", "fox"], per_class=2, seed=1)
    random_images(root / "night", ["cat", "dog", "fox"], per_class=2, seed=2)
    random_images(root / "other", ["ant", "bee"], per_class=3, seed=3)
    random_images(root / "ood", ["owl", "yak"], per_class=2, seed=4)
    return root


def args_for(root, checkpoint, out, method, sets, *extra):
    args = run_args(root, checkpoint, out, method, *extra)
    args[args.index("folder")] = sets
    return args


def labels(n):
    return [0] * n


# -- the orders, worked by hand ---------------------------------------------------------------------------

def test_iid_and_sequential_are_each_sets_seeded_order_one_set_after_another():
    a, b = seeded_order(5, 0), seeded_order(3, 0)
    assert a == [4, 0, 1, 3, 2] and b == [2, 0, 1]  # torch.randperm from a generator seeded with 0
    expected = [Item("A", i) for i in a] + [Item("B", i) for i in b]
    for scenario in (IID(), Sequential(), Cyclic(1)):
        assert scenario.stream({"A": labels(5), "B": labels(3)}, 0) == expected


def test_prefix_takes_the_first_images_of_each_seeded_order():
    stream = Prefix(2).stream({"A": labels(5), "B": labels(1)}, 0)
    assert stream == [Item("A", 4), Item("A", 0), Item("B", 0)]  # B has fewer: all of it


def test_cyclic_cuts_each_set_into_chunks_visited_in_rounds():
    assert chunks(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]  # the first 7 mod 3 chunks one longer
    assert chunks([8, 9], 3) == [[8], [9], []]
    a, b = [4, 0, 1, 3, 2], [2, 0, 1]  # the seeded orders of 5 and 3 images, seed 0
    stream = Cyclic(2).stream({"A": labels(5), "B": labels(3)}, 0)
    assert stream == ([Item("A", i) for i in a[:3]] + [Item("B", i) for i in b[:2]]
                      + [Item("A", i) for i in a[3:]] + [Item("B", i) for i in b[2:]])
    assert set_positions(stream) == [0, 1, 2, 0, 1, 3, 4, 2]


def test_mixed_is_one_seeded_permutation_of_every_set_index_pair():
    permutation = seeded_order(8, 0)
    assert permutation == [4, 0, 7, 3, 2, 5, 1, 6]
    pairs = [("A", i) for i in range(5)] + [("B", i) for i in range(3)]  # set by set, index by index
    stream = Mixed().stream({"A": labels(5), "B": labels(3)}, 0)
    assert [(item.set_id, item.index) for item in stream] == [pairs[k] for k in permutation]
    assert [(item.set_id, item.index) for item in stream][:3] == [("A", 4), ("A", 0), ("B", 2)]


class Scripted:
    """Draws of `dirichlet_order` set by the test: every shuffle reverses, proportions come from a list."""

    def __init__(self, proportions):
        self.proportions = list(proportions)

    def shuffle(self, x):
        x[:] = x[::-1]

    def dirichlet(self, alpha):
        assert len(alpha) == 2
        return np.array(self.proportions.pop(0))


def test_dirichlet_follows_the_reference_draw_by_draw():
    """Six images, indices 0-2 of class 0 and 3-5 of class 1, met in the order 5, 4, ..., 0: two classes,
    two chunks, each chunk to hold min(10, 6 // 4) = 1 image or more; a chunk holding N / C = 3 gets none.
    Draw 1: class 0 (positions 3, 4, 5, shuffled to 5, 4, 3) all to chunk 1; class 1's proportions, its
    only open chunk 0 given 0, sum to zero: drawn again. Draw 2: class 0 gets 0.7 -> cut at int(2.1) = 2:
    positions 5, 4 to chunk 0, 3 to chunk 1; class 1 (2, 1, 0) gets 0.1 -> cut at 0: all to chunk 1.
    Each chunk's class order, shuffled, is 1 then 0: chunk 0 = order[5], order[4]; chunk 1 = order[2],
    order[1], order[0] (class 1), order[3] (class 0)."""
    order = [5, 4, 3, 2, 1, 0]
    labels_by_index = [0, 0, 0, 1, 1, 1]
    rng = Scripted([[0.0, 1.0], [0.0, 1.0], [0.7, 0.3], [0.1, 0.9]])
    assert dirichlet_order(order, labels_by_index, 0.5, rng) == [0, 1, 3, 4, 5, 2]
    assert rng.proportions == []
    full = Scripted([[1.0, 0.0], [0.6, 0.4]])  # class 0 fills chunk 0, so class 1's 0.6 there is masked
    assert dirichlet_order(order, labels_by_index, 0.5, full) == [0, 1, 2, 3, 4, 5]


def test_dirichlet_draws_from_a_seeded_generator_and_correlates_labels():
    labels_by_index = [i % 3 for i in range(60)]
    first = Dirichlet(0.05).set_items("A", labels_by_index, 7, 0)
    assert first == Dirichlet(0.05).set_items("A", labels_by_index, 7, 0)
    assert sorted(item.index for item in first) == list(range(60))
    assert first == [Item("A", i) for i in dirichlet_order(seeded_order(60, 7), labels_by_index, 0.05,
                                                           np.random.RandomState(7))]
    changes = lambda items: sum(labels_by_index[a.index] != labels_by_index[b.index] for a, b in zip(items, items[1:]))
    assert changes(first) < changes(IID().set_items("A", labels_by_index, 7, 0)) / 3


def test_open_set_mixes_round_rho_n_images_at_seeded_positions():
    assert [open_set_count(n, rho) for n, rho in ((5, 0.5), (10, 0.25), (4, 0.1), (7, 1.0))] == [3, 3, 0, 7]
    # N = 4, M = 2: positions = the first 2 of randperm(6) = 2, 5; images = the first 2 of randperm(5),
    # from the same generator seeded with 0, = 4, 0
    generator = torch.Generator().manual_seed(0)
    assert torch.randperm(6, generator=generator)[:2].tolist() == [2, 5]
    assert torch.randperm(5, generator=generator)[:2].tolist() == [4, 0]
    assert open_set_order([10, 11, 12, 13], 5, 0.5, 0) == [(10, False), (11, False), (4, True), (12, False),
                                                           (13, False), (0, True)]
    stream = OpenSet("folder:ood", 0.5).stream({"A": labels(4)}, 0, ood_size=5)
    assert [item.ood for item in stream] == [False, False, True, False, False, True]
    assert [item.index for item in stream if not item.ood] == seeded_order(4, 0)
    with pytest.raises(RunError, match="needs 3 images of folder:ood, which has 2"):
        OpenSet("folder:ood", 0.5).check({"A": 6}, 2)


def test_limit_keeps_each_sets_first_images_of_the_stream():
    stream = Cyclic(2).stream({"A": labels(5), "B": labels(3)}, 0)
    assert first_per_set(stream, 2) == stream[:2] + stream[3:5]
    assert first_per_set(stream, None) == stream


def test_bad_specs_are_one_line_errors_naming_the_forms():
    for text in ("nope", "iid:2", "cyclic", "cyclic:0", "cyclic:x", "mixed:3", "dirichlet:0", "dirichlet:nan",
                 "open-set:0.5", "open-set:Q:0.5", "open-set:folder:ood:-1", "prefix:-2"):
        with pytest.raises(RunError) as info:
            parse_scenario(text)
        message = str(info.value)
        assert message.startswith(f"--scenario {text!r}") and "accepted: iid" in message and "\n" not in message
    assert parse_scenario(" dirichlet:0.10").spec == "dirichlet:0.1"
    assert parse_scenario("open-set:folder:ood:1").spec == "open-set:folder:ood:1"


def test_combinations_that_cannot_run_are_refused_before_any_work(root, checkpoint, tmp_path, capsys):
    cases = [
        (["--scenario", "cyclic:0"], "cyclic needs a whole number"),
        (["--scenario", "prefix:3", "--limit", "2"], "drop --limit"),
        (["--scenario", "open-set:folder:day:0.5"], "folder:day is a test set of this run"),
        (["--scenario", "open-set:folder:ood:1"], "needs 6 images of folder:ood, which has 4"),
    ]
    for extra, message in cases:
        assert main(args_for(root, checkpoint, tmp_path / "x", "zeroshot", "folder:day", *extra)) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x" / "seed0").exists()
    config = RunConfig(str(root), ["folder:day"], "tda", "w", str(tmp_path), scenario="mixed")
    check_scenario(config, Mixed(), online=False, shard=Shard(0, 2))  # episodic: dealt by position
    with pytest.raises(RunError, match="cannot take whole sets"):
        check_scenario(config, Mixed(), online=True, shard=Shard(0, 2))
    config.online_shards = 2
    check_scenario(config, Mixed(), online=True, shard=Shard(0, 2))


# -- runs under scenarios ----------------------------------------------------------------------------------

def by_index(out: Path, name: str) -> list[dict]:
    return sorted(read_records(out / "seed0" / name / "records.jsonl"), key=lambda r: r["index"])


def test_episodic_records_do_not_depend_on_the_order(root, checkpoint, tmp_path):
    hp = ["--hp", "precision=fp32", "n_views=8", "steps=1"]
    for scenario in ("iid", "mixed", "cyclic:2"):
        assert main(args_for(root, checkpoint, tmp_path / scenario, "tpt", "folder:day/folder:night", *hp,
                             "--scenario", scenario)) == 0
    for name in ("day", "night"):
        assert by_index(tmp_path / "mixed", name) == by_index(tmp_path / "iid", name) == by_index(tmp_path / "cyclic:2",
                                                                                                    name)
    mixed = Mixed().stream({"folder:day": labels(6), "folder:night": labels(6)}, 0)
    written = [r["index"] for r in read_records(tmp_path / "mixed" / "seed0" / "night" / "records.jsonl")]
    assert written == [item.index for item in mixed if item.set_id == "folder:night"]  # in stream order
    assert (tmp_path / "iid" / "summary.csv").read_text() == (tmp_path / "mixed" / "summary.csv").read_text()


def running_mean_records(checkpoint, root, stream) -> list[tuple[int, int, float]]:
    """The online toy worked directly: (index, top-1 class, its probability) per item of the stream, the
    memory a running mean of every view-0 feature met before and including the item, whatever its set."""
    model, _ = load_clip(str(checkpoint))
    memory, seen, out = torch.zeros(model.config.embed_dim), 0, []
    maker = ViewMaker(n_views=2, size=model.config.preprocess.image_size, mean=model.config.preprocess.mean,
                      std=model.config.preprocess.std)
    for item in stream:
        dataset = open_dataset(root, item.set_id)
        image = DecodedImages(dataset, [item.index], min_side_for(model.config.preprocess.image_size))[0].image
        with torch.no_grad():
            feature = F.normalize(model.encode_image(maker(image, 0, item.index)[:1]).float(), dim=-1)[0]
        memory, seen = (memory * seen + feature) / (seen + 1), seen + 1
        text = encode_class_prompts(model, dataset.classnames, ["a photo of a {}."])
        probabilities = (100 * (feature + 0.5 * memory) @ text.T).softmax(-1)
        out.append((item.index, int(probabilities.argmax()), float(probabilities.max())))
    return out


def test_an_online_state_flows_across_every_switch(root, checkpoint, tmp_path):
    sets = "folder:day/folder:other"
    for scenario in ("iid", "sequential", "cyclic:1", "cyclic:2"):
        assert main(args_for(root, checkpoint, tmp_path / scenario, RunningMeanMethod.name, sets,
                             "--scenario", scenario)) == 0
    assert comparable(tmp_path / "sequential") == comparable(tmp_path / "iid") == comparable(tmp_path / "cyclic:1")
    stream = Cyclic(2).stream({"folder:day": labels(6), "folder:other": labels(6)}, 0)
    expected = running_mean_records(checkpoint, root, stream)
    for name in ("day", "other"):
        records = read_records(tmp_path / "cyclic:2" / "seed0" / name / "records.jsonl")
        mine = [e for e, item in zip(expected, stream) if item.set_id == f"folder:{name}"]
        assert [(r["index"], r["top5"][0][0]) for r in records] == [(i, c) for i, c, _ in mine]
        assert all(abs(r["top5"][0][1] - p) < 1e-5 for r, (_, _, p) in zip(records, mine))
    config = json.loads((tmp_path / "cyclic:2" / "config.json").read_text())
    assert config["run"]["scenario"] == "cyclic:2" and "scenario" not in json.loads(
        (tmp_path / "iid" / "config.json").read_text())["run"]
    assert "stream cyclic:2" in (tmp_path / "cyclic:2" / "summary.md").read_text()
    assert "stream" not in (tmp_path / "iid" / "summary.md").read_text()
    assert main([*args_for(root, checkpoint, tmp_path / "iid", RunningMeanMethod.name, sets, "--scenario",
                           "sequential"), "--resume"]) == 2  # another scenario is another run


def interrupt_after(monkeypatch, cls, calls: int) -> None:
    """Ctrl-C in the middle of the stream: the `calls`-th prediction raises KeyboardInterrupt."""
    predict, count = cls.predict, [0]

    def stop(self, views):
        count[0] += 1
        if count[0] == calls:
            raise KeyboardInterrupt
        return predict(self, views)

    monkeypatch.setattr(cls, "predict", stop)


@pytest.mark.parametrize("method, scenario, calls", [
    (RunningMeanMethod, "mixed", 8),
    (RunningMeanMethod, "open-set:folder:ood:0.5", 11),
    (MINT, "cyclic:2", 10),
])
def test_resume_inside_a_scenario_is_exact(root, checkpoint, tmp_path, monkeypatch, method, scenario, calls):
    args = lambda out, *extra: args_for(root, checkpoint, tmp_path / out, method.name, "folder:day/folder:night",
                                        "--scenario", scenario, "--save-every", "3", *extra,
                                        *(MINT_HP if method is MINT else []))
    assert main(args("whole")) == 0
    with monkeypatch.context() as patch:
        interrupt_after(patch, method, calls)
        assert main(args("stopped")) == 130
    state = read_state(tmp_path / "stopped" / "seed0" / "state.pt")
    assert state["stream_position"] == (calls - 1) // 3 * 3  # the last save before the stop
    kept = sum(len(read_records(p)) for p in (tmp_path / "stopped").glob("seed0/*/records.jsonl"))
    assert kept == calls - 1  # records after the last save are written, and resume cuts them back
    assert main(args("stopped", "--resume")) == 0
    assert comparable(tmp_path / "stopped") == comparable(tmp_path / "whole")
    for kind in ("day/diagnostics.json", "day/stream.png", "day/trace.jsonl", "night/diagnostics.json",
                 "night/stream.png", "night/trace.jsonl", "stream_trace.png", "stream_accuracy.png"):
        whole = tmp_path / "whole" / "seed0" / kind
        assert not whole.is_file() or whole.read_bytes() == (tmp_path / "stopped" / "seed0" / kind).read_bytes()


def test_an_online_stream_traces_what_the_method_did_at_each_sample(root, checkpoint, tmp_path):
    """docs/protocols.md § Introspection: one trace line per sample beside its record, with its position in
    the whole stream, and the state and top-1 along the stream drawn with the switches of set marked."""
    out = tmp_path / "mint"
    assert main(args_for(root, checkpoint, out, "mint", "folder:day/folder:night", "--scenario", "cyclic:2",
                         *MINT_HP)) == 0
    seed = out / "seed0"
    traces = {name: read_records(seed / name / "trace.jsonl") for name in ("day", "night")}
    records = {name: read_records(seed / name / "records.jsonl") for name in ("day", "night")}
    assert [t["index"] for t in traces["day"]] == [r["index"] for r in records["day"]]
    positions = sorted(t["stream_position"] for lines in traces.values() for t in lines)
    assert positions == list(range(12))  # 6 + 6 images, cyclic:2 -> day 0-2, night 3-5, day 6-8, night 9-11
    assert [t["stream_position"] for t in traces["night"]] == [3, 4, 5, 9, 10, 11]
    first = traces["day"][0]
    assert len(first["retrieved"]) == 6 and first["entries_ever_used"] <= 16  # 3 query layers x top-2; bank of 16
    assert (seed / "stream_trace.png").is_file() and (seed / "stream_accuracy.png").is_file()


def test_a_killed_cyclic_stream_resumes_exactly(root, checkpoint, tmp_path):
    args = lambda out, *extra: args_for(root, checkpoint, tmp_path / out, RunningMeanMethod.name,
                                        "folder:day/folder:night", "--scenario", "cyclic:2", "--save-every", "2",
                                        *extra)
    assert main(args("whole")) == 0
    prelude = "import tests.engine.online_toy as t; t.RunningMeanMethod.delay = 0.05; "
    kill_part_way(args("killed"), tmp_path / "killed" / "seed0" / "day" / "records.jsonl", 4, prelude)  # round 2
    assert main(args("killed", "--resume")) == 0
    assert comparable(tmp_path / "killed") == comparable(tmp_path / "whole")


def test_a_state_file_from_before_scenarios_still_resumes(root, checkpoint, tmp_path, monkeypatch):
    """No stream_position: its sets ran one after another, so the position is the finished sets' images
    plus its position in the current set."""
    args = lambda out, *extra: args_for(root, checkpoint, tmp_path / out, RunningMeanMethod.name,
                                        "folder:day/folder:night", "--save-every", "4", *extra)
    assert main(args("whole")) == 0
    with monkeypatch.context() as patch:
        interrupt_after(patch, RunningMeanMethod, 10)  # the 4th image of night; last save after 8 images
        assert main(args("old")) == 130
    path = tmp_path / "old" / "seed0" / "state.pt"
    state = read_state(path)
    assert (state["finished"], state["set"], state["position"], state["stream_position"]) == (["folder:day"],
                                                                                                "folder:night", 2, 8)
    del state["stream_position"]
    atomic_torch_save(path, state)
    assert main(args("old", "--resume")) == 0
    assert comparable(tmp_path / "old") == comparable(tmp_path / "whole")


def test_tda_interleaves_sets_of_one_label_space_and_refuses_others(root, checkpoint, tmp_path, capsys):
    hp = ["--hp", "precision=fp32", "reset_state=never"]
    assert main(args_for(root, checkpoint, tmp_path / "same", "tda", "folder:day/folder:night", "--scenario",
                         "cyclic:2", *hp)) == 0
    assert main(args_for(root, checkpoint, tmp_path / "other", "tda", "folder:day/folder:other", "--scenario",
                         "cyclic:2", *hp)) == 2
    err = capsys.readouterr().err
    assert "tda's state belongs to one set's classes and these sets' classes differ" in err and err.count("\n") == 1
    assert not (tmp_path / "other" / "seed0").exists()  # refused before any image


def test_online_sub_streams_split_each_sets_part_of_an_interleaved_stream(root, checkpoint, tmp_path):
    sets = "folder:day/folder:night"
    assert main(args_for(root, checkpoint, tmp_path / "two", RunningMeanMethod.name, sets, "--scenario", "cyclic:2",
                         "--online-shards", "2")) == 0
    stream = Cyclic(2).stream({"folder:day": labels(6), "folder:night": labels(6)}, 0)
    for name in ("day", "night"):
        written = [r["index"] for r in read_records(tmp_path / "two" / "seed0" / name / "records.jsonl")]
        assert written == [item.index for item in stream if item.set_id == f"folder:{name}"]
    assert not list((tmp_path / "two").glob("seed0/*/records.stream*"))


# -- scoring open-set streams ------------------------------------------------------------------------------

def test_auroc_and_fpr95_equal_a_direct_computation():
    known = [0.9, 0.8, 0.8, 0.5, 0.3] * 4  # 20 ID scores, ties among them and with the OOD ones
    unknown = [0.8, 0.5, 0.5, 0.2, 0.1, 0.3]
    pairs = [(k > u) + 0.5 * (k == u) for k in known for u in unknown]
    assert auroc(known, unknown) == pytest.approx(sum(pairs) / len(pairs))
    assert auroc([0.9, 0.8, 0.5], [0.5, 0.1]) == pytest.approx(5.5 / 6)
    for threshold in sorted(set(known), reverse=True):  # the first threshold, from the top, keeping 95%
        if np.mean(np.array(known) >= threshold) >= 0.95:
            break
    assert threshold == 0.3  # 19 of 20 are needed: the 0.3s too
    assert fpr_at_tpr(known, unknown) == pytest.approx(np.mean(np.array(unknown) >= threshold)) == pytest.approx(4 / 6)
    assert fpr_at_tpr([1.0] * 19 + [0.1], [0.5, 0.05]) == 0.0  # 19/20 = 95% at 1.0 already
    record = lambda p, ood=False: {"label": 0, "top5": [[0, p]], **({"ood": True} if ood else {})}
    records = [record(p) for p in known] + [record(p, ood=True) for p in unknown] + [{"skipped": "x", "ood": True}]
    found = detection_metrics(records)
    assert (found.in_distribution, found.out_of_distribution) == (20, 6)
    assert found.auroc == pytest.approx(100 * sum(pairs) / len(pairs)) and found.fpr95 == pytest.approx(400 / 6)
    assert metrics(records).samples == 20 and metrics(records).skipped == 0  # the OOD images are not scored
    assert detection_metrics(records[:20]) is None


def test_an_open_set_run_scores_the_ood_images_apart(root, checkpoint, tmp_path, capsys):
    out = tmp_path / "open"
    assert main(args_for(root, checkpoint, out, "zeroshot", "folder:day/folder:night", "--scenario",
                         "open-set:folder:ood:0.5", "--seeds", "0,1")) == 0
    records = read_records(out / "seed0" / "night" / "records.jsonl")
    assert len(records) == 9 and sum(r.get("ood", False) for r in records) == 3 == math.floor(0.5 * 6 + 0.5)
    assert all(r["path"].startswith(str(root / "ood")) for r in records if r.get("ood"))
    config = json.loads((out / "config.json").read_text())
    assert config["ood"]["set_id"] == "folder:ood" and config["ood"]["images"] == 4
    summary = (out / "summary.md").read_text()
    assert "| zeroshot | night | 6 | 3 |" in summary and "| night | 6 | 0 |" in summary  # 6 scored, none skipped
    row = next(line for line in (out / "ood.csv").read_text().splitlines() if line.startswith("zeroshot,night"))
    mean_auroc = np.mean([detection_metrics(read_records(out / f"seed{s}" / "night" / "records.jsonl")).auroc
                          for s in (0, 1)])
    assert float(row.split(",")[5]) == pytest.approx(mean_auroc, abs=1e-4)
    capsys.readouterr()
    assert "AUROC" in report_runs([out], tmp_path / "report") and (tmp_path / "report" / "ood.csv").is_file()


def test_the_run_and_sweep_commands_offer_the_scenarios(capsys):
    for command in ("run", "sweep"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--scenario S" in text and "cyclic:R" in text and "open-set:SET:RHO" in text and "(default: iid)" in text
