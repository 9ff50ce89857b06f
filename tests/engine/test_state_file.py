"""A corrupt or tampered online state file on --resume: one line naming it, never PyTorch's advice to
unpickle it unsafely, and never the code a crafted pickle carries."""

import os
import pickle

import pytest
import torch

from mintclip.cli import main
from mintclip.engine import RunError
from mintclip.engine.online import read_state
from mintclip.engine.records import atomic_torch_save
from tests.helpers import random_images, run_args


class RunsACommand:
    """Unpickling this calls os.system: `touch marker` shows whether it ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def expect_invalid(path):
    with pytest.raises(RunError) as info:
        read_state(path)
    message = str(info.value)
    assert message.startswith(f"{path} is not a valid mintclip state file") and "--out" in message
    assert "\n" not in message and "weights_only" not in message
    return message


def test_a_saved_state_reads_back(tmp_path):
    state = {"finished": ["A"], "set": "V", "position": 7, "state": {"bank": torch.arange(3)}}
    atomic_torch_save(tmp_path / "state.pt", state)
    read = read_state(tmp_path / "state.pt")
    assert read["finished"] == ["A"] and read["set"] == "V" and read["position"] == 7
    assert torch.equal(read["state"]["bank"], torch.arange(3))


@pytest.mark.parametrize("content", [b"", b"garbage, not a pickle" * 10, b"\x80\x02garbage" * 10, b"PK\x03\x04" + bytes(60)])
def test_garbage_is_one_line(tmp_path, content):
    (tmp_path / "state.pt").write_bytes(content)
    expect_invalid(tmp_path / "state.pt")


def test_truncated_state_and_other_objects_are_one_line(tmp_path):
    atomic_torch_save(tmp_path / "whole.pt", {"finished": [], "set": "A", "position": 3, "state": {"x": torch.ones(50)}})
    data = (tmp_path / "whole.pt").read_bytes()
    for cut in (10, len(data) // 2, len(data) - 1):
        (tmp_path / "state.pt").write_bytes(data[:cut])
        expect_invalid(tmp_path / "state.pt")
    for other in (torch.zeros(3), {"finished": "A", "set": None, "position": 0, "state": {}}, [1, 2]):
        torch.save(other, tmp_path / "state.pt")
        expect_invalid(tmp_path / "state.pt")


def test_a_pickle_that_would_run_a_command_is_refused_not_run(tmp_path):
    marker = tmp_path / "ran"
    payload = {"finished": [], "set": None, "position": 0, "state": {"x": RunsACommand(marker)}}
    torch.save(payload, tmp_path / "zip.pt")
    torch.save(payload, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    (tmp_path / "plain.pt").write_bytes(pickle.dumps(RunsACommand(marker), protocol=2))
    for name in ("zip.pt", "legacy.pt", "plain.pt"):
        expect_invalid(tmp_path / name)
    assert not marker.exists()


def test_resume_over_a_tampered_state_file_is_one_line(tmp_path, checkpoint, capsys):
    tree = random_images(tmp_path / "tree", ["cat", "dog"], per_class=2)
    args = run_args(tree, checkpoint, tmp_path / "out", "tda", "--limit", "3", "--hp", "precision=fp32")
    assert main(args) == 0
    marker = tmp_path / "ran"
    (tmp_path / "out" / "seed0" / "state.pt").write_bytes(pickle.dumps(RunsACommand(marker), protocol=2))
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "state.pt is not a valid mintclip state file" in err and err.count("\n") == 1
    assert "weights_only" not in err and not marker.exists()
