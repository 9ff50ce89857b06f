"""shiftbench's tiny CLIP: contrastive image-caption training from scratch on a web-like corpus.

The model is a real CLIP in mintclip's own checkpoint layout (the real BPE tokenizer and its full
vocabulary, a small ViT), so every method and every loading path runs on it unchanged. Its corpus
(corpus.py) mixes photos with styled images and captions that name style and rendering, as real CLIP's
web data does, and leaves out what the shifted domains hold that the web would not have shown it.
Reproducible: the images come from `corpus_rng(seed, ...)`, the captions, crops and batches from
generators seeded by `TrainConfig.seed`; with the same thread count the same weights come out.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..adapt.prompts import encode_class_prompts, get_tokenizer
from ..data import template_set
from ..data.views import ViewMaker
from ..model import CLIP, CLIPConfig, Preprocess, TextConfig, VisionConfig, save_clip
from .corpus import CorpusItem, CorpusMix, corpus_caption, corpus_image
from .render import CLASSES, DOMAINS, image_rng, render

CHECKPOINT = "shiftbench_vit_tiny.safetensors"  # in mintclip/assets
IMAGE_SIZE = 48  # the model's input
DATA_SIZE = 96  # the images the demo writes, resized to IMAGE_SIZE by the usual preprocessing
HELD_OUT_SEED = 1  # training renders with TrainConfig.seed (0); every evaluation with seeds >= 1


def shiftbench_config() -> CLIPConfig:
    """ViT width 128, 6 blocks, 6x6 patches of 8 px; text width 128, 4 layers; 64-d joint space."""
    vision = VisionConfig("vit", width=128, layers=6, heads=2, image_size=IMAGE_SIZE, patch_size=8)
    return CLIPConfig(embed_dim=64, vision=vision, text=TextConfig(width=128, layers=4, heads=2), act="gelu",
                      preprocess=Preprocess(IMAGE_SIZE))


def shipped_checkpoint() -> Path:
    return Path(str(resources.files("mintclip.assets") / CHECKPOINT))


@dataclass
class TrainConfig:
    steps: int = 8000
    batch: int = 96
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 200
    per_class: int = 1200  # training images per class, rendered once, re-cropped every epoch
    render_size: int = 64  # crops of these are resized to the model's 48 px
    min_crop: float = 0.7  # random resized crops cover 70-100% of the image
    mix: CorpusMix = field(default_factory=CorpusMix)
    seed: int = 0
    eval_every: int = 500
    eval_per_class: int = 10


def _render_corpus(job: tuple[int, int, int, int, CorpusMix]) -> tuple[np.ndarray, CorpusItem]:
    image, item = corpus_image(*job)
    return np.asarray(image.convert("RGB"), dtype=np.uint8), item


def render_training_set(per_class: int, seed: int, size: int, mix: CorpusMix,
                        workers: int | None = None) -> tuple[Tensor, list[CorpusItem]]:
    """Corpus images uint8 (N, 3, size, size) and what their captions may say, rendered in parallel processes."""
    jobs = [(seed, label, index, size, mix) for label in range(len(CLASSES)) for index in range(per_class)]
    with Pool(workers or os.cpu_count() or 1) as pool:
        rendered = pool.map(_render_corpus, jobs, chunksize=64)
    images = torch.from_numpy(np.stack([array for array, _ in rendered])).permute(0, 3, 1, 2).contiguous()
    return images, [item for _, item in rendered]


def init_for_training(model: CLIP) -> None:
    """OpenAI's initialisation (CLIP `initialize_parameters`) for both towers, biases zero. The model's own
    construction is meant for loading weights: its default Linear biases would outweigh the 0.02-scale
    token embeddings, so every caption would start with the same features and learning would stall."""
    for tower, width in ((model.visual, model.config.vision.width), (model.text, model.config.text.width)):
        proj_std, attn_std, fc_std = width**-0.5 * (2 * len(tower.blocks)) ** -0.5, width**-0.5, (2 * width) ** -0.5
        for block in tower.blocks:
            torch.nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            torch.nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            torch.nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            torch.nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.bias is not None:
            torch.nn.init.zeros_(module.bias)
    torch.nn.init.normal_(model.text.text_projection, std=model.config.text.width**-0.5)


def normalise(images: Tensor, preprocess: Preprocess) -> Tensor:
    """[0, 1] images (B, 3, S, S) -> CLIP's normalised input."""
    mean = torch.tensor(preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std).view(1, 3, 1, 1)
    return (images - mean) / std


