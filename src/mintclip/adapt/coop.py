"""CoOp (Zhou et al., IJCV'22): a context of learned token embeddings shared by every class, trained with
labels on a few shots per class before test time (`mintclip train-prompts --method coop`), then a fixed
classifier on the original view at test time.

Faithful to KaiyangZhou/CoOp@1e5ec09 `trainers/coop.py` (docs/methods.md § CoOp): the prompt is
`[SOS][ctx][class tokens][.][EOT]` with the class token at the end, in the middle (the context split in
halves around it) or at the front; class features are normalised and scored by logit_scale.exp() times
the cosine. With the class token at the end every class shares SOS and the context, so the text pass
runs that prefix once (TextPromptLearner); the other positions run each class prompt whole, cut at the
longest EOT. Both exact.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ..data import TestSet
from ..model import CLIP
from .base import Method, MethodConfig, register
from .prompts import TextPromptLearner, get_tokenizer, load_coop_context, prompt_text, prompts_path
from .zeroshot import ZeroShot

Position = Literal["end", "middle", "front"]


class CoOpPromptLearner(TextPromptLearner):
    """TextPromptLearner with CoOp's CLASS_TOKEN_POSITION; "end" is the parent's shared-prefix pass."""

    def __init__(self, model: CLIP, classnames: list[str], n_ctx: int = 4, ctx_init: str | None = "a photo of a",
                 ctx_vectors: Tensor | None = None, position: Position = "end", prompt_prefix: str | None = None) -> None:
        super().__init__(model, classnames, n_ctx, ctx_init, ctx_vectors, prompt_prefix)
        self.position = position
        tokenizer = get_tokenizer(model.config.text.context_length)
        # class-name token counts, as CoOp's name_lens (the name without its trailing ".")
        name_lens = [len(tokenizer.encode(prompt_text("{}", name))) for name in classnames]
        self.register_buffer("order", torch.tensor([self._order(n) for n in name_lens], device=model.device))

    def _order(self, name_len: int) -> list[int]:
        """Where each position of one class prompt comes from in the end layout [SOS][ctx][name][rest]."""
        n, half = self.n_ctx, self.n_ctx // 2
        ctx, name, rest = range(1, 1 + n), range(1 + n, 1 + n + name_len), range(1 + n + name_len, self.length)
        if self.position == "middle":
            return [0, *ctx[:half], *name, *ctx[half:], *rest]
        if self.position == "front":
            return [0, *name, *ctx, *rest]
        return list(range(self.length))

    def image_features(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, D) normalised: the frozen image encoder, no prompt enters it (no grad)."""
        with torch.no_grad():
            return F.normalize(self.model.encode_image(images).float(), dim=-1)

    def batch_logits(self, images: Tensor, scale: Tensor) -> Tensor:
        """What training scores: (B, 3, H, W) -> (B, C)."""
        return self.logits(self.image_features(images), scale)

    def logits(self, features: Tensor, scale: Tensor) -> Tensor:
        """Normalised image features (B, D) -> (B, C): scale * cos(image, class)."""
        return scale * features @ self().float().T

    def learned(self) -> dict[str, Tensor]:
        """The trained tensors by name, as a released checkpoint's state_dict names them."""
        return {name: p for name, p in self.named_parameters() if p.requires_grad and not name.startswith("model.")}

    def forward(self, ctx: Tensor | None = None) -> Tensor:
        if self.position == "end":
            return super().forward(ctx)
        return F.normalize(self.model.text.encode_embeddings(self.prompts(ctx), self.eot_index,
                                                             length=self.length).float(), dim=-1)

    def prompts(self, ctx: Tensor | None = None) -> Tensor:
        """(C, L, W) token embeddings of every class prompt up to the longest EOT, in CoOp's order: the end
        layout, each class's positions permuted by `order` in one gather."""
        ctx = (self.ctx if ctx is None else ctx).to(self.sos.dtype)
        n_classes, width = self.suffix.shape[0], self.suffix.shape[-1]
        end = torch.cat([self.sos.expand(n_classes, 1, -1), ctx.expand(n_classes, -1, -1), self.suffix], dim=1)
        return end.gather(1, self.order[..., None].expand(-1, -1, width))


def save_prompts(path: str | Path, tensors: dict[str, Tensor], config: dict[str, Any]) -> None:
    """Trained prompts as safetensors: the tensors by name ('ctx' (n_ctx, W), ...) and, in the metadata,
    everything that made them ('mintclip_prompts': the method, n_ctx, position, training settings, the
    sampled files)."""
    save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(path),
              metadata={"mintclip_prompts": json.dumps(config)})


