"""A checkpoint's format is told by its content, never its name; anything else is one line saying what it
looks like; a missing GPU is one line too; and `mintclip info A B` can report on every path."""

import gzip
import io
import os
import pickle
import random
import re
import zipfile

import pytest
import torch
from safetensors.torch import save_file

import mintclip
from mintclip.model import CheckpointError, DeviceError, check_device, checkpoints
from tests.helpers import IMAGE_SIZE, tiny_clip


@pytest.fixture(scope="module")
def reference():
    return tiny_clip("vit")


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))


def one_line_error(path, match, **kwargs):
    with pytest.raises(CheckpointError, match=match) as info:
        mintclip.inspect_checkpoint(path, **kwargs)
    message = str(info.value)
    assert str(path) in message and "\n" not in message and "weights_only" not in message
    return message


@pytest.mark.parametrize("name, write, format", [
    ("zip.safetensors", lambda s, p: torch.save(s, p), "torch-zip"),
    ("legacy.safetensors", lambda s, p: torch.save(s, p, _use_new_zipfile_serialization=False), "torch-pickle"),
    ("tensors.pt", lambda s, p: save_file(s, str(p)), "safetensors"),
    ("tensors.bin", lambda s, p: save_file(s, str(p)), "safetensors"),
])
def test_a_misnamed_file_is_read_as_what_it_is(reference, images, tmp_path, name, write, format):
    write(reference.state_dict(), tmp_path / name)
    model, _ = mintclip.load_clip(tmp_path / name, act="quick_gelu", preprocess={})
    assert mintclip.inspect_checkpoint(tmp_path / name, act="quick_gelu").format == format
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), reference.encode_image(images), atol=0, rtol=0)


LFS_POINTER = b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 598641023\n"


@pytest.mark.parametrize("content, match", [
    (b"", "empty file"),
    (b"\n<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head></html>", "looks like an HTML page"),
    (b"<?xml version='1.0'?><Error><Code>AccessDenied</Code></Error>", "looks like an XML document"),
    (LFS_POINTER, "a Git LFS pointer, not the weights"),
    (b'{"architectures": ["CLIPModel"]}', "looks like a JSON file"),
    ("Gewichte für CLIP, bitte herunterladen\n".encode() * 20, "looks like a text file"),
    (gzip.compress(b"\x80\x02" + bytes(100)), "a gzip-compressed file"),
    (b"\xff\xd8\xff\xe0" + bytes(100), r"unrecognised content \(starts with bytes ff d8 ff e0"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":", "truncated or corrupt safetensors file .*promises 24 bytes, the file has 13"),
])
def test_what_a_file_that_is_no_checkpoint_looks_like(tmp_path, content, match):
    (tmp_path / "model.safetensors").write_bytes(content)
    one_line_error(tmp_path / "model.safetensors", match)


def test_a_zip_that_is_no_pytorch_file(tmp_path):
    with zipfile.ZipFile(tmp_path / "weights.pt", "w") as archive:
        archive.writestr("README.txt", "the weights are elsewhere")
    one_line_error(tmp_path / "weights.pt", r"a zip archive, but not a PyTorch or TorchScript checkpoint")


def test_safetensors_cut_after_the_header(reference, tmp_path):
    save_file(reference.state_dict(), str(tmp_path / "whole.safetensors"))
    data = (tmp_path / "whole.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-100])
    one_line_error(tmp_path / "cut.safetensors", f"promises {len(data)} bytes, the file has {len(data) - 100}")


@pytest.mark.parametrize("legacy", [False, True])
def test_corrupt_pickles_are_one_line_whatever_torch_raises(reference, tmp_path, legacy):
    """Cut or bit-flipped, torch.load fails with a dozen exception types; each is one CheckpointError."""
    buffer = io.BytesIO()
    torch.save({k: v for k, v in list(reference.state_dict().items())[:4]}, buffer,
               _use_new_zipfile_serialization=not legacy)
    data, rng = buffer.getvalue(), random.Random(0)
    for i in range(40):
        broken = bytearray(data[: rng.randrange(2, len(data))] if i % 2 else data)
        if not i % 2:
            for _ in range(3):
                broken[rng.randrange(1, len(broken))] = rng.randrange(256)
        (tmp_path / "broken.pt").write_bytes(bytes(broken))
        try:
            mintclip.inspect_checkpoint(tmp_path / "broken.pt", act="gelu")
        except CheckpointError as e:
            assert "\n" not in str(e) and "weights_only" not in str(e)


class RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_with_a_forbidden_global_is_refused_without_the_advice_to_unpickle_it(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"visual.proj": torch.zeros(2), "x": RunsACommand(marker)}, tmp_path / "evil.safetensors")
    message = one_line_error(tmp_path / "evil.safetensors", r"refused: .*GLOBAL (posix|nt)\.system")
    assert "allowlist" not in message and "safe_globals" not in message
    (tmp_path / "plain.bin").write_bytes(pickle.dumps({"x": torch.zeros(2)}, protocol=2))  # not torch.save's
    message = one_line_error(tmp_path / "plain.bin", r"refused: .*torch\.storage\._load_from_bytes")
    assert "safe_globals" not in message
    assert not marker.exists()


