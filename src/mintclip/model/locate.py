"""Weights by name (`ViT-B/16`, `openai/clip-vit-base-patch16`, `RN50`): found in the local caches, never downloaded.

The places, in order: `$MINTCLIP_WEIGHTS` (a folder of the user's own), OpenAI clip's `~/.cache/clip`
(open_clip used it too, before it moved to the hub), and the Hugging Face hub cache, where both
transformers (`openai/clip-vit-*`) and open_clip (`timm/*_clip*.openai`, `laion/*`) keep their downloads.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .checkpoints import CheckpointError

HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


@dataclass(frozen=True)
class KnownModel:
    name: str  # open_clip's name, as in known_checkpoints.json
    openai: str  # OpenAI clip's name, as clip.load takes it
    file: str  # what clip.load saves in ~/.cache/clip
    repos: tuple[str, ...]  # Hugging Face repos holding these weights: transformers', then open_clip's

    def aliases(self) -> set[str]:
        names = {self.name, f"{self.name}-quickgelu", self.openai, Path(self.file).stem}
        return {normalise(n) for n in names | set(self.repos) | {r.split("/")[1] for r in self.repos}}


KNOWN_MODELS = (
    KnownModel("RN50", "RN50", "RN50.pt", ("timm/resnet50_clip.openai",)),
    KnownModel("RN101", "RN101", "RN101.pt", ("timm/resnet101_clip.openai",)),
    KnownModel("RN50x4", "RN50x4", "RN50x4.pt", ("timm/resnet50x4_clip.openai",)),
    KnownModel("RN50x16", "RN50x16", "RN50x16.pt", ("timm/resnet50x16_clip.openai",)),
    KnownModel("RN50x64", "RN50x64", "RN50x64.pt", ("timm/resnet50x64_clip.openai",)),
    KnownModel("ViT-B-32", "ViT-B/32", "ViT-B-32.pt",
               ("openai/clip-vit-base-patch32", "timm/vit_base_patch32_clip_224.openai")),
    KnownModel("ViT-B-16", "ViT-B/16", "ViT-B-16.pt",
               ("openai/clip-vit-base-patch16", "timm/vit_base_patch16_clip_224.openai")),
    KnownModel("ViT-L-14", "ViT-L/14", "ViT-L-14.pt",
               ("openai/clip-vit-large-patch14", "timm/vit_large_patch14_clip_224.openai")),
    KnownModel("ViT-L-14-336", "ViT-L/14@336px", "ViT-L-14-336px.pt",
               ("openai/clip-vit-large-patch14-336", "timm/vit_large_patch14_clip_336.openai")),
)
REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")


def normalise(name: str) -> str:
    """One spelling for `ViT-B/16`, `vit-b-16` and `ViT-L/14@336px` / `ViT-L-14-336px`."""
    return name.removeprefix("hf-hub:").lower().replace("/", "-").replace("@", "-")


def known_model(name: str) -> KnownModel | None:
    key = normalise(name)
    return next((m for m in KNOWN_MODELS if key in m.aliases()), None)


def hub_cache() -> Path:
    """Where huggingface_hub keeps its downloads, by the same variables it reads."""
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if hub:
        return Path(hub).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "huggingface" / "hub"


def clip_cache() -> Path:
    return Path.home() / ".cache" / "clip"  # OpenAI clip's and old open_clip's download_root


def _weights_in_snapshot(snapshot: Path) -> Path | None:
    """open_clip's weights file (its config, if any, is read beside it), else a transformers CLIPModel folder.
    Hub files are links into blobs: a link whose blob is missing (an interrupted download) does not count."""
    for name in OPEN_CLIP_WEIGHTS:
        if (snapshot / name).is_file():
            return snapshot / name
    if (snapshot / "config.json").is_file() and any((snapshot / n).is_file() for n in HF_WEIGHTS):
        return snapshot
    return None


def _in_hub(repo: str, cache: Path) -> Path | None:
    """The snapshot `refs/main` names first, then the others, newest first; an unreadable cache holds nothing."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshots, main = folder / "snapshots", folder / "refs" / "main"
    try:
        if not snapshots.is_dir():
            return None
        first = [snapshots / main.read_text().strip()] if main.is_file() else []
        rest = sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        return next((found for s in dict.fromkeys(first + rest) if (found := _weights_in_snapshot(s))), None)
    except OSError:
        return None


def _mintclip_folder() -> Path | None:
    folder = os.environ.get("MINTCLIP_WEIGHTS")
    return Path(folder).expanduser() if folder else None


def locate_weights(name_or_path: str | Path) -> Path:
    """An existing path as is; else a model name looked up in the local caches (never downloaded).

    Known names (any spelling of KNOWN_MODELS: `ViT-B/16`, `ViT-B-16`, `openai/clip-vit-base-patch16`, ...)
    are looked for in $MINTCLIP_WEIGHTS (`ViT-B-16.pt`, `ViT-B-16.safetensors` or a folder `ViT-B-16/`
    or `clip-vit-base-patch16/`), ~/.cache/clip (`ViT-B-16.pt`) and the hub cache (each of its repos);
    any other `org/name` in the hub cache only. A miss is a CheckpointError listing where it looked.
    """
    path = Path(name_or_path).expanduser()
    try:
        if path.exists():
            return path
    except OSError:  # e.g. a folder on the way is unreadable: reading it names the problem
        return path
    name = str(name_or_path)
    folder = _mintclip_folder()
    if folder is not None and (folder / name).exists():
        return folder / name
    model, cache = known_model(name), hub_cache()
    if model is not None:
        return _locate_known(name, model, folder, cache)
    repo = name.removeprefix("hf-hub:")
    if REPO_ID.fullmatch(repo) and not repo.endswith(CHECKPOINT_SUFFIXES):
        if found := _in_hub(repo, cache):
            return found
        raise CheckpointError(name, f"no such file or directory, and no download of the Hugging Face repo {repo} "
                                    f"in {cache}/models--{repo.replace('/', '--')} (mintclip never downloads); "
                                    f"known model names: {', '.join(m.openai for m in KNOWN_MODELS)}")
    raise CheckpointError(name, "no such file or directory")


def _locate_known(name: str, model: KnownModel, folder: Path | None, cache: Path) -> Path:
    own = [model.file, f"{model.name}.safetensors", model.name,
           *(r.split("/")[1] for r in model.repos if r.startswith("openai/"))]
    if folder is not None:
        for candidate in own:
            if (folder / candidate).exists():
                return folder / candidate
    if (clip_cache() / model.file).is_file():
        return clip_cache() / model.file
    for repo in model.repos:
        if found := _in_hub(repo, cache):
            return found
    repos = ", ".join(f"models--{r.replace('/', '--')}" for r in model.repos)
    raise CheckpointError(name, f"not in the local caches (mintclip never downloads); looked for the {model.openai} "
                                f"weights in $MINTCLIP_WEIGHTS ({folder or 'not set'}) as {', '.join(own)}; "
                                f"in {clip_cache()} as {model.file}; in {cache} as {repos} "
                                f"({' or '.join(OPEN_CLIP_WEIGHTS)}, or config.json with {' or '.join(HF_WEIGHTS)}); "
                                "download them once (OpenAI clip, open_clip or huggingface-cli) or pass a path")
