"""MaPLe (Khattak et al., CVPR'23): prompts in both towers, the vision prompts made from the text ones by
coupling functions, trained before test time (`mintclip train-prompts --method maple`), fixed at test time.

Faithful to muzairkhattak/multimodal-prompt-learning@904dbd7 `trainers/maple.py` and its `clip/model.py`
(docs/methods.md § MaPLe): a text context of n_ctx tokens (the first n_ctx of "a photo of a"; the rest
of those words stay words), and for blocks 1..J-1 deeper text prompts that replace the context's hidden
states; the vision side gets proj(ctx) as n_ctx extra tokens at its input and, at blocks 1..J-1,
proj_k(deeper text prompt k) in their place. Both text passes share the prefix across classes (exact).
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import TestSet
from ..model import CLIP
from .base import MethodConfig, register
from .coop import CoOpPromptLearner, CoOpTraining, TrainedPromptsMethod, read_prompt_config
from .prompts import get_tokenizer, prompt_state, prompts_path


class MaPLePromptLearner(CoOpPromptLearner):
    """Text features as CoOp's plus deeper text prompts; `image_features` runs the prompted image encoder."""

    def __init__(self, model: CLIP, classnames: list[str], n_ctx: int = 2, ctx_init: str | None = "a photo of a",
                 depth: int = 3) -> None:
        text_width, vision_width = model.config.text.width, model.config.vision.width
        if ctx_init and n_ctx <= 4:  # trainers/maple.py: the first n_ctx token embeddings of ctx_init
            tokens = get_tokenizer(model.config.text.context_length)([ctx_init]).to(model.device)
            with torch.no_grad():
                start, words = model.text.token_embedding(tokens)[0, 1:1 + n_ctx], ctx_init
        else:
            start, words = torch.randn(n_ctx, text_width, device=model.device) * 0.02, " ".join(["X"] * n_ctx)
        super().__init__(model, classnames, ctx_vectors=start, prompt_prefix=words)
        self.proj = nn.Linear(text_width, vision_width).to(model.device)
        self.compound_prompts_text = nn.ParameterList(
            [nn.Parameter(torch.randn(n_ctx, text_width, device=model.device) * 0.02) for _ in range(depth - 1)])
        coupling = nn.Linear(text_width, vision_width).to(model.device)  # _get_clones: copies of one layer
        self.compound_prompt_projections = nn.ModuleList([copy.deepcopy(coupling) for _ in range(depth - 1)])

    def deep_prefix(self) -> list[Tensor]:
        return list(self.compound_prompts_text)

    def image_features(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, D) normalised, through the prompted image encoder (grad to the prompts)."""
        deep = [project(prompt) for project, prompt in zip(self.compound_prompt_projections, self.compound_prompts_text)]
        features = self.model.visual(images, extra_tokens=self.proj(self.ctx)[None], deep_tokens=deep)
        return F.normalize(features.float(), dim=-1)


@dataclasses.dataclass
class MaPLeConfig(MethodConfig):
    # `train-prompts --method maple` output, or a released MaPLe run (MultiModalPromptLearner/model.pth.tar-N)
    prompts: str | None = None
    # the words the class prompts were tokenised with (the context replaces the first n_ctx of them, the
    # rest stay words): CTX_INIT of the official configs; a mintclip prompt file records its own
    ctx_init: str | None = "a photo of a"


@dataclasses.dataclass
class MaPLeTraining(CoOpTraining):
    """configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml, the setting of MaPLe's
    domain-generalisation rows (ImageNet 16 shots, tested on its variants); the rest as CoOp's."""

    n_ctx: int = 2  # TRAINER.MAPLE.N_CTX
    depth: int = 3  # TRAINER.MAPLE.PROMPT_DEPTH (9 in the base-to-novel config)
    epochs: int = 2  # OPTIM.MAX_EPOCH (5 in base-to-novel)
    batch_size: int = 4  # DATALOADER.TRAIN_X.BATCH_SIZE
    lr: float = 0.0026  # OPTIM.LR (0.0035 in base-to-novel)

    def learner(self, model: CLIP, classnames: list[str]) -> MaPLePromptLearner:
        if self.class_token_position != "end":
            raise ValueError("maple: the class token is at the end (its code has no other position)")
        return MaPLePromptLearner(model, classnames, self.n_ctx, self.ctx_init, self.depth)


@register
class MaPLe(TrainedPromptsMethod):
    """The trained prompts of both towers as a classifier on the original view (MaPLe's test pass)."""

    name = "maple"
    Config = MaPLeConfig
    source = ("muzairkhattak/multimodal-prompt-learning@904dbd7 trainers/maple.py, clip/model.py; "
              "configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml")

    def check(self, model: CLIP) -> None:
        super().check(model)
        if model.config.vision.kind != "vit":
            raise ValueError("maple prompts a ViT image encoder; this model's is a ResNet")

    def setup(self, model: CLIP, test_set: TestSet) -> None:
        self.model = model
        state = prompt_state(self.trained_file)
        depth = 1 + sum(key.startswith("compound_prompts_text.") for key in state)
        ctx_init = read_prompt_config(prompts_path(self.trained_file)).get("ctx_init", self.config.ctx_init)
        n_ctx = len(state["ctx"]) if "ctx" in state else MaPLeTraining.n_ctx
        self.learner = MaPLePromptLearner(model, test_set.classnames, n_ctx, ctx_init, depth)
        self.load_learned(self.learner, state)
        with torch.no_grad(), self.autocast():
            self.text = self.learner()  # (C, D)

    @torch.no_grad()
    def predict(self, views: Tensor) -> Tensor:
        with self.autocast():
            features = self.learner.image_features(views[:1])  # (1, D)
        return self.model.logit_scale.exp().float() * features[0] @ self.text.T.float()

    def notes(self) -> list[str]:
        return [f"maple: prompts of both towers from {prompts_path(self.trained_file)}"]
