"""MetaTPT (Lei et al., arXiv 2512.12268), DESIGNED FROM THE PAPER'S ABSTRACT: no official code is public.

The abstract: a meta-learned self-supervised auxiliary task learns parameterised augmentations for each
sample; an inner loop learns that task, which generates informative views, and an outer loop tunes the
prompt by enforcing consistency across those views. Every concrete choice below is mintclip's, listed
with its reason in docs/methods.md § MetaTPT; none is known to be the authors'.

Per test image (episodic):
1. inner loop (the auxiliary task, no labels): the meta-learned augmentation network makes K affine
   views of the image, each view's 2x3 transform a function of the image's feature and a learned code;
   one SGD step on a copy of that network lowers the mean entropy of the views' predictions under the
   starting prompt, so the views move toward ones in which the image's class is recognisable;
2. outer loop: the context takes one step on the marginal entropy of the adapted views and the original
   (their consistency, TPT's loss), normalised by the gradient's RMS so that it is differentiable;
3. prediction: the tuned prompt on the original view.
Meta-training (`mintclip train-prompts --method metatpt`) learns the augmentation network on labelled
source images: the loss is the cross-entropy of step 3's prediction, differentiated through the prompt
step (second order) and, first-order, through the inner step. The starting context is not learned.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..data import TestSet
from ..model import CLIP
from .base import MethodConfig, register
from .coop import CoOpPromptLearner, CoOpTraining, TrainedPromptsMethod, read_prompt_config
from .losses import entropy, marginal_entropy
from .prompts import context_words, prompt_state, prompts_path

DESIGNED = "designed from the MetaTPT abstract (arXiv 2512.12268): no official code is public"


class AugmentationNet(nn.Module):
    """K views of one image: theta_k = I + bound * tanh(MLP([feature; code_k])) (2x3), warped with
    reflection padding; near the identity at the start."""

    def __init__(self, feature_dim: int, n_views: int = 16, code_dim: int = 16, hidden: int = 64,
                 bound: float = 0.3) -> None:
        super().__init__()
        self.bound = bound
        self.codes = nn.Parameter(torch.randn(n_views, code_dim))
        self.mlp = nn.Sequential(nn.Linear(feature_dim + code_dim, hidden), nn.ReLU(), nn.Linear(hidden, 6))
        nn.init.normal_(self.mlp[2].weight, std=0.1)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, image: Tensor, feature: Tensor) -> Tensor:
        """image (1, 3, S, S) normalised, feature (D,) -> views (K, 3, S, S)."""
        codes = self.codes.to(image.dtype)
        inputs = torch.cat([feature.to(image.dtype).expand(len(codes), -1), codes], dim=-1)
        identity = torch.eye(2, 3, dtype=image.dtype, device=image.device)
        theta = identity + self.bound * torch.tanh(self.mlp(inputs)).view(-1, 2, 3)  # (K, 2, 3)
        grid = F.affine_grid(theta, [len(codes), *image.shape[1:]], align_corners=False)
        return F.grid_sample(image.expand(len(codes), -1, -1, -1), grid, padding_mode="reflection",
                             align_corners=False)


class MetaTPTLearner(CoOpPromptLearner):
    """The starting context (fixed) and the augmentation network (meta-learned)."""

    def __init__(self, model: CLIP, classnames: list[str], ctx_init: str | None = "a photo of a", n_views: int = 16,
                 bound: float = 0.3, inner_lr: float = 0.1, outer_lr: float = 5e-3) -> None:
        super().__init__(model, classnames, ctx_init=context_words(ctx_init))
        self.ctx.requires_grad_(False)  # not meta-learned: the row stays comparable with TPT's
        self.augment = AugmentationNet(model.config.embed_dim, n_views, bound=bound).to(model.device)
        self.inner_lr, self.outer_lr = inner_lr, outer_lr

    def encode(self, images: Tensor) -> Tensor:
        return F.normalize(self.model.encode_image(images).float(), dim=-1)

    @functools.cached_property
    def start_text(self) -> Tensor:
        """(C, D) class features of the starting context, which nothing updates: one text pass per set."""
        with torch.no_grad():
            return self()

    def tuned_logits(self, image: Tensor, scale: Tensor, meta: bool = False) -> Tensor:
        """image (1, 3, S, S) -> (C,) logits of the original view with the tuned prompt. meta: keep the graph
        from them to the augmentation network (meta-training)."""
        with torch.no_grad():
            feature = self.encode(image)[0]  # (D,), which the network does not change: encoded once
        start_text = self.start_text
        network = dict(self.augment.named_parameters())
        copy = {name: p.detach().clone().requires_grad_() for name, p in network.items()}
        with torch.enable_grad():
            views = functional_call(self.augment, copy, (image, feature))
            inner = entropy(scale * self.encode(views) @ start_text.T).mean()  # the auxiliary task
            grads = torch.autograd.grad(inner, list(copy.values()))
        adapted = {name: network[name] + (copy[name] - self.inner_lr * g - network[name]).detach()
                   for (name, g) in zip(copy, grads)}  # the adapted values; first-order gradient to the network
        with torch.set_grad_enabled(meta):
            views = functional_call(self.augment, adapted, (image, feature))
            features = torch.cat([feature[None], self.encode(views)])  # (1 + K, D)
        with torch.enable_grad():
            ctx = self.ctx.detach().requires_grad_()
            outer = marginal_entropy(scale * features @ self(ctx).T)  # consistency across the views
            grad, = torch.autograd.grad(outer, ctx, create_graph=meta)
            tuned = ctx - self.outer_lr * grad / (grad.pow(2).mean().sqrt() + 1e-12)
            return scale * feature @ self(tuned).T

    def batch_logits(self, images: Tensor, scale: Tensor) -> Tensor:
        """Meta-training: the second-order step needs attention's plain formula (fused kernels have no
        double backward)."""
        with sdpa_kernel(SDPBackend.MATH):
            return torch.stack([self.tuned_logits(image[None], scale, meta=True) for image in images])

    def learned(self) -> dict[str, Tensor]:
        return {f"augment.{name}": p for name, p in self.augment.named_parameters()}


@dataclasses.dataclass
class MetaTPTTraining(CoOpTraining):
    """`train-prompts --method metatpt`: mintclip's choices (docs/methods.md § MetaTPT), SGD and the schedule
    as CoOp's."""

    epochs: int = 2
    batch_size: int = 8
    lr: float = 0.01  # the augmentation network's SGD
    n_views: int = 16  # learned views per image
    bound: float = 0.3  # how far a view's transform may move from the identity
    inner_lr: float = 0.1  # the auxiliary task's SGD step on the network's copy
    outer_lr: float = 5e-3  # the context's step, per coordinate on average (TPT's AdamW lr)

    def learner(self, model: CLIP, classnames: list[str]) -> MetaTPTLearner:
        return MetaTPTLearner(model, classnames, self.ctx_init, self.n_views, self.bound, self.inner_lr, self.outer_lr)


