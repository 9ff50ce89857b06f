"""What defines a CLIP model: tower shapes, activation and preprocessing, with where each came from.

The activation and the preprocessing are not stored in the weights, and a wrong guess costs accuracy
without any error (open_clip#771, #1068). So they are fields of the config, and `sources` records
which file, table or argument set each of them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ..constants import OPENAI_MEAN, OPENAI_STD

ACTIVATIONS = ("quick_gelu", "gelu")


@dataclass
class VisionConfig:
    kind: Literal["vit", "resnet"]
    width: int  # ViT: residual width; ResNet: stem width (64 for RN50)
    layers: int | tuple[int, int, int, int]  # ViT: blocks; ResNet: bottlenecks per stage
    heads: int
    image_size: int
    patch_size: int | None = None  # ViT only
    mlp_width: int | None = None  # ViT only; None means 4 x width

    @property
    def grid(self) -> int:
        """Tokens per side (ViT) or the attention-pool grid (ResNet, 32x down-sampling)."""
        return self.image_size // (self.patch_size or 32)


@dataclass
class TextConfig:
    width: int
    layers: int
    heads: int
    context_length: int = 77
    vocab_size: int = 49408
    mlp_width: int | None = None  # None means 4 x width


@dataclass
class Preprocess:
    image_size: int
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"  # shorter side to image_size, then centre crop


@dataclass
class CLIPConfig:
    embed_dim: int
    vision: VisionConfig
    text: TextConfig
    act: Literal["quick_gelu", "gelu"]
    preprocess: Preprocess
    layer_norm_eps: float = 1e-5
    sources: dict[str, str] = field(default_factory=dict)  # setting -> where it came from

    def __post_init__(self) -> None:
        if self.act not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.act!r}")

    @property
    def arch_name(self) -> str:
        """The usual name of this architecture (ViT-B/16, RN50, ...) or a description of it."""
        v = self.vision
        if v.kind == "resnet":
            known = {(64, (3, 4, 6, 3)): "RN50", (64, (3, 4, 23, 3)): "RN101", (80, (4, 6, 10, 6)): "RN50x4",
                     (96, (6, 8, 18, 8)): "RN50x16", (128, (3, 15, 36, 10)): "RN50x64"}
            return known.get((v.width, tuple(v.layers)), f"ModifiedResNet(width={v.width}, layers={v.layers})")
        size = {(768, 12): "B", (1024, 24): "L", (1280, 32): "H", (1664, 48): "bigG"}.get((v.width, v.layers))
        if size is None:
            return f"ViT(width={v.width}, layers={v.layers}, patch={v.patch_size})"
        name = f"ViT-{size}/{v.patch_size}"
        return name if v.image_size == 224 else f"{name}@{v.image_size}px"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CLIPConfig":
        vision = dict(d["vision"])
        if isinstance(vision["layers"], list):
            vision["layers"] = tuple(vision["layers"])
        pre = dict(d["preprocess"])
        pre["mean"], pre["std"] = tuple(pre["mean"]), tuple(pre["std"])
        return cls(embed_dim=d["embed_dim"], vision=VisionConfig(**vision), text=TextConfig(**d["text"]),
                   act=d["act"], preprocess=Preprocess(**pre), layer_norm_eps=d.get("layer_norm_eps", 1e-5),
                   sources=dict(d.get("sources", {})))
