"""Every checkpoint format loads to the same model; every broken one fails with one clear line."""

import json
import pickle
import zipfile

import pytest
import torch
from safetensors.torch import save_file

import mintclip
from mintclip.model import CheckpointError, factory
from tests.helpers import IMAGE_SIZE, tiny_clip


@pytest.fixture(scope="module")
def reference():
    """A tiny ViT CLIP whose weights are fp16-representable, so an fp16 archive holds them exactly."""
    model = tiny_clip("vit")
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)
    tokens = mintclip.Tokenizer()(["a photo of a goldfish.", "a sketch of a great white shark."])
    return images, tokens


def features(model, inputs):
    images, tokens = inputs
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def assert_same_features(loaded, reference, inputs, atol=0.0):
    for got, want in zip(features(loaded, inputs), features(reference, inputs)):
        torch.testing.assert_close(got, want, atol=atol, rtol=0)


def write_open_clip_layouts(model, root):
    """The same weights as open_clip and OpenAI users hold them: paths, and the activation to pass."""
    state = model.state_dict()
    root.mkdir(exist_ok=True)
    save_file(state, str(root / "plain.safetensors"))
    torch.save(state, root / "plain.bin")
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 32}, root / "release.pt")
    text_tower = ("token_embedding", "positional_embedding", "transformer.", "ln_final", "text_projection")
    custom_text = {("text." + k if k.startswith(text_tower) else k): v for k, v in state.items()}
    save_file(custom_text, str(root / "custom_text.safetensors"))
    hub = root / "hub"
    hub.mkdir(exist_ok=True)
    save_file(state, str(hub / "open_clip_model.safetensors"))
    (hub / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": {"embed_dim": 32, "quick_gelu": True, "vision_cfg": {"width": 128, "layers": 3},
                      "text_cfg": {"width": 64, "heads": 1, "layers": 2}},
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear"}}))
    return [root / "plain.safetensors", root / "plain.bin", root / "release.pt", root / "custom_text.safetensors"], hub


def test_open_clip_layouts_load_to_identical_features(reference, inputs, tmp_path):
    files, hub = write_open_clip_layouts(reference, tmp_path)
    for path in files:
        model, _ = mintclip.load_clip(path, act="quick_gelu", preprocess={})
        assert_same_features(model, reference, inputs)
        assert model.config.sources["act"] == "given by the caller"
    model, _ = mintclip.load_clip(hub)
    assert_same_features(model, reference, inputs)
    assert model.config.act == "quick_gelu" and model.config.preprocess.interpolation == "bilinear"
    assert model.config.sources["act"].endswith("open_clip_config.json")


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_torchscript_archive_is_read_without_torch_jit(reference, inputs, tmp_path, monkeypatch):
    archive = tmp_path / "ViT-tiny.pt"
    traced = torch.jit.trace(reference.half(), (torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE).half(), inputs[1]),
                             check_trace=False)
    reference.float()
    traced.save(str(archive))

    def refuse(*args, **kwargs):
        raise AssertionError("torch.jit.load must never be called")
    monkeypatch.setattr(torch.jit, "load", refuse)
    model, _ = mintclip.load_clip(archive)
    assert model.visual.conv1.weight.dtype == torch.float32  # fp16 archive, fp32 model
    assert model.config.act == "quick_gelu"
    assert model.config.sources["act"].startswith("TorchScript archive")
    assert model.config.preprocess.interpolation == "bicubic"
    assert_same_features(model, reference, inputs)


