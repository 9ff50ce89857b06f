"""From a checkpoint to a ready CLIP: architecture from tensor shapes, settings from what is known.

The shapes say everything about the architecture except the number of attention heads (OpenAI's
rule: width / 64). They say nothing about the activation or the preprocessing, which are resolved in
this order, each recording its source: an explicit argument, the table of known checkpoints (by
SHA-256), the checkpoint's own config files or metadata, the module classes of a TorchScript archive.
An activation that none of these states is an error, never a guess.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from .checkpoints import CheckpointError, RawCheckpoint, read_checkpoint
from .clip import CLIP
from .config import CLIPConfig, Preprocess, TextConfig, VisionConfig
from .locate import locate_weights
from .tokenizer import Tokenizer


PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")
UNKNOWN_ACT = "unknown: not stated by the checkpoint (pass --act)"


@lru_cache
def known_checkpoints() -> list[dict[str, Any]]:
    text = resources.files("mintclip.assets").joinpath("known_checkpoints.json").read_text()
    return json.loads(text)["checkpoints"]


def lookup_known(sha256: str) -> dict[str, Any] | None:
    for entry in known_checkpoints():
        if sha256 == entry["sha256"] or (entry["match"] == "prefix" and sha256.startswith(entry["sha256"])):
            return entry
    return None


def sha256_of(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _count(state: dict[str, Tensor], pattern: str) -> int:
    return len({m.group(1) for k in state if (m := re.match(pattern, k))})


def infer_config(state: dict[str, Tensor], act: str, stated: dict[str, Any]) -> CLIPConfig:
    """The architecture from tensor shapes; heads from `stated` where the checkpoint says, else width/64."""
    embed_dim = state["text_projection"].shape[1]
    if "visual.proj" in state:
        width, patch = state["visual.conv1.weight"].shape[0], state["visual.conv1.weight"].shape[-1]
        grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        heads = stated.get("vision_heads") or width // stated.get("vision_head_width", 64)
        vision = VisionConfig("vit", width, _count(state, r"visual\.transformer\.resblocks\.(\d+)\."), heads,
                              patch * grid, patch, state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0])
    else:
        width = state["visual.layer1.0.conv1.weight"].shape[0]
        layers = tuple(_count(state, rf"visual\.layer{i}\.(\d+)\.") for i in range(1, 5))
        grid = round((state["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = VisionConfig("resnet", width, layers, width * 32 // 64, grid * 32)
    text_width = state["ln_final.weight"].shape[0]
    text = TextConfig(text_width, _count(state, r"transformer\.resblocks\.(\d+)\."),
                      stated.get("text_heads") or text_width // 64, state["positional_embedding"].shape[0],
                      state["token_embedding.weight"].shape[0], state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0])
    return CLIPConfig(embed_dim, vision, text, act, Preprocess(vision.image_size), stated.get("eps", 1e-5))


def resolve_config(raw: RawCheckpoint, sha256: str, act: str | None = None,
                   preprocess: dict[str, Any] | None = None, require_act: bool = True) -> CLIPConfig:
    """require_act=False (for `mintclip info`) lets an unstated activation through, marked as unknown."""
    known = lookup_known(sha256)
    stated = raw.stated
    if "config" in stated:  # written by save_clip: complete, with its own sources
        config = CLIPConfig.from_dict(stated["config"])
        stated = {"act": config.act, "preprocess": config.preprocess.__dict__, "eps": config.layer_norm_eps,
                  "vision_heads": config.vision.heads, "text_heads": config.text.heads}
    sources: dict[str, str] = {}
    if act is not None:
        resolved_act, sources["act"] = act, "given by the caller"
    elif known is not None:
        resolved_act, sources["act"] = known["act"], f"known checkpoint {known['name']} ({known['tag']})"
    elif "act" in stated:
        resolved_act, sources["act"] = stated["act"], raw.source
    elif not require_act:
        resolved_act, sources["act"] = "quick_gelu", UNKNOWN_ACT
    else:
        raise CheckpointError(raw.path, "not a known checkpoint and it does not say whether it uses QuickGELU "
                                        "or GELU; pass act='quick_gelu' (OpenAI, MetaCLIP, DFN weights) or "
                                        "act='gelu' (LAION, DataComp) (CLI: --act)")
    try:
        config = infer_config(raw.state_dict, resolved_act, stated)
    except (KeyError, IndexError) as e:
        raise CheckpointError(raw.path, f"unknown layout: no CLIP tensor {e} (format {raw.format})") from None
    towers = [("text", config.text)] + ([("vision", config.vision)] if config.vision.kind == "vit" else [])
    for tower, settings in towers:
        if settings.heads < 1 or settings.width % settings.heads:
            raise CheckpointError(raw.path, f"cannot tell the {tower} tower's attention heads: the checkpoint does not "
                                            f"state them and its width {settings.width} does not split into heads "
                                            "of 64 (OpenAI's rule)")
    pre = {}
    if preprocess is not None:
        pre, sources["preprocess"] = preprocess, "given by the caller"
    elif known is not None:
        pre = {k: known[k] for k in PREPROCESS_KEYS}
        sources["preprocess"] = sources["act"]
    elif "preprocess" in stated:
        pre, sources["preprocess"] = stated["preprocess"], raw.source
    else:
        sources["preprocess"] = "default: OpenAI CLIP's (the checkpoint does not state its preprocessing)"
        warnings.warn(f"{raw.path}: preprocessing not stated by the checkpoint; using OpenAI CLIP's "
                      "(bicubic, OpenAI mean/std)", stacklevel=3)
    config.preprocess = Preprocess(config.vision.image_size, **{
        k: tuple(v) if isinstance(v, list) else v for k, v in pre.items() if k in PREPROCESS_KEYS and v is not None})
    config.sources = {**sources, "architecture": f"tensor shapes ({raw.format})", "sha256": sha256}
    return config


def check_state_dict(model: CLIP, state: dict[str, Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    for problem, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped", wrong)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            raise CheckpointError(path, f"{problem}: {', '.join(keys[:3])}{more}")


class DeviceError(ValueError):
    """A device this machine does not have; one line naming it and the way to run on the CPU."""


def check_device(device: str | torch.device) -> torch.device:
    """Before any weights are read: torch's own error for a missing GPU is a 30-line assertion."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"device {device!r} is not a device name (cpu, cuda, cuda:N)") from None
    if dev.type != "cuda":
        return dev
    fix = "run on the CPU with --device cpu or without --gpu"
    if not torch.cuda.is_available():
        why = (f"torch {torch.__version__} built without CUDA" if torch.version.cuda is None else
               f"torch {torch.__version__} built for CUDA {torch.version.cuda}, but no GPU visible: "
               "check nvidia-smi and CUDA_VISIBLE_DEVICES")
        raise DeviceError(f"device {dev} requested but no CUDA device is available ({why}); {fix}")
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise DeviceError(f"device {dev} requested but only {count} CUDA device{'s' * (count > 1)} visible "
                          f"(cuda:0 to cuda:{count - 1}); pick one of those, or {fix}")
    return dev


