"""Weights by name, found in fake local caches under tmp_path: $MINTCLIP_WEIGHTS, ~/.cache/clip, the hub."""

import json
import os

import pytest
from safetensors.torch import save_file

import mintclip
from mintclip.model import CheckpointError, locate_weights
from tests.helpers import tiny_clip


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """An empty home: no cache variable of the machine running the tests leaks in."""
    for variable in ("MINTCLIP_WEIGHTS", "HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def touch(path, content=b"weights"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def snapshot(hub, repo, revision, *files):
    folder = hub / f"models--{repo.replace('/', '--')}"
    (folder / "snapshots" / revision).mkdir(parents=True)
    for name in files:
        touch(folder / "snapshots" / revision / name)
    touch(folder / "refs" / "main", revision.encode())
    return folder / "snapshots" / revision


def test_an_existing_path_is_returned_as_is(caches):
    weights = touch(caches / "ViT-B-16")  # a file that happens to be called like a model
    assert locate_weights(str(weights)) == weights
    assert locate_weights(weights) == weights


@pytest.mark.parametrize("name", ["ViT-B/16", "ViT-B-16", "vit-b-16", "openai/clip-vit-base-patch16",
                                  "clip-vit-base-patch16", "hf-hub:timm/vit_base_patch16_clip_224.openai"])
def test_spellings_of_one_model_find_the_openai_cache(caches, name):
    weights = touch(caches / "home" / ".cache" / "clip" / "ViT-B-16.pt")
    assert locate_weights(name) == weights


@pytest.mark.parametrize("name, file", [("ViT-L/14@336px", "ViT-L-14-336px.pt"), ("ViT-L-14-336", "ViT-L-14-336px.pt"),
                                        ("RN50", "RN50.pt"), ("RN50x64", "RN50x64.pt"), ("ViT-B/32", "ViT-B-32.pt")])
def test_openai_cache_file_names(caches, name, file):
    weights = touch(caches / "home" / ".cache" / "clip" / file)
    assert locate_weights(name) == weights


def test_mintclip_weights_is_searched_first(caches, monkeypatch):
    touch(caches / "home" / ".cache" / "clip" / "ViT-B-16.pt")
    own = caches / "own"
    monkeypatch.setenv("MINTCLIP_WEIGHTS", str(own))
    hf_folder = touch(own / "clip-vit-base-patch16" / "config.json").parent
    assert locate_weights("ViT-B/16") == hf_folder
    safetensors = touch(own / "ViT-B-16.safetensors")
    assert locate_weights("openai/clip-vit-base-patch16") == safetensors
    assert locate_weights("ViT-B-16.safetensors") == safetensors  # any file in the folder, by its name
    openai_name = touch(own / "ViT-B-16.pt")
    assert locate_weights("ViT-B/16") == openai_name


def test_hugging_face_hub_cache(caches, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(caches / "hf"))
    hub = caches / "hf" / "hub"
    snapshot(hub, "openai/clip-vit-base-patch16", "old", "config.json", "pytorch_model.bin")
    current = snapshot(hub, "openai/clip-vit-base-patch16", "abc123", "config.json", "model.safetensors")
    assert locate_weights("ViT-B/16") == current  # the revision refs/main names
    monkeypatch.setenv("HF_HUB_CACHE", str(caches / "elsewhere"))  # wins over HF_HOME
    with pytest.raises(CheckpointError, match="elsewhere"):
        locate_weights("ViT-B/16")


def test_open_clip_cache_gives_the_weights_file(caches):
    hub = caches / "home" / ".cache" / "huggingface" / "hub"
    folder = snapshot(hub, "timm/vit_large_patch14_clip_336.openai", "r1", "open_clip_pytorch_model.bin")
    assert locate_weights("ViT-L/14@336px") == folder / "open_clip_pytorch_model.bin"
    folder = snapshot(hub, "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "r2", "open_clip_config.json",
                      "open_clip_model.safetensors")
    assert locate_weights("laion/CLIP-ViT-B-32-laion2B-s34B-b79K") == folder / "open_clip_model.safetensors"
    assert locate_weights("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K") == folder / "open_clip_model.safetensors"


def test_incomplete_hub_downloads_are_skipped(caches):
    hub = caches / "home" / ".cache" / "huggingface" / "hub"
    folder = snapshot(hub, "openai/clip-vit-base-patch32", "r1", "config.json")  # the weights never came
    os.symlink(hub / "blobs" / "missing", folder / "model.safetensors")  # a link to a blob not downloaded
    with pytest.raises(CheckpointError, match="not in the local caches"):
        locate_weights("ViT-B/32")


def test_a_name_not_found_says_where_it_looked(caches, monkeypatch):
    monkeypatch.setenv("MINTCLIP_WEIGHTS", str(caches / "own"))
    with pytest.raises(CheckpointError) as info:
        locate_weights("ViT-L/14@336px")
    message = str(info.value)
    assert "\n" not in message and message.startswith("ViT-L/14@336px: not in the local caches")
    for place in (str(caches / "own"), "ViT-L-14-336px.pt", str(caches / "home" / ".cache" / "clip"),
                  str(caches / "home" / ".cache" / "huggingface" / "hub"), "models--openai--clip-vit-large-patch14-336",
                  "models--timm--vit_large_patch14_clip_336.openai", "open_clip_pytorch_model.bin", "config.json"):
        assert place in message, place
    with pytest.raises(CheckpointError, match=r"no download of the Hugging Face repo laion/none .*known model names: "
                                              r"RN50, .*ViT-L/14@336px"):
        locate_weights("laion/none")
    with pytest.raises(CheckpointError, match="missing.pt: no such file or directory$"):
        locate_weights(str(caches / "missing.pt"))


def test_load_clip_and_inspect_take_a_name(caches, monkeypatch):
    reference = tiny_clip("vit")
    mintclip.save_clip(reference, touch(caches / "home" / ".cache" / "clip" / "ViT-B-16.pt"))  # safetensors inside
    model, _ = mintclip.load_clip("ViT-B/16")
    assert model.config.sources["act"] == "mintclip metadata in the file"
    assert mintclip.inspect_checkpoint("ViT-B/16").path == caches / "home" / ".cache" / "clip" / "ViT-B-16.pt"
    monkeypatch.setenv("HF_HUB_CACHE", str(caches / "hub"))
    folder = snapshot(caches / "hub", "timm/vit_base_patch32_clip_224.openai", "r1")
    save_file(reference.state_dict(), str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"quick_gelu": True, "text_cfg": {"heads": 1}}}))
    info = mintclip.inspect_checkpoint("ViT-B/32")
    assert info.path == folder / "open_clip_model.safetensors" and info.config.act == "quick_gelu"
