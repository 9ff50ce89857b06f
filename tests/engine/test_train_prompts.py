"""`mintclip train-prompts`: K shots per class drawn by a seed, a training that lowers its loss, the
same prompts from the same seed, and a killed training resumed to the very same prompts."""

import json

import pytest
import torch
from safetensors import safe_open

from mintclip.adapt.coop import CoOpTraining, read_prompt_config
from mintclip.cli import main
from mintclip.data import DatasetError, open_dataset
from mintclip.engine import RunError
from mintclip.engine import train_prompts as training
from mintclip.engine.train_prompts import PromptTrainingRun, epoch_batches, learning_rate, sample_shots, train_prompts
from mintclip.model import save_clip
from tests.helpers import CLASSES, frozen_clip, random_images

QUICK = {"epochs": 4, "batch_size": 8, "lr": 0.05, "warmup_epochs": 1}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    random_images(root / "source", CLASSES, per_class=6)
    save_clip(frozen_clip(), root / "tiny.safetensors")
    return root


def training_run(setup, out, **changes):
    settings = dict(data_root=str(setup), train_set="folder:source", weights=str(setup / "tiny.safetensors"),
                    out=str(out), shots=4, hp=dict(QUICK), log=lambda _: None)
    return PromptTrainingRun(**{**settings, **changes})


def trained_context(path):
    with safe_open(str(path), "pt") as handle:
        return handle.get_tensor("ctx"), json.loads(handle.metadata()["mintclip_prompts"])


def test_the_shots_are_k_per_class_drawn_by_the_seed(setup):
    dataset = open_dataset(setup, "folder:source")
    first, again, other = (sample_shots(dataset, 4, seed) for seed in (1, 1, 2))
    assert first == again and first != other
    assert sorted(label for _, label in first) == sorted(list(range(len(CLASSES))) * 4)
    assert len(sample_shots(dataset, 10, 1)) == 6 * len(CLASSES)  # a class with fewer gives all it has


def test_the_schedule_is_dassls_constant_warmup_then_cosine():
    hp = CoOpTraining()
    assert learning_rate(0, hp) == 1e-5 and learning_rate(1, hp) == 0.002
    assert learning_rate(26, hp) == pytest.approx(0.001)  # half-way down the cosine over 50 epochs
    assert [len(b) for b in epoch_batches(20, 8, 1, 0)] == [8, 8]  # the short last batch is dropped
    assert sorted(sum(epoch_batches(20, 32, 1, 0), [])) == list(range(20))  # fewer than a batch: one batch


def test_training_lowers_the_loss_and_records_what_made_the_prompts(setup, tmp_path):
    path = train_prompts(training_run(setup, tmp_path / "coop"))
    ctx, config = trained_context(path)
    history = config["history"]
    assert len(history) == 4 and history[-1]["loss"] < history[0]["loss"] - 0.5  # epoch 1 is the warm-up at 1e-5
    assert ctx.shape == (4, 64) and config["class_token_position"] == "end"
    assert len(config["files"]) == 4 * len(CLASSES) and config["files"][0][0].startswith(config["classnames"][0])
    assert config["training"]["hp"]["epochs"] == 4 and config["training"]["seed"] == 1