def read_prompt_config(path: str | Path) -> dict[str, Any]:
    """The metadata `save_prompts` wrote; {} for any other context file (a released CoOp checkpoint)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    with safe_open(str(path), "pt") as handle:
        return json.loads((handle.metadata() or {}).get("mintclip_prompts", "{}"))


@dataclasses.dataclass
class CoOpConfig(MethodConfig):
    # a trained context: `train-prompts` output (folder or prompts.safetensors) or a released CoOp
    # checkpoint (prompt_learner/model.pth.tar-N); None: the untrained start, i.e. ctx_init's words
    prompts: str | None = None
    # the start when no prompts are given (the seed table's CoOp: 4 tokens from "a photo of a",
    # configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml CTX_INIT); a prompt file's own setting wins
    n_ctx: int = 4
    ctx_init: str | None = "a photo of a"
    # TRAINER.COOP.CLASS_TOKEN_POSITION (scripts/coop/main.sh CTP); a mintclip prompt file records its own,
    # a released checkpoint does not (its run folder's name says it: ..._ctpend)
    class_token_position: Position = "end"


@dataclasses.dataclass
class CoOpTraining:
    """`train-prompts --method coop` settings: configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml, the seed table's
    ImageNet setting, and Dassl's defaults (dassl/config/defaults.py) for what that file leaves out."""

    n_ctx: int = 4  # the word count of CTX_INIT "a photo of a" (without it: TRAINER.COOP.N_CTX, 16 by default)
    ctx_init: str | None = "a photo of a"  # CTX_INIT; None: N(0, 0.02²) under the placeholder "X X X X"
    class_token_position: Position = "end"  # scripts/coop/main.sh CTP
    epochs: int = 50  # OPTIM.MAX_EPOCH
    batch_size: int = 32  # DATALOADER.TRAIN_X.BATCH_SIZE
    lr: float = 0.002  # OPTIM.LR, SGD ("sgd"), stepped by a cosine over the epochs (LR_SCHEDULER "cosine")
    momentum: float = 0.9  # Dassl OPTIM.MOMENTUM
    weight_decay: float = 5e-4  # Dassl OPTIM.WEIGHT_DECAY
    warmup_epochs: int = 1  # OPTIM.WARMUP_EPOCH, WARMUP_TYPE "constant"
    warmup_lr: float = 1e-5  # OPTIM.WARMUP_CONS_LR
    min_crop_scale: float = 0.08  # Dassl INPUT.RRCROP_SCALE (0.08, 1.0) of "random_resized_crop"

    def learner(self, model: CLIP, classnames: list[str]) -> CoOpPromptLearner:
        """The untrained learner these settings start from."""
        return CoOpPromptLearner(model, classnames, self.n_ctx, self.ctx_init, position=self.class_token_position)


@register
class CoOp(ZeroShot):
    """The learned context as a fixed classifier on the original view (CoOp's test pass): zero-shot's
    prediction with the context's class features."""

    name = "coop"
    Config = CoOpConfig
    source = "KaiyangZhou/CoOp@1e5ec09 trainers/coop.py; configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml"

    def setup(self, model: CLIP, test_set: TestSet) -> None:
        self.model = model
        self.learner = coop_learner(model, test_set.classnames, self.config)
        with torch.no_grad(), self.autocast():
            self.text = self.learner()  # (C, D)

    def notes(self) -> list[str]:
        if self.config.prompts is None:
            return [f"coop: no trained prompts given; the untrained context '{self.config.ctx_init}' (zero-shot)"]
        return [f"coop: context from {prompts_path(self.config.prompts)}"]


class TrainedPromptsMethod(Method):
    """A method that runs only on what `mintclip train-prompts` trained for it (or a released run), named
    by its hyper-parameter `file_key`: untrained, its extra parts (a meta-net, deep prompts, an
    augmentation network) are random."""

    n_views = 1
    file_key: ClassVar[str] = "prompts"
    released: ClassVar[bool] = True  # the authors published trained files that load as this method's

    @property
    def trained_file(self) -> str | None:
        return getattr(self.config, self.file_key)

    def check(self, model: CLIP) -> None:
        if self.trained_file is None:
            released = " or a released run of the method" if self.released else ""
            raise ValueError(f"{self.name} needs its trained file: --hp {self.file_key}=PATH, written by "
                             f"`mintclip train-prompts --method {self.name}`{released}")

    def load_learned(self, learner: CoOpPromptLearner, state: dict[str, Tensor]) -> None:
        """The file's tensors into the learner's learned ones, all of which it must hold."""
        missing = sorted(set(learner.learned()) - set(state))
        if missing:
            raise ValueError(f"{self.trained_file}: not a {self.name} file (no {', '.join(missing)})")
        with torch.no_grad():
            for name, param in learner.learned().items():
                param.copy_(state[name].to(param))


def coop_learner(model: CLIP, classnames: list[str], config: CoOpConfig) -> CoOpPromptLearner:
    """The context a config names: a trained file's (its recorded position wins) or ctx_init's words."""
    if config.prompts is None:
        return CoOpPromptLearner(model, classnames, config.n_ctx, config.ctx_init,
                                 position=config.class_token_position)
    path = prompts_path(config.prompts)
    position = read_prompt_config(path).get("class_token_position", config.class_token_position)
    return CoOpPromptLearner(model, classnames, ctx_vectors=load_coop_context(path).to(model.device),
                             position=position)