@dataclasses.dataclass
class MetaTPTConfig(MethodConfig):
    meta: str | None = None  # the meta-trained augmentation network (`train-prompts --method metatpt`)
    ctx_init: str | None = "a photo of a"  # the starting context; a meta file's own settings win
    bound: float = 0.3
    inner_lr: float = 0.1
    outer_lr: float = 5e-3


@register
class MetaTPT(TrainedPromptsMethod):
    """MetaTPT as designed from its abstract (module docstring): learned views, then one prompt step."""

    name = "metatpt"
    Config = MetaTPTConfig
    source = f"Lei et al., arXiv 2512.12268; {DESIGNED}"
    file_key = "meta"  # the meta-trained augmentation network
    released = False
    official = False

    def setup(self, model: CLIP, test_set: TestSet) -> None:
        self.model = model
        state = prompt_state(self.trained_file)
        hp = {**dataclasses.asdict(self.config),
              **read_prompt_config(prompts_path(self.trained_file)).get("training", {}).get("hp", {})}
        n_views = len(state["augment.codes"]) if "augment.codes" in state else MetaTPTTraining.n_views
        self.learner = MetaTPTLearner(model, test_set.classnames, hp["ctx_init"], n_views, hp["bound"],
                                      hp["inner_lr"], hp["outer_lr"])
        self.load_learned(self.learner, state)

    def predict(self, views: Tensor) -> Tensor:
        with self.autocast():
            return self.learner.tuned_logits(views[:1], self.model.logit_scale.exp().float()).detach().float()

    def notes(self) -> list[str]:
        return [f"metatpt: {DESIGNED}; augmentation network from {prompts_path(self.trained_file)}"]