def test_narrow_towers_whose_heads_cannot_be_told(tmp_path):
    config = tiny_clip("vit").config
    config.text.width, config.text.heads, config.embed_dim = 32, 1, 16
    torch.save(mintclip.CLIP(config).state_dict(), tmp_path / "narrow.pt")
    one_line_error(tmp_path / "narrow.pt", "cannot tell the text tower's attention heads: .*width 32", act="gelu")


def test_every_path_of_info_is_reported(reference, tmp_path, monkeypatch):
    """What `mintclip info A B C` does: each path gives its info or one CheckpointError, none stops the rest."""
    mintclip.save_clip(reference, tmp_path / "good.safetensors")
    (tmp_path / "not_weights").mkdir()
    (tmp_path / "page.pt").write_text("<html>sign in</html>")
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "config.json").write_text('{"model_type": "clip"}')
    (tmp_path / "index" / "model.safetensors.index.json").write_text('{"metadata": {}}')
    (tmp_path / "locked.pt").write_bytes(b"\x80\x02")
    os.mkfifo(tmp_path / "fifo")
    real_open = open

    def no_permission(file, *args, **kwargs):
        if str(file).endswith("locked.pt"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)
    monkeypatch.setattr(checkpoints, "open", no_permission, raising=False)
    expected = {"missing.pt": "no such file or directory", "not_weights": "neither a Hugging Face CLIPModel",
                "page.pt": "HTML page", "index": "no weight_map", "locked.pt": r"cannot read it \(Permission denied\)",
                "fifo": "not a regular file or a directory", "good.safetensors": None}
    for name, problem in expected.items():
        try:
            info = mintclip.inspect_checkpoint(tmp_path / name)
        except CheckpointError as e:
            assert problem is not None and "\n" not in str(e), name
            assert str(tmp_path / name) in str(e), name
            assert re.search(problem, str(e)), (name, str(e))
        else:
            assert problem is None and info.format == "safetensors"


def test_cuda_on_a_machine_without_it_is_one_line_before_any_weights_are_read(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    for device in ("cuda", "cuda:0", torch.device("cuda", 1)):
        with pytest.raises(DeviceError) as info:
            mintclip.load_clip(tmp_path / "not_read.pt", device=device)  # the device is checked first
        message = str(info.value)
        assert "\n" not in message and "requested but no CUDA device is available" in message
        assert f"torch {torch.__version__} built without CUDA" in message and "--device cpu" in message
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    with pytest.raises(DeviceError, match=r"built for CUDA 12\.4, but no GPU visible.*CUDA_VISIBLE_DEVICES"):
        check_device("cuda:0")


def test_a_gpu_index_beyond_those_visible(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(DeviceError, match=r"device cuda:5 requested but only 2 CUDA devices visible \(cuda:0 to cuda:1\)"):
        check_device("cuda:5")
    assert check_device("cuda:1") == torch.device("cuda", 1)
    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="'gpu0' is not a device name"):
        check_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_unpatched_on_this_machine(reference, tmp_path):
    mintclip.save_clip(reference, tmp_path / "tiny.safetensors")
    with pytest.raises(DeviceError, match="device cuda requested but no CUDA device is available"):
        mintclip.load_clip(tmp_path / "tiny.safetensors", device="cuda")
