"""Text prompts: fixed class prompts (zero-shot, template ensembles) and the learnable CoOp context.

The learnable prompt of TPT, C-TPT, MINT and DynaPrompt is `[SOS][ctx x n_ctx][class tokens][.][EOT]`
(TPT `clip/custom_clip.py` PromptLearner, class token at the end). Every class shares SOS and the
context, so `TextPromptLearner` runs that prefix once and each class only its own suffix, cut at the
longest EOT: exact (docs/performance.md § Text side: EOT truncation and the shared prefix); on ImageNet's
1000 names 13,005 text tokens instead of 77,000.
"""

from __future__ import annotations

import dataclasses
import pickle
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from ..model import CLIP, Tokenizer
from ..model.torchscript import read_training_checkpoint
from .base import MethodConfig


@dataclasses.dataclass
class PromptTuningConfig(MethodConfig):
    """What every method that tunes a CoOp-style text context at test time shares (TPT, C-TPT, MINT,
    DynaPrompt). The defaults are TPT's (azshue/TPT@63ecbac); a method states where its own differ."""

    # context tokens: tpt_classification.py --n_ctx (default 4); with ctx_init, its word count instead
    n_ctx: int = 4
    # scripts/test_tpt.sh ctx_init=a_photo_of_a ("_" read as spaces); None or "none": N(0, 0.02²) as
    # custom_clip.py PromptLearner does without ctx_init
    ctx_init: str | None = "a photo of a"
    # a CoOp context checkpoint ({'state_dict': {'ctx': ...}}) that starts the context, as TPT's --load
    # (scripts/test_tpt_coop.sh); its row count sets n_ctx
    coop: str | None = None
    # tpt_classification.py --lr default 5e-3, optimiser torch.optim.AdamW(prompt params, lr)
    lr: float = 5e-3
    # AdamW is built without weight_decay, so PyTorch's default 0.01 applies
    weight_decay: float = 0.01
    # tpt_classification.py --tta_steps default 1
    steps: int = 1
    # tpt_classification.py --selection_p default 0.1: int(64 * 0.1) = 6 confident views
    selection: float = 0.1
    # views per image: tpt_classification.py -b 64, the original and AugMixAugmenter's 63 views; the
    # engine makes this many (Method.views_per_image)
    n_views: int = 64


def context_words(ctx_init: str | None) -> str | None:
    """`ctx_init` as the references spell it on their command lines ("a_photo_of_a") -> the words that
    start the context ("a photo of a"); None, "" and "none" -> None (a random start)."""
    if ctx_init is None or ctx_init.strip().lower() in ("", "none"):
        return None
    return ctx_init.replace("_", " ")


def prompt_learner(model: CLIP, classnames: list[str], config: PromptTuningConfig) -> TextPromptLearner:
    """The learnable prompt a config asks for: a CoOp checkpoint's context if `coop`, else `ctx_init`'s words."""
    ctx_vectors = load_coop_context(config.coop) if config.coop else None
    return TextPromptLearner(model, classnames, config.n_ctx, context_words(config.ctx_init), ctx_vectors)


PROMPTS_FILE = "prompts.safetensors"  # what `train-prompts --out DIR` writes in DIR
TEXT_BUCKETS = 4  # most length buckets of a class-prompt pass (measured: docs/performance.md § Text side)


@lru_cache
def get_tokenizer(context_length: int = 77) -> Tokenizer:
    return Tokenizer(context_length=context_length)


def prompt_text(template: str, classname: str) -> str:
    return template.format(classname.replace("_", " "))


@torch.no_grad()
def encode_class_prompts(model: CLIP, classnames: list[str], templates: list[str], batch: int = 1024) -> Tensor:
    """(C, D) L2-normalised class embeddings: each template's normalised embedding, averaged over the
    templates and normalised again (CLIP's ensembling; ZERO, TDA and the Ensemble baseline)."""
    tokenizer = get_tokenizer(model.config.text.context_length)
    total = torch.zeros(len(classnames), model.config.embed_dim, device=model.device)
    for template in templates:
        tokens = tokenizer([prompt_text(template, name) for name in classnames]).to(model.device)
        for start in range(0, len(classnames), batch):
            features = model.encode_text(tokens[start:start + batch]).float()
            total[start:start + batch] += F.normalize(features, dim=-1)
    return F.normalize(total, dim=-1)