def load_clip(path: str | Path, device: str | torch.device = "cpu", *, act: str | None = None,
              preprocess: dict[str, Any] | None = None) -> tuple[CLIP, Tokenizer]:
    """A frozen CLIP model (eval mode, fp32, requires_grad off) on `device`, and its tokenizer.

    `path` may also name the weights (`ViT-B/16`, `openai/clip-vit-base-patch16`: see `locate_weights`).
    act / preprocess override what the checkpoint states (preprocess: any of mean, std,
    interpolation, resize_mode). `model.config.sources` says where each setting came from.
    """
    device = check_device(device)
    raw = read_checkpoint(locate_weights(path))
    config = resolve_config(raw, sha256_of(raw.weights), act, preprocess)
    model = CLIP(config)
    check_state_dict(model, raw.state_dict, raw.path)
    model.load_state_dict(raw.state_dict)
    return model.eval().requires_grad_(False).to(device), Tokenizer(context_length=config.text.context_length)


def save_clip(model: CLIP, path: str | Path, dtype: torch.dtype | None = None) -> None:
    """safetensors in the OpenAI layout, with the full config (activation, preprocessing) in its metadata;
    dtype=torch.float16 halves the file (floating tensors only; loading widens them back to fp32)."""
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt", "mintclip_config": json.dumps(model.config.to_dict())})


@dataclass
class CheckpointInfo:
    path: Path
    format: str
    sha256: str
    known_name: str | None
    config: CLIPConfig
    parameters: int

    def lines(self) -> list[str]:
        c, v = self.config, self.config.vision
        tower = (f"ViT  width {v.width}, {v.layers} layers, {v.heads} heads, patch {v.patch_size}"
                 if v.kind == "vit" else f"ModifiedResNet  width {v.width}, stages {list(v.layers)}, "
                                         f"attention-pool heads {v.heads}")
        p = c.preprocess
        return [
            f"file           {self.path}", f"format         {self.format}",
            f"sha256         {self.sha256}", f"known as       {self.known_name or '(not a known checkpoint)'}",
            f"architecture   {c.arch_name}", f"vision         {tower}",
            f"text           width {c.text.width}, {c.text.layers} layers, {c.text.heads} heads, "
            f"context {c.text.context_length}, vocabulary {c.text.vocab_size}",
            f"embed dim      {c.embed_dim}",
            f"activation     {'unknown' if c.sources['act'] == UNKNOWN_ACT else c.act}  (from {c.sources['act']})",
            f"preprocess     {p.image_size}px, {p.interpolation}, resize {p.resize_mode}, mean {list(p.mean)}, "
            f"std {list(p.std)}  (from {c.sources.get('preprocess')})",
            f"parameters     {self.parameters:,}",
        ]


def inspect_checkpoint(path: str | Path, act: str | None = None) -> CheckpointInfo:
    """What a checkpoint is, without loading it into a model: shapes are checked on the meta device.
    `path` may name the weights, as for `load_clip`; every failure is a one-line CheckpointError."""
    raw = read_checkpoint(locate_weights(path))
    sha = sha256_of(raw.weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = resolve_config(raw, sha, act, require_act=False)
    with torch.device("meta"):
        check_state_dict(CLIP(config), raw.state_dict, raw.path)
    known = lookup_known(sha)
    return CheckpointInfo(raw.path, raw.format, sha, f"{known['name']} ({known['tag']})" if known else None,
                          config, sum(v.numel() for v in raw.state_dict.values() if v.is_floating_point()))