def trained_tensors(path):
    with safe_open(str(path), "pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}


def same_tensors(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["coop", "cocoop", "maple", "metatpt"])
def test_the_same_seed_gives_the_same_prompts(setup, tmp_path, method):
    first, second, other = (trained_tensors(train_prompts(training_run(setup, tmp_path / name, method=method, seed=seed)))
                            for name, seed in (("a", 1), ("b", 1), ("c", 2)))
    assert same_tensors(first, second) and not same_tensors(first, other)
    assert ("meta_net.linear2.weight" in first) == (method == "cocoop")
    assert ("compound_prompts_text.1" in first) == (method == "maple")


@pytest.mark.parametrize("method", ["coop", "cocoop", "maple", "metatpt"])
def test_a_killed_training_resumes_to_the_same_prompts(setup, tmp_path, monkeypatch, method):
    whole = trained_tensors(train_prompts(training_run(setup, tmp_path / "whole", method=method)))
    saves, save_state = [], training.save_state

    def save_then_die(*args):
        save_state(*args)
        saves.append(args[4:6])  # (epoch, step)
        if len(saves) == 3:
            raise KeyboardInterrupt
    monkeypatch.setattr(training, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_prompts(training_run(setup, tmp_path / "killed", method=method, save_every=1))
    assert saves[-1] == (1, 1)  # killed inside the second epoch, after its first step
    monkeypatch.setattr(training, "save_state", save_state)
    path = train_prompts(training_run(setup, tmp_path / "killed", method=method, resume=True))
    assert same_tensors(trained_tensors(path), whole)
    losses = [[epoch["loss"], epoch["accuracy"]] for epoch in read_prompt_config(path)["history"]]
    assert losses == [[e["loss"], e["accuracy"]] for e in read_prompt_config(tmp_path / "whole" / "prompts.safetensors")
                      ["history"]]  # the resumed epoch's figures count its steps before the kill too


def test_what_cannot_train_is_refused_in_one_line(setup, tmp_path):
    train_prompts(training_run(setup, tmp_path / "done", hp={**QUICK, "epochs": 1}))
    with pytest.raises(RunError, match="--resume"):
        train_prompts(training_run(setup, tmp_path / "done", hp={**QUICK, "epochs": 1}))
    with pytest.raises(RunError, match="other settings"):
        train_prompts(training_run(setup, tmp_path / "done", hp={**QUICK, "epochs": 2}, resume=True))
    with pytest.raises(DatasetError, match="test splits"):
        train_prompts(training_run(setup, tmp_path / "a", train_set="A"))
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        train_prompts(training_run(setup, tmp_path / "b", hp={"epoch": 3}))


def test_a_corrupt_shot_is_skipped_and_recorded(setup, tmp_path):
    tree = tmp_path / "tree"
    random_images(tree / "source", CLASSES, per_class=2)
    (tree / "source" / CLASSES[0] / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    path = train_prompts(training_run(setup, tmp_path / "out", data_root=str(tree), shots=2,
                                      hp={**QUICK, "epochs": 1}))
    _, config = trained_context(path)
    assert len(config["files"]) == 2 * len(CLASSES) - 1 and "0.png" in config["skipped"][0]


def test_the_command_trains_and_the_run_uses_the_prompts(setup, tmp_path, capsys):
    out = tmp_path / "coop"
    assert main(["train-prompts", str(setup), "--train_set", "folder:source", "--weights", str(setup / "tiny.safetensors"),
                 "--out", str(out), "--shots", "2", "--workers", "0", "--hp", "epochs=1", "batch_size=4"]) == 0
    assert f"--hp prompts={out / 'prompts.safetensors'}" in capsys.readouterr().out
    assert main(["run", str(setup / "source"), "--test_sets", "folder", "--method", "coop", "--hp", f"prompts={out}",
                 "--weights", str(setup / "tiny.safetensors"), "--out", str(tmp_path / "run"), "--workers", "0",
                 "--no-progress"]) == 0
    assert f"context from {out / 'prompts.safetensors'}" in (tmp_path / "run" / "summary.md").read_text()


def test_ctrl_c_keeps_the_state_and_says_how_to_resume(setup, tmp_path, capsys, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(training, "save_state", interrupted)
    args = ["train-prompts", str(setup), "--train_set", "folder:source", "--weights", str(setup / "tiny.safetensors"),
            "--out", str(tmp_path / "coop"), "--shots", "2", "--workers", "0", "--hp", "epochs=1", "batch_size=4"]
    assert main(args) == 130
    message = capsys.readouterr().err
    assert "the training state is kept in" in message and message.rstrip().endswith("--resume")