def prompts_path(path: str | Path) -> Path:
    """A prompt file, or a folder holding one: `train-prompts`' output (prompts.safetensors) or a released
    CoOp/CoCoOp/MaPLe run (prompt_learner/ or, MaPLe's, MultiModalPromptLearner/model.pth.tar-N, the
    highest N; else model-best.pth.tar)."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / PROMPTS_FILE).is_file():
        return path / PROMPTS_FILE
    learner = next((path / name for name in ("prompt_learner", "MultiModalPromptLearner") if (path / name).is_dir()),
                   path)
    epochs = sorted(learner.glob("model.pth.tar-*"), key=lambda p: int(p.name.rsplit("-", 1)[1])
                    if p.name.rsplit("-", 1)[1].isdigit() else -1)
    if epochs:
        return epochs[-1]
    if (learner / "model-best.pth.tar").is_file():
        return learner / "model-best.pth.tar"
    raise FileNotFoundError(f"{path}: no prompt file ({PROMPTS_FILE}, prompt_learner/model.pth.tar-N or "
                            "model-best.pth.tar)")


def prompt_state(path: str | Path) -> dict[str, Tensor]:
    """The learned tensors of a prompt file by name ('ctx', and e.g. CoCoOp's 'meta_net.linear1.weight'):
    safetensors (`mintclip train-prompts`), a Dassl `model.pth.tar` ({'state_dict': ...}, whose
    token_prefix/suffix buffers are dropped, as CoOp's load_model drops them; MaPLe's, which saves its
    whole model, gives only its 'prompt_learner.' entries, without that prefix), a dict, or a bare context
    tensor. Read with weights-only loading; a Dassl checkpoint whose pickle also holds its scheduler
    object (refused by that) is read by `read_training_checkpoint`, which builds nothing but tensors.
    A folder: see `prompts_path`."""
    path = prompts_path(path)
    if path.suffix == ".safetensors":
        obj: object = load_file(str(path))
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            obj = read_training_checkpoint(str(path))
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if isinstance(obj, Tensor):
        obj = {"ctx": obj}
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a prompt file (no tensors by name)")
    learner = "prompt_learner."
    if any(str(k).startswith(learner) for k in obj):
        obj = {k[len(learner):]: v for k, v in obj.items() if str(k).startswith(learner)}
    return {k: v for k, v in obj.items() if isinstance(v, Tensor) and k not in ("token_prefix", "token_suffix")}


def load_coop_context(path: str | Path) -> Tensor:
    """A prompt file's unified context (n_ctx, width) (see `prompt_state`)."""
    ctx = prompt_state(path).get("ctx")
    if isinstance(ctx, Tensor) and ctx.ndim == 3:
        raise ValueError(f"{path}: a class-specific context (CSC) {tuple(ctx.shape)}; only a unified context "
                         "(n_ctx, width) applies to any set's classes")
    if not isinstance(ctx, Tensor) or ctx.ndim != 2:
        raise ValueError(f"{path}: no CoOp context tensor (n_ctx, width) found (looked for state_dict.ctx, ctx)")
    return ctx.float()


def length_buckets(lengths: list[int], most: int = TEXT_BUCKETS) -> list[tuple[Tensor, int]]:
    """Class prompts grouped by length into at most `most` buckets, each run to its longest: (class rows,
    length) per bucket, shortest first. The cut points minimise the padded tokens (a small dynamic
    programme over the distinct lengths); one bucket is the batch cut at its longest EOT, and each bucket
    more costs another call of every text block, which is why they are few (docs/performance.md § Text
    side)."""
    distinct = sorted(set(lengths))
    count = [lengths.count(n) for n in distinct]
    # cost[b][j]: least padded tokens for the first j distinct lengths in b buckets; cut[b][j]: where the last starts
    cost = [[0.0] + [float("inf")] * len(distinct) for _ in range(most + 1)]
    cut = [[0] * (len(distinct) + 1) for _ in range(most + 1)]
    for b in range(1, most + 1):
        for j in range(1, len(distinct) + 1):
            for i in range(j):
                tokens = cost[b - 1][i] + sum(count[i:j]) * distinct[j - 1]
                if tokens < cost[b][j] and (i > 0 or b == 1):
                    cost[b][j], cut[b][j] = tokens, i
    b, j, ends = min(range(1, min(most, len(distinct)) + 1), key=lambda k: (cost[k][-1], k)), len(distinct), []
    while j > 0:
        ends.append(distinct[j - 1])
        j, b = cut[b][j], b - 1
    lengths_t, bounds = torch.tensor(lengths), [0] + sorted(ends)
    return [(((lengths_t > lo) & (lengths_t <= hi)).nonzero()[:, 0], hi) for lo, hi in zip(bounds, bounds[1:])]


class TextPromptLearner(nn.Module):
    """A learnable context shared by all classes; `forward()` -> (C, D) normalised class features.

    ctx_init: words whose token embeddings start the context ("a photo of a"); ctx_vectors: a CoOp
    context tensor; neither: N(0, 0.02²) with the placeholder "X X X X". `reset()` restores the start.
    prompt_prefix: the words the class prompts are tokenised with before the class name, when they are
    not the context's own (MaPLe: 2 context tokens from "a photo of a", "of a" kept as words).
    """

    def __init__(self, model: CLIP, classnames: list[str], n_ctx: int = 4, ctx_init: str | None = "a photo of a",
                 ctx_vectors: Tensor | None = None, prompt_prefix: str | None = None) -> None:
        super().__init__()
        self.model = model
        tokenizer = get_tokenizer(model.config.text.context_length)
        if ctx_vectors is not None:
            n_ctx = ctx_vectors.shape[0]
        elif ctx_init:
            n_ctx = len(tokenizer.encode(ctx_init))
        placeholder = prompt_prefix or (ctx_init if ctx_init and ctx_vectors is None else " ".join(["X"] * n_ctx))
        tokens = tokenizer([prompt_text(placeholder + " {}.", name) for name in classnames]).to(model.device)
        with torch.no_grad():
            embeddings = model.text.token_embedding(tokens)  # (C, 77, W)
        if ctx_vectors is not None:
            if ctx_vectors.shape[1] != embeddings.shape[-1]:
                raise ValueError(f"CoOp context width {ctx_vectors.shape[1]} != text width {embeddings.shape[-1]}")
            start = ctx_vectors.to(embeddings)
        elif ctx_init:
            start = embeddings[0, 1:1 + n_ctx]
        else:
            start = torch.randn(n_ctx, embeddings.shape[-1], device=model.device) * 0.02
        self.n_ctx = n_ctx
        self.eot_index = tokens.argmax(-1)  # (C,) in the full sequence
        self.length = int(self.eot_index.max()) + 1  # the exact cut: nothing after the longest EOT matters
        self.register_buffer("sos", embeddings[0, :1].clone())  # (1, W)
        self.register_buffer("suffix", embeddings[:, 1 + n_ctx:self.length].clone())  # (C, L - 1 - n_ctx, W)
        self.register_buffer("padded_suffix", embeddings[:, 1 + n_ctx:].clone())  # mintclip.reference.text
        self.register_buffer("ctx_start", start.detach().clone())
        self.ctx = nn.Parameter(start.detach().clone())
        self.suffix_lengths = (self.eot_index - n_ctx).tolist()  # EOT - SOS - context + 1, per class
        self.buckets = self.bucketed(TEXT_BUCKETS)
        self._start_graph: tuple[Tensor, Tensor] | None = None

    def reset(self) -> None:
        with torch.no_grad():
            self.ctx.copy_(self.ctx_start)

    def start_graph(self) -> tuple[Tensor, Tensor]:
        """(a leaf copy of the starting context, its class features with their graph), built on the first
        call (under the caller's autocast) and kept: a method that resets the context for every image
        starts every image from this same forward, so only its backward is per image (retain_graph)."""
        if self._start_graph is None:
            start = self.ctx_start.clone().requires_grad_(True)
            with torch.enable_grad():
                self._start_graph = start, self(start)
        return self._start_graph

    def prefix(self, ctx: Tensor | None = None) -> Tensor:
        """SOS + context: (1 + n_ctx, W) for `self.ctx`, or (K, 1 + n_ctx, W) for K contexts (K, n_ctx, W)."""
        ctx = self.ctx if ctx is None else ctx
        sos = self.sos.expand(*ctx.shape[:-2], -1, -1)  # (1, W) or (K, 1, W)
        return torch.cat([sos, ctx.to(self.sos.dtype)], dim=-2)

    def deep_prefix(self) -> list[Tensor]:
        """Context tokens that replace the prefix's at deeper text blocks (MaPLe); none here."""
        return []

    def bucketed(self, most: int) -> tuple[list[tuple[Tensor, int]], Tensor]:
        """The classes in at most `most` length buckets (`length_buckets`), on the model's device, and the
        order that puts the buckets' rows back in class order."""
        buckets = [(rows.to(self.sos.device), length) for rows, length in length_buckets(self.suffix_lengths, most)]
        return buckets, torch.cat([rows for rows, _ in buckets]).argsort()

    def forward(self, ctx: Tensor | None = None,
                buckets: tuple[list[tuple[Tensor, int]], Tensor] | None = None) -> Tensor:
        """(C, D) normalised class features of `self.ctx`; given K contexts (K, n_ctx, W), (K, C, D) in one
        pass of the text encoder (one prompt per test image of a batch), with grad to them. `buckets`:
        other length buckets than the learner's own (`bucketed`)."""
        groups, order = self.buckets if buckets is None else buckets
        ends = self.eot_index - 1 - self.n_ctx  # (C,) within the suffixes
        parts = self.model.text.encode_prefix_groups(self.prefix(ctx), [(self.suffix[rows, :length], ends[rows])
                                                                         for rows, length in groups],
                                                     self.deep_prefix())
        features = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-2)[..., order, :]
        return F.normalize(features.float(), dim=-1)
