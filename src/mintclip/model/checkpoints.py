"""Read a CLIP checkpoint, whatever its format, into one state dict in the OpenAI layout.

The format is told by content, never by file name: a TorchScript zip (read by the restricted
unpickler), a safetensors file, a `torch.save` file (weights-only unpickling, never a fallback to
unsafe loading), a Hugging Face `CLIPModel` directory, or an open_clip hub directory. Each reader
also returns the settings the file itself states (activation, heads, preprocessing), with where
they came from.
"""

from __future__ import annotations

import json
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from .torchscript import ForbiddenObject, is_torchscript_zip, read_torchscript

MAX_SAFETENSORS_HEADER = 100_000_000  # safetensors' own limit on the JSON header
IGNORED_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
HF_BLOCK = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
            "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
HF_RENAME = {
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm": "visual.ln_pre",  # sic: HF's spelling
    "vision_model.post_layernorm": "visual.ln_post",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm": "ln_final",
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line naming the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")


@dataclass
class RawCheckpoint:
    path: Path  # what the user named: a file or a directory
    weights: Path  # the file holding the tensors (hashed to recognise known checkpoints)
    format: str
    state_dict: dict[str, Tensor]  # OpenAI layout, floating tensors in fp32
    stated: dict[str, Any] = field(default_factory=dict)  # act / heads / preprocess / eps / config
    source: str = ""  # where `stated` came from


def read_checkpoint(path: str | Path) -> RawCheckpoint:
    """Every problem, an unreadable file included, is a one-line CheckpointError naming the path."""
    path = Path(path)
    try:
        if not path.exists():
            raise CheckpointError(path, "no such file or directory")
        if not path.is_dir() and not path.is_file():
            raise CheckpointError(path, "not a regular file or a directory")
        raw = _read_directory(path) if path.is_dir() else _read_file(path, path)
    except OSError as e:
        raise CheckpointError(e.filename or path, f"cannot read it ({e.strerror or e})") from None
    raw.state_dict = normalise(raw.state_dict)
    return raw


def _read_directory(path: Path) -> RawCheckpoint:
    if (path / "config.json").is_file():
        config = _read_json(path / "config.json")
        if config.get("model_type") == "clip" or {"vision_config", "text_config"} <= config.keys():
            return _read_hf(path, config)
    if (path / "open_clip_config.json").is_file():
        for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            if (path / name).is_file():
                return _read_file(path / name, path)
        raise CheckpointError(path, "open_clip directory without weights "
                                    "(expected open_clip_model.safetensors or open_clip_pytorch_model.bin)")
    raise CheckpointError(path, "a directory, but neither a Hugging Face CLIPModel (config.json) "
                                "nor an open_clip model (open_clip_config.json)")


def _read_file(file: Path, named: Path) -> RawCheckpoint:
    """By content: a file's name says nothing (a torch.save pickle called `.safetensors` is a pickle)."""
    with open(file, "rb") as f:
        head = f.read(512)
    size = file.stat().st_size
    if size == 0:
        raise CheckpointError(file, "empty file")
    if head.startswith(b"PK\x03\x04"):
        raw = _read_zip(file, named)
    elif head[8:9] == b"{" and 0 < _header_length(head) <= MAX_SAFETENSORS_HEADER:
        raw = _read_safetensors(file, named, size)
    elif head[:1] == b"\x80":  # a pickle protocol opcode: torch.save's legacy format
        raw = RawCheckpoint(named, file, "torch-pickle", _torch_load(file))
    else:
        raise CheckpointError(file, f"not a checkpoint: {describe_content(head)}; "
                                    "expected a PyTorch, TorchScript or safetensors file")
    sidecar = file.parent / "open_clip_config.json"
    if not raw.stated and sidecar.is_file():
        raw.stated, raw.source = stated_by_open_clip(_read_json(sidecar)), str(sidecar)
    return raw


def _header_length(head: bytes) -> int:
    """safetensors' first 8 bytes: the length of the JSON header that follows, little-endian."""
    return struct.unpack("<Q", head[:8])[0]


def describe_content(head: bytes) -> str:
    """What a file that is no checkpoint looks like, from its first bytes: usually a download gone wrong."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html")) or b"<html" in text:
        return "looks like an HTML page (a failed download?)"
    if text.startswith(b"<?xml"):
        return "looks like an XML document (a storage service's error reply? a failed download?)"
    if text.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the weights (fetch them with git lfs pull)"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip-compressed file (decompress it first)"
    if head[257:262] == b"ustar":
        return "a tar archive (extract it first)"
    decoded = head.decode("utf-8", errors="replace")  # one replacement: a character cut at 512 bytes
    if decoded.count("\ufffd") <= 1 and all(c.isprintable() or c in "\t\r\n\ufffd" for c in decoded):
        kind = "a JSON file" if text.startswith((b"{", b"[")) else "a text file"
        return f"looks like {kind} (starts {decoded.strip()[:40]!r})"
    return f"unrecognised content (starts with bytes {head[:8].hex(' ')})"


def _read_zip(file: Path, named: Path) -> RawCheckpoint:
    """A corrupt archive fails in the zip reader or in unpickling, with nearly any exception type."""
    try:
        with zipfile.ZipFile(file) as archive:
            names = archive.namelist()
            if not any(n.endswith("data.pkl") for n in names):
                raise CheckpointError(file, "a zip archive, but not a PyTorch or TorchScript checkpoint "
                                            "(no data.pkl in it)")
            if not is_torchscript_zip(names):
                return RawCheckpoint(named, file, "torch-zip", _torch_load(file))
            tensors, classes = read_torchscript(archive)
    except CheckpointError:
        raise
    except ForbiddenObject as e:
        raise CheckpointError(file, f"TorchScript archive refused: {e}") from None
    except Exception as e:  # of any type: see the docstring
        raise CheckpointError(file, f"truncated or corrupt archive ({type(e).__name__}: {e})") from None
    # OpenAI's `clip.load` preprocesses every TorchScript archive the same way (bicubic, OpenAI mean/std).
    stated: dict[str, Any] = {"preprocess": {}}
    if "QuickGELU" in classes or "GELU" in classes:
        stated["act"] = "quick_gelu" if "QuickGELU" in classes else "gelu"
    return RawCheckpoint(named, file, "torchscript", tensors, stated,
                         "TorchScript archive (module classes it names; OpenAI clip.load's preprocessing)")


def _read_safetensors(file: Path, named: Path, size: int) -> RawCheckpoint:
    needed = _safetensors_size(file)
    if needed is not None and needed > size:
        raise CheckpointError(file, f"truncated or corrupt safetensors file (its header promises {needed} bytes, "
                                    f"the file has {size}: an interrupted download?)")
    try:
        with safe_open(str(file), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(file, f"truncated or corrupt safetensors file ({e})") from None
    raw = RawCheckpoint(named, file, "safetensors", tensors)
    if "mintclip_config" in metadata:
        raw.stated, raw.source = {"config": json.loads(metadata["mintclip_config"])}, "mintclip metadata in the file"
    return raw


def _safetensors_size(file: Path) -> int | None:
    """The size the header promises (8 + header + the furthest tensor's end); None if the header is unreadable."""
    with open(file, "rb") as f:
        length = _header_length(f.read(8))
        header = f.read(length)
    if len(header) < length:
        return 8 + length
    try:
        entries = json.loads(header).values()
        return 8 + length + max((int(e["data_offsets"][1]) for e in entries if isinstance(e, dict)
                                 and "data_offsets" in e), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None


def _torch_load(file: Path) -> dict[str, Tensor]:
    """Weights-only unpickling from an open file (a path named `.safetensors` would send torch.load to
    safetensors). A corrupt pickle fails with nearly any exception type, so every one is caught."""
    with open(file, "rb") as f:
        try:
            obj = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # of any type: see the docstring
            reason = unpickling_reason(e)
            if "GLOBAL" in reason:
                raise CheckpointError(file, "refused: it holds Python objects beyond plain tensors and containers "
                                            f"({reason}); mintclip never unpickles arbitrary objects: convert it "
                                            "to safetensors where you trust it") from None
            raise CheckpointError(file, f"truncated or corrupt PyTorch file ({reason})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not any(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(file, "holds no state dict of tensors")
    return obj


def unpickling_reason(error: BaseException) -> str:
    """The sentence of a torch.load failure that says what is wrong, without PyTorch's advice to retry
    with weights_only=False or to allow-list the object (either would run whatever the file holds)."""
    advice = ("weights only load failed", "weights_only", "check the documentation", "please file an issue")
    lines = [line.strip().removeprefix("WeightsUnpickler error:").strip() for line in str(error).splitlines()]
    reason = next((line for line in lines if line and not any(a in line.lower() for a in advice)), "")
    reason = reason.split(". ")[0].rstrip(".")  # what follows is how to allow-list the object: advice again
    return f"{type(error).__name__}: {reason}" if reason else type(error).__name__


def _read_hf(path: Path, config: dict[str, Any]) -> RawCheckpoint:
    if (path / "model.safetensors").is_file():
        raw = _read_file(path / "model.safetensors", path)
    elif (path / "model.safetensors.index.json").is_file():
        weight_map = _read_json(path / "model.safetensors.index.json").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(path / "model.safetensors.index.json", "no weight_map naming the shards")
        shards = sorted(set(map(str, weight_map.values())))
        raw = _read_file(path / shards[0], path)
        for shard in shards[1:]:
            raw.state_dict.update(_read_file(path / shard, path).state_dict)
    elif (path / "pytorch_model.bin").is_file():
        raw = _read_file(path / "pytorch_model.bin", path)
    else:
        raise CheckpointError(path, "Hugging Face CLIPModel directory without weights "
                                    "(expected model.safetensors or pytorch_model.bin)")
    raw.format = "hf-clipmodel"
    preprocessor = path / "preprocessor_config.json"
    try:
        raw.stated = stated_by_hf(config, _read_json(preprocessor) if preprocessor.is_file() else None)
    except ValueError as e:
        raise CheckpointError(path / "config.json", str(e)) from None
    raw.source = str(path / "config.json") + (f" and {preprocessor.name}" if preprocessor.is_file() else "")
    return raw


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(file, f"not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(file, "not a JSON object")
    return data


def stated_by_hf(config: dict[str, Any], preprocessor: dict[str, Any] | None) -> dict[str, Any]:
    vision, text = config.get("vision_config", {}), config.get("text_config", {})
    acts = {vision.get("hidden_act", "quick_gelu"), text.get("hidden_act", "quick_gelu")}
    if len(acts) > 1 or not acts <= {"quick_gelu", "gelu"}:
        raise ValueError(f"unsupported hidden_act {sorted(acts)}; mintclip knows quick_gelu and gelu")
    stated: dict[str, Any] = {"act": acts.pop(), "vision_heads": vision.get("num_attention_heads", 12),
                              "text_heads": text.get("num_attention_heads", 8),
                              "eps": vision.get("layer_norm_eps", 1e-5)}
    if preprocessor is not None:
        stated["preprocess"] = {"mean": preprocessor.get("image_mean"), "std": preprocessor.get("image_std"),
                                "interpolation": PIL_RESAMPLE.get(preprocessor.get("resample", 3), "bicubic")}
    return stated


def stated_by_open_clip(config: dict[str, Any]) -> dict[str, Any]:
    """Settings from open_clip's `open_clip_config.json`, with open_clip's own defaults where absent."""
    model, pre = config.get("model_cfg", {}), config.get("preprocess_cfg", {})
    vision, text = model.get("vision_cfg", {}), model.get("text_cfg", {})
    stated: dict[str, Any] = {"act": "quick_gelu" if model.get("quick_gelu") else "gelu",
                              "text_heads": text.get("heads", 8), "vision_head_width": vision.get("head_width", 64)}
    if pre:
        stated["preprocess"] = {k: pre[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in pre}
    return stated


def normalise(state: dict[str, Any]) -> dict[str, Tensor]:
    """Strip `module.`, undo open_clip's `text.` tower prefix and HF's names; floating tensors to fp32."""
    state = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, Tensor)}
    if any(k.startswith(("vision_model.", "text_model.")) for k in state):
        state = hf_to_openai(state)
    if any(k.startswith("text.") for k in state):
        state = {k.removeprefix("text."): v for k, v in state.items()}
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()
            if k.rsplit(".", 1)[-1] not in IGNORED_KEYS and not k.endswith("position_ids")}


def hf_to_openai(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        tower, _, rest = key.partition(".encoder.layers.")
        if rest:
            index, _, name = rest.partition(".")
            prefix = {"vision_model": "visual.", "text_model": ""}[tower] + f"transformer.resblocks.{index}."
            if name.startswith(("self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj.")):
                kind = name.rsplit(".", 1)[1]
                q, k, v = (state[key.replace(name, f"self_attn.{p}_proj.{kind}")] for p in "qkv")
                out[prefix + f"attn.in_proj_{kind}"] = torch.cat([q, k, v])
                continue
            module, _, kind = name.rpartition(".")
            out[prefix + HF_BLOCK.get(module, module) + "." + kind] = value
        elif key in ("visual_projection.weight", "text_projection.weight"):
            out["visual.proj" if key.startswith("visual") else "text_projection"] = value.t().contiguous()
        else:
            module, _, kind = key.rpartition(".")
            if key in HF_RENAME:
                out[HF_RENAME[key]] = value
            elif module in HF_RENAME:
                out[f"{HF_RENAME[module]}.{kind}"] = value
            else:
                out[key] = value  # reported as unexpected when the model is built
    return out