def test_hugging_face_directory_matches_transformers(tmp_path, inputs):
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPConfig(
        text_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=77, vocab_size=49408, hidden_act="gelu"),
        vision_config=dict(hidden_size=96, intermediate_size=384, num_hidden_layers=2, num_attention_heads=3,
                           image_size=IMAGE_SIZE, patch_size=8, hidden_act="gelu"),
        projection_dim=24)
    torch.manual_seed(0)
    hf = transformers.CLIPModel(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    hf = transformers.CLIPModel.from_pretrained(tmp_path / "hf").eval()
    with pytest.warns(UserWarning, match="preprocessing not stated"):
        model, tokenizer = mintclip.load_clip(tmp_path / "hf")
    images, tokens = inputs
    with torch.no_grad():
        hf_image = hf.get_image_features(pixel_values=images).pooler_output
        hf_text = hf.get_text_features(input_ids=tokens).pooler_output
        ours_image, ours_text = model.encode_image(images), model.encode_text(tokens)
    assert (ours_image - hf_image).abs().max() <= 1e-5
    assert (ours_text - hf_text).abs().max() <= 1e-5
    assert model.config.act == "gelu" and model.config.vision.heads == 3 and model.config.text.heads == 4
    torch.testing.assert_close(model.logit_scale, hf.logit_scale)


def test_modified_resnet_round_trips(tmp_path):
    reference = tiny_clip("resnet")
    torch.save(reference.state_dict(), tmp_path / "rn.pt")
    model, _ = mintclip.load_clip(tmp_path / "rn.pt", act="quick_gelu", preprocess={})
    vision = model.config.vision
    assert (vision.kind, vision.width, vision.layers, vision.image_size) == ("resnet", 16, (1, 2, 1, 1), 64)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model.encode_image(images)
        torch.testing.assert_close(out, reference.encode_image(images), atol=1e-6, rtol=0)
    assert out.shape == (2, 32) and out.isfinite().all()


def test_mintclip_safetensors_carry_their_config(reference, inputs, tmp_path):
    mintclip.save_clip(reference, tmp_path / "tiny.safetensors")
    model, _ = mintclip.load_clip(tmp_path / "tiny.safetensors")
    assert model.config.act == reference.config.act
    assert model.config.sources["act"] == "mintclip metadata in the file"
    assert_same_features(model, reference, inputs)
    assert not any(p.requires_grad for p in model.parameters())


def test_known_checkpoint_sets_activation_and_preprocessing(reference, tmp_path, monkeypatch):
    path = tmp_path / "weights.safetensors"
    save_file(reference.state_dict(), str(path))
    sha = factory.sha256_of(path)
    entry = {"sha256": sha[:8], "match": "prefix", "name": "ViT-tiny", "tag": "laion-test", "act": "gelu",
             "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "interpolation": "bilinear", "resize_mode": "squash"}
    monkeypatch.setattr(factory, "known_checkpoints", lambda: [entry])
    model, _ = mintclip.load_clip(path)
    assert model.config.act == "gelu" and model.config.preprocess.mean == (0.1, 0.2, 0.3)
    assert model.config.sources["preprocess"] == "known checkpoint ViT-tiny (laion-test)"


def test_openai_hashes_are_known():
    vit_b16 = factory.lookup_known("5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f")
    assert (vit_b16["name"], vit_b16["act"], vit_b16["image_size"]) == ("ViT-B-16", "quick_gelu", 224)
    assert factory.lookup_known("0" * 64) is None
    names = {e["name"] for e in factory.known_checkpoints() if e["tag"] == "openai"}
    assert {"RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B-32", "ViT-B-16", "ViT-L-14",
            "ViT-L-14-336"} <= names


# ---- broken input: one line that names the file and the problem ----

def expect_error(path, match, **kwargs):
    with pytest.raises(CheckpointError, match=match) as info:
        mintclip.load_clip(path, **kwargs)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    expect_error(tmp_path / "notes.txt", "not a checkpoint")
    (tmp_path / "photo.pt").write_bytes(b"\xff\xd8\xff\xe0" + bytes(100))  # a JPEG with a checkpoint's name
    expect_error(tmp_path / "photo.pt", "not a checkpoint")
    (tmp_path / "empty.pt").write_bytes(b"")
    expect_error(tmp_path / "empty.pt", "empty file")
    expect_error(tmp_path / "missing.pt", "no such file")


@pytest.mark.parametrize("name", ["plain.safetensors", "plain.bin"])
def test_truncated_files(reference, tmp_path, name):
    files, _ = write_open_clip_layouts(reference, tmp_path / "src")
    data = (tmp_path / "src" / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    expect_error(tmp_path / name, "truncated or corrupt", act="quick_gelu")


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_truncated_torchscript_archive(reference, inputs, tmp_path):
    archive = tmp_path / "full.pt"
    torch.jit.trace(reference, (torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE), inputs[1]), check_trace=False).save(
        str(archive))
    data = archive.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) * 2 // 3])
    expect_error(tmp_path / "cut.pt", "truncated or corrupt")


def test_unknown_layout_and_bad_keys(reference, tmp_path):
    save_file({"fc.weight": torch.zeros(3, 3)}, str(tmp_path / "linear.safetensors"))
    expect_error(tmp_path / "linear.safetensors", "unknown layout", act="gelu", preprocess={})
    state = reference.state_dict()
    missing = {k: v for k, v in state.items() if k != "visual.ln_post.weight"}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    expect_error(tmp_path / "missing.safetensors", "missing keys: visual.ln_post.weight", act="gelu", preprocess={})
    extra = {**state, "visual.transformer.resblocks.0.ls_1.gamma": torch.ones(128)}
    save_file(extra, str(tmp_path / "extra.safetensors"))
    expect_error(tmp_path / "extra.safetensors", "unexpected keys: visual.transformer.resblocks.0.ls_1", act="gelu", preprocess={})
    wrong = {**state, "ln_final.bias": torch.zeros(65)}
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    expect_error(tmp_path / "wrong.safetensors", r"mis-shaped: ln_final.bias \(65,\)", act="gelu", preprocess={})


def test_unstated_activation_is_an_error_not_a_guess(reference, tmp_path):
    save_file(reference.state_dict(), str(tmp_path / "anon.safetensors"))
    expect_error(tmp_path / "anon.safetensors", "QuickGELU or GELU; pass act=")


def test_directories_without_weights(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "clip", "vision_config": {}, "text_config": {}}))
    expect_error(hf, "Hugging Face CLIPModel directory without weights")
    (tmp_path / "empty").mkdir()
    expect_error(tmp_path / "empty", "neither a Hugging Face CLIPModel")


class Exploit:
    def __reduce__(self):
        return (print, ("this would run at unpickling",))


def test_pickles_that_would_run_code_are_refused(tmp_path):
    torch.save({"visual.proj": torch.zeros(2), "payload": Exploit()}, tmp_path / "evil.pt")
    expect_error(tmp_path / "evil.pt", "refused: it holds Python objects")
    archive = tmp_path / "evil_script.pt"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps(Exploit(), protocol=2))
        z.writestr("evil/code/__torch__/model.py", "")
    expect_error(archive, r"TorchScript archive refused: refusing to load (__builtin__|builtins)\.print")
