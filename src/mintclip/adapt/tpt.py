"""TPT: test-time prompt tuning (Shu et al., NeurIPS'22), reference `azshue/TPT@63ecbac`.

Per test image (episodic): reset the learnable context and the optimiser, take `steps` AdamW steps on
the marginal entropy of the most confident views (chosen at step 1, reused after), then classify view 0
alone with the tuned prompt (docs/methods.md § TPT).

Exact savings over the reference (docs/performance.md § Image side), none of which changes the result:
* the image encoder is frozen and TPT's image features do not depend on the prompt, so the views are
  encoded once per image (the reference re-encodes them every step and view 0 again to predict);
* class prompts go through `TextPromptLearner`'s EOT-truncated, shared-prefix path;
* the context is reset to the same start for every image, so the step-1 text graph is the same for every
  image of a set: it is built once per set and back-propagated with `retain_graph` (`reuse_step0_graph`);
* gradients are taken with respect to the context only, never the frozen CLIP weights;
* several test images at once (`predict_batch`): their views go through the image encoder together, and
  their B contexts are one (B, n_ctx, W) tensor, stepped by one AdamW (elementwise, so each row gets its
  own image's update); the step-1 graph serves all B through one batched backward.

Precision: the reference runs fp16 autocast with `GradScaler(init_scale=1000)`. Here the encoders run
under `self.autocast()` (bf16 on GPU, fp32 on CPU) while logits, softmax and entropies are fp32; bf16 has
fp32's range and fp32 needs none, so there is no scaler (the unscaled AdamW step is the same update).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ..data import TestSet
from ..model import CLIP
from .base import Method, Prediction, register
from .losses import marginal_entropy, select_confident_views
from ..reference import tpt as reference_tpt
from .prompts import PromptTuningConfig, prompt_learner


@dataclasses.dataclass
class TPTConfig(PromptTuningConfig):
    # every prompt-tuning default (n_ctx, ctx_init, coop, lr, weight_decay, steps, selection, n_views) is TPT's
    # not in the reference: build the step-1 text graph once per set and reuse it (exact, docs/performance.md
    # § Image side); it holds that graph's activations between images. False: a fresh forward per image
    reuse_step0_graph: bool = True
    # the official code's order of work (mintclip.reference.tpt), for benchmarks and as an oracle: every
    # class prompt padded to 77 tokens, the views re-encoded at every step and view 0 again to predict;
    # the same numbers, more work
    reference_order: bool = False


@register
class TPT(Method):
    name = "tpt"
    n_views = 64  # tpt_classification.py -b 64: the original and 63 augmented views
    Config = TPTConfig
    source = "azshue/TPT@63ecbac tpt_classification.py, clip/custom_clip.py, scripts/test_tpt.sh"
    reference_overrides = {"reference_order": True}
    config: TPTConfig

    def setup(self, model: CLIP, test_set: TestSet) -> None:
        self.model = model
        self.test_set = test_set
        self.learner = prompt_learner(model, test_set.classnames, self.config)

    # -- the pieces, each usable alone ---------------------------------------------------------------

    def text_features(self, ctx: Tensor | None = None) -> Tensor:
        """(C, D) normalised fp32 class features of the current context, with grad to it; of B contexts
        ctx (B, n_ctx, W) instead: (B, C, D), one pass of the text encoder."""
        with self.autocast():
            return self.learner(ctx)

    def logits(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        """fp32 logit_scale.exp() * cos: (V, D), (C, D) -> (V, C); per image (B, V, D), (B, C, D) -> (B, V, C)."""
        scale = self.model.logit_scale.detach().float().exp()
        return scale * image_features.float() @ text_features.float().mT

    def objective(self, logits: Tensor, text_features: Tensor) -> Tensor:
        """The loss on the selected views' logits; TPT: their marginal entropy. C-TPT adds to it."""
        return marginal_entropy(logits)

    def select(self, logits: Tensor) -> Tensor:
        """Indices of the int(V * selection) most confident views (at least one)."""
        return select_confident_views(logits, self.config.selection)

    def reset(self) -> None:
        self.learner.reset()

    def adapt(self, image_features: Tensor) -> Tensor:
        """Reset the context, then tune it on the views' features (V, D); returns the views selected at
        step 1. The tuned context stays in `self.learner.ctx`."""
        self.reset()
        return self.tune(image_features, self.learner.ctx)[0]

    def adapt_batch(self, image_features: Tensor) -> Tensor | None:
        """`adapt` for B images, image_features (B, V, D) -> their tuned contexts (B, n_ctx, W), or None if
        a gradient was non-finite. Each image's loss reaches only its own row, and a fresh AdamW per image
        with one shared step count is elementwise, so one AdamW over the B rows is B separate ones."""
        ctx = self.learner.ctx_start.expand(len(image_features), -1, -1).clone().requires_grad_(True)
        return None if self.tune(image_features, ctx) is None else ctx.detach()

    def tune(self, image_features: Tensor, ctx: Tensor) -> list[Tensor] | None:
        """TPT's algorithm on one image (features (V, D), context (n_ctx, W)) or on B at once ((B, V, D),
        (B, n_ctx, W)): pick the most confident views at step 1, then `steps` AdamW steps on their
        marginal entropy, the context stepped in place. Returns each image's selected views, or None as
        soon as a batch meets a non-finite gradient: that image's step would be skipped and the images'
        AdamW step counts would part, so the caller takes them one at a time instead."""
        cfg = self.config
        batched = ctx.ndim == 3
        # a fresh AdamW per image is the reference's optimizer.load_state_dict(initial state)
        optimizer = self.adamw([ctx], cfg.lr, cfg.weight_decay)
        selected: list[Tensor] | None = None
        with torch.enable_grad():
            for step in range(cfg.steps):
                shared = step == 0 and cfg.reuse_step0_graph
                if shared:  # every image starts from the same context: the set's cached graph serves all
                    with self.autocast():
                        start, graph = self.learner.start_graph()
                    text = graph.detach().expand(*ctx.shape[:-2], -1, -1).clone().requires_grad_(True)
                else:
                    text = self.text_features(ctx)  # (C, D) or (B, C, D)
                logits = self.logits(image_features, text)  # (V, C) or (B, V, C)
                per_image = list(zip(logits, text)) if batched else [(logits, text)]
                if selected is None:
                    selected = [self.select(view_logits.detach()) for view_logits, _ in per_image]
                loss = sum(self.objective(view_logits[views], classes)
                           for (view_logits, classes), views in zip(per_image, selected))
                if shared:  # batched: row b of the cotangent comes from image b's loss alone
                    text_grad, = torch.autograd.grad(loss, text)
                    grad, = torch.autograd.grad(graph, start, text_grad, retain_graph=True, is_grads_batched=batched)
                else:
                    grad, = torch.autograd.grad(loss, ctx)
                ctx.grad = grad
                if not batched:
                    self.guarded_step(optimizer)
                elif bool(torch.isfinite(grad).all()):  # one host sync per step, as guarded_step's
                    optimizer.step()
                else:
                    return None
                ctx.grad = None
        empty = torch.arange(0, device=image_features.device)  # steps == 0: nothing selected
        return selected if selected is not None else [empty] * (len(image_features) if batched else 1)

    def predict(self, views: Tensor) -> Tensor:
        if self.config.reference_order:
            return reference_tpt.predict(self, views)
        image_features = self.encode_views(views)
        self.adapt(image_features)
        with torch.no_grad():
            logits = self.logits(image_features[:1], self.text_features())[0]
        self.reset()  # episodic: nothing of this image is left behind
        return logits

    def predict_batch(self, views: Tensor) -> Prediction:
        """B images tuned together (views (B, V, 3, H, W)), the same predictions as `predict` on each: one
        image-encoder pass, B contexts as one (B, n_ctx, W) tensor, the text encoder over B prefixes at
        once. `reference_order` keeps the per-image loop, the yardstick."""
        if self.config.reference_order or len(views) == 1:
            return super().predict_batch(views)
        image_features = self.encode_views(views)  # (B, V, D)
        ctx = self.adapt_batch(image_features)
        if ctx is None:  # a non-finite gradient: one image at a time, where guarded_step skips exactly its steps
            return super().predict_batch(views)
        with torch.no_grad():
            logits = self.logits(image_features[:, :1], self.text_features(ctx))[:, 0]  # (B, C)
        return Prediction(logits, [0] * len(views), image_features[:, 0])