def random_resized_crops(images: Tensor, size: int, min_scale: float, generator: torch.Generator) -> Tensor:
    """uint8 (B, 3, S, S) -> float [0, 1] (B, 3, size, size): a crop of min_scale..1 of the area, aspect
    3/4..4/3, flipped half the time; the training-time cousin of the test-time views."""
    batch, _, height, width = images.shape
    out = torch.empty(batch, 3, size, size)
    scale = min_scale + (1 - min_scale) * torch.rand(batch, generator=generator)
    log_ratio = (torch.rand(batch, generator=generator) - 0.5) * 2 * math.log(4 / 3)
    flip = torch.rand(batch, generator=generator) < 0.5
    corner = torch.rand(batch, 2, generator=generator)
    for i in range(batch):
        area, ratio = scale[i] * height * width, math.exp(log_ratio[i])
        w = min(width, max(1, round(math.sqrt(area * ratio))))
        h = min(height, max(1, round(math.sqrt(area / ratio))))
        top, left = int(corner[i, 0] * (height - h + 1)), int(corner[i, 1] * (width - w + 1))
        crop = images[i:i + 1, :, top:top + h, left:left + w].float() / 255
        crop = F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        out[i] = crop[0].flip(-1) if flip[i] else crop[0]
    return out.clamp(0, 1)


def domain_images(domain: str, per_class: int, seed: int) -> list[tuple[Image.Image, int]]:
    """(image, label) as the demo writes them (96 px), per_class of each class, in label order."""
    return [(render(label, domain, image_rng(seed, domain, label, index), DATA_SIZE)[0], label)
            for label in range(len(CLASSES)) for index in range(per_class)]


def first_views(images: list[tuple[Image.Image, int]]) -> tuple[Tensor, Tensor]:
    """View 0 as the engine makes it (resize and centre crop: the same for any seed and index),
    (N, 3, 48, 48), and the labels (N,)."""
    view_zero = ViewMaker(n_views=1, size=IMAGE_SIZE)
    views = torch.cat([view_zero(image, 0, index) for index, (image, _) in enumerate(images)])
    return views, torch.tensor([label for _, label in images])


def held_out_views(domain: str, per_class: int, seed: int = HELD_OUT_SEED) -> tuple[Tensor, Tensor]:
    return first_views(domain_images(domain, per_class, seed))


@torch.no_grad()
def zero_shot_accuracy(model: CLIP, views: Tensor, labels: Tensor,
                       templates: Sequence[str] = ("a photo of a {}.",)) -> float:
    """Top-1 (%) over shiftbench's classes of "a photo of a {}." (or of the mean of `templates`)."""
    text = encode_class_prompts(model, list(CLASSES), list(templates))
    image = F.normalize(model.encode_image(views.to(model.device)).float(), dim=-1)
    return 100.0 * float(((image @ text.T).argmax(-1).cpu() == labels).float().mean())


def contrastive_loss(model: CLIP, images: Tensor, tokens: Tensor, same_caption: Tensor) -> Tensor:
    """CLIP's symmetric cross-entropy; a caption that occurs twice in the batch has two positives."""
    logits = model(images, tokens)  # (B, B)
    targets = same_caption.float() / same_caption.sum(-1, keepdim=True)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def train(config: TrainConfig, out: str | Path | None = None, log: Callable[[str], None] = print) -> CLIP:
    """Train from scratch; writes the checkpoint (fp16 safetensors) to `out` when given."""
    torch.manual_seed(config.seed)
    model = CLIP(shiftbench_config())
    init_for_training(model)
    tokenizer = get_tokenizer(model.config.text.context_length)
    began = time.perf_counter()
    images, items = render_training_set(config.per_class, config.seed, config.render_size, config.mix)
    log(f"rendered {len(images)} corpus images in {time.perf_counter() - began:.0f} s")
    checks = {domain: held_out_views(domain, config.eval_per_class) for domain in DOMAINS}
    decay = [p for p in model.parameters() if p.ndim >= 2]
    other = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": other, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.98), eps=1e-6)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / config.warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, step / config.steps))))
    generator = torch.Generator().manual_seed(config.seed)
    caption_rng = np.random.default_rng(config.seed)
    for step in range(1, config.steps + 1):
        model.train()
        batch = torch.randint(len(images), (config.batch,), generator=generator)
        crops = normalise(random_resized_crops(images[batch], IMAGE_SIZE, config.min_crop, generator),
                          model.config.preprocess)
        captions = [corpus_caption(items[i], config.mix, caption_rng) for i in batch.tolist()]
        same = torch.tensor([[a == b for b in captions] for a in captions])
        loss = contrastive_loss(model, crops, tokenizer(captions), same)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % config.eval_every == 0 or step == config.steps:
            model.eval()
            accuracy = "  ".join(f"{d} {zero_shot_accuracy(model, *checks[d]):.1f}" for d in DOMAINS)
            ensemble = "  ".join(f"{d} {zero_shot_accuracy(model, *checks[d], template_set('openai_80')):.1f}"
                                 for d in ("sketch", "rendition"))
            log(f"step {step}/{config.steps}  loss {loss.item():.3f}  scale {model.logit_scale.exp().item():.1f}  "
                f"zero-shot %: {accuracy}  80-template ensemble %: {ensemble}  ({time.perf_counter() - began:.0f} s)")
            if out is not None:  # a long run that is stopped still leaves its latest weights
                save_clip(model, out, dtype=torch.float16)
    model.eval().requires_grad_(False)
    if out is not None:
        log(f"wrote {out} ({Path(out).stat().st_size / 2**20:.1f} MiB)")
    return model
