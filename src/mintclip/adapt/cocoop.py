"""CoCoOp (Zhou et al., CVPR'22): CoOp's context shifted per image by a small meta-net of the image's
feature, trained before test time (`mintclip train-prompts --method cocoop`), fixed at test time.

Faithful to KaiyangZhou/CoOp@1fbb1a6 `trainers/cocoop.py` (docs/methods.md § CoCoOp): the meta-net is
Linear(D, D // 16) -> ReLU -> Linear(D // 16, W) of the normalised image feature; its output is added to
every context token, and each image's prompts of all classes go through the text encoder. Those prompts
share SOS and the image's context, so the text pass runs that prefix once per image and each class only
its own suffix, cut at the longest EOT (TextPromptLearner with K = B contexts): exact, and the B images
of a batch in one pass.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import torch
from torch import Tensor, nn

from ..data import TestSet
from ..model import CLIP
from .base import MethodConfig, register
from .coop import CoOpPromptLearner, CoOpTraining, TrainedPromptsMethod
from .prompts import prompt_state, prompts_path


class CoCoOpPromptLearner(CoOpPromptLearner):
    """`forward(image_features)`: (B, D) normalised -> (B, C, D) normalised class features per image."""

    def __init__(self, model: CLIP, classnames: list[str], n_ctx: int = 4, ctx_init: str | None = "a photo of a",
                 ctx_vectors: Tensor | None = None) -> None:
        super().__init__(model, classnames, n_ctx, ctx_init, ctx_vectors, position="end")
        vis_dim, ctx_dim = model.config.embed_dim, model.config.text.width
        self.meta_net = nn.Sequential(OrderedDict([  # the names of the released checkpoints' state_dict
            ("linear1", nn.Linear(vis_dim, vis_dim // 16)), ("relu", nn.ReLU()),
            ("linear2", nn.Linear(vis_dim // 16, ctx_dim))])).to(model.device)

    def forward(self, image_features: Tensor) -> Tensor:
        bias = self.meta_net(image_features.to(self.ctx.dtype))  # (B, W)
        return super().forward(self.ctx[None] + bias[:, None])  # contexts (B, n_ctx, W) -> (B, C, D)

    def logits(self, features: Tensor, scale: Tensor) -> Tensor:
        """(B, D) -> (B, C): each image against its own class features."""
        return scale * torch.einsum("bd,bcd->bc", features, self(features).float())


@dataclasses.dataclass
class CoCoOpConfig(MethodConfig):
    # `train-prompts --method cocoop` output, or a released CoCoOp run (prompt_learner/model.pth.tar-N);
    # the method needs one: an untrained meta-net is random
    prompts: str | None = None


@dataclasses.dataclass
class CoCoOpTraining(CoOpTraining):
    """configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml; the rest as CoOp's (Dassl's defaults)."""

    epochs: int = 10  # OPTIM.MAX_EPOCH
    batch_size: int = 1  # DATALOADER.TRAIN_X.BATCH_SIZE

    def learner(self, model: CLIP, classnames: list[str]) -> CoCoOpPromptLearner:
        if self.class_token_position != "end":
            raise ValueError("cocoop: the class token is at the end (its code has no other position)")
        return CoCoOpPromptLearner(model, classnames, self.n_ctx, self.ctx_init)


@register
class CoCoOp(TrainedPromptsMethod):
    """The trained context and meta-net as a classifier on the original view (CoCoOp's test pass)."""

    name = "cocoop"
    Config = CoCoOpConfig
    source = "KaiyangZhou/CoOp@1fbb1a6 trainers/cocoop.py; configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml"

    def setup(self, model: CLIP, test_set: TestSet) -> None:
        self.model = model
        state = prompt_state(self.trained_file)
        ctx = state.get("ctx")
        self.learner = CoCoOpPromptLearner(model, test_set.classnames, ctx_vectors=None if ctx is None else ctx.to(model.device))
        self.load_learned(self.learner, state)

    @torch.no_grad()
    def predict(self, views: Tensor) -> Tensor:
        features = self.encode_views(views[:1])  # (1, D)
        with self.autocast():
            return self.learner.logits(features, self.model.logit_scale.exp().float())[0]  # (C,)

    def notes(self) -> list[str]:
        return [f"cocoop: context and meta-net from {prompts_path(self.trained_file)}"]
