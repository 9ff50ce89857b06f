"""SAR: Sharpness-Aware and Reliable entropy minimisation (Niu et al., ICLR'23, "Towards Stable Test-Time
Adaptation in Dynamic Wild World"), on CLIP's image tower (docs/methods.md § SAR).

Why it works: like Tent, SAR adapts only the affine weight and bias of the image encoder's normalisation
layers, by minimising the entropy of the predictions on each batch of test images. Two additions keep it
stable. Images whose entropy is above a margin E0 (unreliable, large and noisy gradients) are left out of
the loss, and the step is sharpness-aware (SAM): the gradient is taken at the worst point within a small
ball around the weights, which favours flat minima. When the moving average of the loss falls very low
(the model has collapsed onto a few classes) the adapted weights are reset to the start.

Faithful to mr-eggplant/SAR@492c1ad `sar.py` (`forward_and_adapt_sar`, `collect_params`,
`configure_model`, `SAR.forward`), `sam.py` (`SAM.first_step`, `second_step`, `_grad_norm`) and `main.py`
@a266f7d (learning rates, SGD with momentum 0.9, batch 64):

* Adapted: the weight and bias of every LayerNorm / BatchNorm2d / GroupNorm of the image tower except
  those `collect_params` skips. ViT: it skips `blocks.9`-`blocks.11` (the top three of ViT-Base's 12)
  and the final `norm`; here the last `skip_last_blocks` = 3 residual blocks and `ln_post`; `ln_pre` (a
  CLIP ViT's norm before the blocks, which timm calls `norm_pre`) passes the code's rule and is adapted.
  ResNet: every BatchNorm outside `layer4` (the three stem BNs and the downsample BNs included). The
  text side is fixed: zero-shot class features of "a photo of a {}." (`templates`).
* BatchNorm uses the statistics of the images it is given, never running statistics, in every
  BatchNorm of the tower (`configure_model`: `track_running_stats=False`, running stats None). The
  model itself is never modified: the adapted tensors are the method's own, substituted into the frozen
  tower at each forward (`torch.func.functional_call`).
* Logits: `logit_scale.exp() * cos(image, class)`; loss: the softmax entropy of each image.
* One update per batch of `batch_size` images (`forward_and_adapt_sar`):
  1. entropies at the weights w; reliable = entropy < E0 (strict); loss1 = their mean (NaN if none, whose
     gradient is zero, as in the code); g1 = its gradient;
  2. w' = w + rho * g1 / (||g1|| + 1e-12), ||.|| the 2-norm over all adapted tensors (`first_step`);
  3. entropies at w' of the images reliable in step 1, filtered again by E0; loss2 = their mean;
     the EMA e_m = 0.9 e_m + 0.1 loss2 (e_m = loss2 the first time) unless loss2 is NaN;
  4. g2 = the gradient of loss2 at w'; back to w; SGD with momentum 0.9 on g2 (`second_step`): a batch
     with no reliable image still moves the weights by the momentum;
  5. recovery: if e_m < 0.2 (`reset_constant_em`), the adapted weights go back to the start.
  The predictions are the logits at w, before the update, as the code returns the first forward's.
* Recovery as the code does it (`recovery="code"`): `SAR.reset` loads the SAM optimiser's initial
  state, which holds no momentum (SGD's buffers live in the inner base optimiser, untouched), and
  `SAR.forward` assigns the returned EMA after the reset, undoing its `self.ema = None` (the authors:
  mr-eggplant/SAR issue #4). So momentum and EMA survive a recovery: with e_m still below 0.2, the next
  batches reset again until it climbs back. `recovery="paper"` also clears momentum and EMA.
* E0 = 0.4 ln C (`main.py --sar_margin_e0 = 0.4 * ln 1000` for ImageNet's 1000 classes).
* Learning rate (`main.py`): ViT (0.001 / 64) * B; ResNet (0.00025 / 64) * B * 2 if B < 32 else 0.00025;
  doubled at B = 1 (`--exp_type bs1`). B = 64 on a ViT: 0.001.
* Sets: `main.py` builds a fresh model for each corruption, so everything starts afresh at every set
  (`reset_state="per-set"`); "never" carries weights, momentum and EMA to the next set.

Batches: mintclip's engine feeds an online method one image at a time (`--batch-images` must be 1 for
it), so SAR forms the batches itself, from consecutive images of the stream: each image is predicted at
once with the current weights and kept; the `batch_size`-th triggers the update on the kept images, so
`batch_size=64` is the official protocol whatever the engine's grouping. On a LayerNorm tower (ViT) an
image's logits do not depend on the other images of its batch, so these are the official predictions
(up to the rounding of a batched matmul). On a BatchNorm tower (ResNet) each image is normalised by its
own statistics when predicted, while the update uses the batch's, as the code. The images of a set's
last, incomplete batch are predicted but take no update (their update could only change later sets;
the code starts every set afresh). The update runs one extra forward per image (the prediction pass)
beyond the code's two forwards and two backwards per batch.

State (`state_dict`): the adapted tensors, the momentum buffers, the EMA, the kept images of the current
batch and the counters, so that a run killed part-way resumes to the same records.

Precision: the code runs fp32. Here the tower runs under `self.autocast()` (bf16 on GPU by default,
`precision=fp32` for the code's), the adapted tensors, their gradients, logits and entropies are fp32.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..data import TestSet
from ..model import CLIP
from ..model.vision import VisionTransformer
from .base import Diagnostics, MethodConfig, Prediction, all_finite, register
from .losses import entropy
from .zeroshot import FixedPromptMethod, Templates

NORMS = (nn.LayerNorm, nn.BatchNorm2d, nn.GroupNorm)  # configure_model / collect_params
EMA_DECAY = 0.9  # sar.py update_ema: 0.9 * ema + (1 - 0.9) * new
SAM_EPS = 1e-12  # sam.py first_step: rho / (grad_norm + 1e-12)
STATS = ("updates", "images", "reliable_first", "reliable_second", "recoveries", "skipped")  # counters, in state order


@dataclasses.dataclass
class SARConfig(MethodConfig):
    templates: Templates = "single"  # "a photo of a {}.": the zero-shot classifier whose logits are adapted
    batch_size: int = 64  # main.py --test_batch_size 64: consecutive test images per update
    lr: float | None = None  # None: main.py's rule for the tower and batch_size (`default_lr`)
    momentum: float = 0.9  # main.py: SAM(params, torch.optim.SGD, lr=args.lr, momentum=0.9)
    rho: float = 0.05  # sam.py SAM(rho=0.05), main.py passes none
    margin_fraction: float = 0.4  # main.py --sar_margin_e0 = math.log(1000) * 0.40: E0 = 0.4 ln C
    margin_e0: float | None = None  # E0 itself; None: margin_fraction * ln C
    reset_constant_em: float = 0.2  # sar.py forward_and_adapt_sar: `if ema < 0.2` (the argument is unused)
    skip_last_blocks: int = 3  # sar.py collect_params: blocks.9-11 of ViT-Base's 12 stay frozen
    # "code": a recovery resets the weights only (momentum and EMA survive, module docstring); "paper":
    # momentum and EMA too (mr-eggplant/SAR issue #4)
    recovery: Literal["code", "paper"] = "code"
    reset_state: Literal["per-set", "never"] = "per-set"  # main.py: a fresh model for every corruption


def default_lr(kind: str, batch_size: int) -> float:
    """main.py's learning rate for `batch_size` images per update: ViT (vitbase_timm) (0.001 / 64) * B;
    a ResNet (resnet50_gn_timm, resnet50_bn_torch) (0.00025 / 64) * B * 2 if B < 32 else 0.00025; both
    doubled at B = 1 (--exp_type bs1: "double lr for sar under bs=1")."""
    if kind == "vit":
        lr = 0.001 / 64 * batch_size
    else:
        lr = 0.00025 / 64 * batch_size * 2 if batch_size < 32 else 0.00025
    return 2 * lr if batch_size == 1 else lr


def adapted_parameters(visual: nn.Module, skip_last_blocks: int = 3) -> list[str]:
    """Names (in the tower) of the norm weights and biases SAR adapts, in module order: `collect_params`'s
    rule on mintclip's names. ViT: every LayerNorm but those of the last `skip_last_blocks` residual
    blocks and `ln_post` (the code's blocks.9-11 and final `norm`); a ResNet: every norm outside layer4."""
    if isinstance(visual, VisionTransformer):
        depth = len(visual.blocks)
        frozen = ["ln_post", *(f"transformer.resblocks.{i}" for i in range(max(0, depth - skip_last_blocks), depth))]
    else:
        frozen = ["layer4"]
    names = []
    for name, module in visual.named_modules():
        if isinstance(module, NORMS) and not any(name == f or name.startswith(f + ".") for f in frozen):
            names += [f"{name}.{p}" for p in ("weight", "bias") if getattr(module, p, None) is not None]
    return names


def batch_statistics(visual: nn.Module) -> dict[str, None]:
    """configure_model's BatchNorm2d setting for every BN of the tower (layer4's too): no running
    statistics, so each forward normalises by the statistics of the images it is given. As substitutes
    for `functional_call`: the tower's own buffers are neither used nor updated."""
    return {f"{name}.{buffer}": None for name, module in visual.named_modules() if isinstance(module, nn.BatchNorm2d)
            for buffer in ("running_mean", "running_var")}


@register
class SAR(FixedPromptMethod):
    """SAR, online: the image tower's norm weights adapted by one SAM step per batch (module docstring)."""

    name = "sar"
    online = True
    n_views = 1  # the original view of each image
    Config = SARConfig
    source = ("mr-eggplant/SAR@492c1ad sar.py (forward_and_adapt_sar, collect_params, configure_model), sam.py; "
              "main.py@a266f7d (lr rule, SGD momentum 0.9, batch 64, E0 0.4 ln 1000); ICLR'23")
    config: SARConfig

    def __init__(self, config: SARConfig | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        if cfg.batch_size < 1:
            raise ValueError(f"sar: batch_size must be at least 1, got {cfg.batch_size}")
        if cfg.skip_last_blocks < 0 or cfg.rho < 0 or (cfg.lr is not None and cfg.lr <= 0):
            raise ValueError("sar: skip_last_blocks and rho must be >= 0, and lr > 0")
        self.names: list[str] = []
        self.start: dict[str, Tensor] = {}  # the tower's own values: where a recovery goes back to
        self.params: dict[str, Tensor] = {}  # the adapted tensors (fp32 leaves), substituted at each forward
        self.statistics: dict[str, None] = {}
        self.optimizer: torch.optim.SGD | None = None
        self.ema: float | None = None
        self.pending: list[Tensor] = []  # (1, 3, H, W) each: the current batch's images so far
        self.stats = dict.fromkeys(STATS, 0)
        self._held: dict[str, Any] | None = None  # state loaded before setup

    # -- per set ----------------------------------------------------------------------------------------

    def check(self, model: CLIP) -> None:
        if not adapted_parameters(model.visual, self.config.skip_last_blocks):
            raise ValueError("sar: this image tower has no normalisation layer left to adapt "
                             f"(skip_last_blocks={self.config.skip_last_blocks})")

    @property
    def kind(self) -> str:
        return "vit" if isinstance(self.model.visual, VisionTransformer) else "resnet"

    @property
    def lr(self) -> float:
        return self.config.lr if self.config.lr is not None else default_lr(self.kind, self.config.batch_size)

    @property
    def margin(self) -> float:
        """E0: margin_e0, else margin_fraction * ln C."""
        cfg = self.config
        return cfg.margin_e0 if cfg.margin_e0 is not None else cfg.margin_fraction * math.log(len(self.text))

    def setup(self, model: CLIP, test_set: TestSet) -> None:
        super().setup(model, test_set)  # self.model, self.text (C, D)
        self.text = self.text.detach()
        self.check(model)
        self.names = adapted_parameters(model.visual, self.config.skip_last_blocks)
        own = dict(model.visual.named_parameters())
        self.start = {n: own[n].detach().float().clone() for n in self.names}
        self.statistics = batch_statistics(model.visual)
        carry = self.config.reset_state == "never"
        if carry and self._held is not None:
            self._restore(self._held)
        elif carry and self.params:
            self._restore(self.state_dict())  # onto this set's device, the same tensors' values
        else:
            self.reset()
        self._held = None
        self.pending = []  # an incomplete batch never continues into another set
        self.stats = dict.fromkeys(STATS, 0)

    def reset(self) -> None:
        """The start of a set in the code: the tower's own weights, no momentum, no EMA."""
        self.params = {n: v.clone().requires_grad_(True) for n, v in self.start.items()}
        self.optimizer = self._optimizer()
        self.ema = None
        self.pending = []

    def _optimizer(self) -> torch.optim.SGD:
        return torch.optim.SGD([self.params[n] for n in self.names], lr=self.lr, momentum=self.config.momentum)

    # -- the pieces ---------------------------------------------------------------------------------------

    def logits(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        """images (B, 3, H, W) -> fp32 logits (B, C) of the tower with `params` substituted for its norm
        weights, BatchNorm on the batch's statistics."""
        with self.autocast():
            features = functional_call(self.model.visual, {**params, **self.statistics}, (images,))
        return self.class_logits(F.normalize(features.float(), dim=-1))

    def gradients(self, loss: Tensor, leaves: list[Tensor]) -> list[Tensor]:
        """d loss / d leaves; a tensor the loss does not reach gets zeros."""
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(leaves, grads)]

    def update(self, images: Tensor) -> int:
        """forward_and_adapt_sar on one batch (B, 3, H, W), then the recovery check. Returns the optimiser
        steps refused for a non-finite gradient (0 or 1): a non-finite first gradient refuses the whole
        step (no perturbation, no second pass, EMA unchanged), a non-finite second one the SGD step."""
        cfg, margin = self.config, self.margin
        leaves = [self.params[n] for n in self.names]
        with torch.enable_grad():
            first = entropy(self.logits(images, self.params))
            reliable = torch.where(first.detach() < margin)  # filter_ids_1
            grads = self.gradients(first[reliable].mean(0), leaves)  # the mean of none is NaN, its gradient 0
        self.stats["updates"] += 1
        self.stats["images"] += len(images)
        self.stats["reliable_first"] += len(reliable[0])
        refused = 0
        if not all_finite(grads):
            refused = 1
        else:
            with torch.no_grad():  # first_step: w + rho * g / (||g|| + 1e-12)
                scale = cfg.rho / (torch.linalg.vector_norm(torch.stack([g.norm(2) for g in grads])) + SAM_EPS)
                perturbed = {n: (p + g * scale).requires_grad_(True) for n, p, g in zip(self.names, leaves, grads)}
            with torch.enable_grad():
                second = entropy(self.logits(images, perturbed))[reliable]  # the step-1 reliable images
                again = torch.where(second.detach() < margin)  # filter_ids_2
                loss = second[again].mean(0)
                value = loss.item()
                if not math.isnan(value):  # update_ema
                    self.ema = value if self.ema is None else EMA_DECAY * self.ema + (1 - EMA_DECAY) * value
                grads = self.gradients(loss, [perturbed[n] for n in self.names])
            self.stats["reliable_second"] += len(again[0])
            for p, g in zip(leaves, grads):  # second_step: back to w, SGD on the gradient at w'
                p.grad = g
            if all_finite(grads):  # refused steps are counted per image by the caller
                self.optimizer.step()
            else:
                refused = 1
            for p in leaves:
                p.grad = None
        self.stats["skipped"] += refused
        if self.ema is not None and self.ema < cfg.reset_constant_em:
            self.recover()
        return refused

    def recover(self) -> None:
        """The model recovery: the adapted weights back to the tower's own. As the code (`recovery="code"`)
        momentum and EMA stay; "paper" clears them too."""
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.start[n])
        if self.config.recovery == "paper":
            self.optimizer = self._optimizer()
            self.ema = None
        self.stats["recoveries"] += 1

    def stream(self, images: Tensor) -> tuple[Tensor, list[int]]:
        """Consecutive test images (B, 3, H, W) -> their logits (B, C), each predicted with the weights of
        its batch's start, and the refused steps per image (counted on the image that completed a batch)."""
        logits, refused, at = [], [], 0
        while at < len(images):
            chunk = images[at: at + self.config.batch_size - len(self.pending)]
            with torch.no_grad():
                logits.append(self.logits(chunk, self.params))
            self.pending += list(chunk.split(1))
            refused += [0] * len(chunk)
            if len(self.pending) == self.config.batch_size:
                batch, self.pending = torch.cat(self.pending), []
                refused[-1] += self.update(batch)
            at += len(chunk)
        return torch.cat(logits), refused

    def predict(self, views: Tensor) -> Tensor:
        logits, refused = self.stream(views[:1])
        self._tally.skipped_updates += refused[0]
        return logits[0]

    def predict_batch(self, views: Tensor) -> Prediction:
        """B images (views (B, V, 3, H, W), view 0 of each used) into the stream: the same batches and
        updates as B calls of `predict`; a batch's images are predicted in one pass."""
        logits, refused = self.stream(views[:, 0])
        return Prediction(logits, refused, None)

    # -- state -------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        if not self.params:
            return {}
        state: dict[str, Any] = {f"param.{n}": p.detach().cpu().clone() for n, p in self.params.items()}
        for n, p in self.params.items():
            buffer = self.optimizer.state.get(p, {}).get("momentum_buffer")
            if buffer is not None:
                state[f"momentum.{n}"] = buffer.detach().cpu().clone()
        state["ema"] = torch.tensor(math.nan if self.ema is None else self.ema, dtype=torch.float64)
        state["stats"] = torch.tensor([self.stats[k] for k in STATS], dtype=torch.int64)
        if self.pending:
            state["pending"] = torch.cat(self.pending).detach().cpu().clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Before `setup` the state is held, and `setup` uses it or starts afresh as `reset_state` says.
        After `setup` it replaces the current state (resuming within a set)."""
        if not state:
            return
        if self.model is None:
            self._held = dict(state)
            return
        self._restore(state)

    def _restore(self, state: dict[str, Any]) -> None:
        names = [k.split(".", 1)[1] for k in state if k.startswith("param.")]
        if sorted(names) != sorted(self.names):
            raise ValueError(f"sar: the state adapts other tensors than this tower's {len(self.names)} "
                             f"(skip_last_blocks={self.config.skip_last_blocks}): {len(names)} in the state")
        device = self.model.device
        self.params = {n: state[f"param.{n}"].to(device, torch.float32).clone().requires_grad_(True)
                       for n in self.names}
        self.optimizer = self._optimizer()
        for n, p in self.params.items():
            if f"momentum.{n}" in state:
                self.optimizer.state[p]["momentum_buffer"] = state[f"momentum.{n}"].to(device, torch.float32).clone()
        ema = float(state["ema"])
        self.ema = None if math.isnan(ema) else ema
        self.stats = dict(zip(STATS, (int(v) for v in state["stats"])))
        pending = state.get("pending")
        self.pending = [] if pending is None else list(pending.to(device).clone().split(1))

    # -- reporting ---------------------------------------------------------------------------------------

    def notes(self) -> list[str]:
        cfg = self.config
        lr = f"{cfg.lr:g}" if cfg.lr is not None else "main.py's rule (0.001 for a ViT at batch 64)"
        margin = f"{cfg.margin_e0:g}" if cfg.margin_e0 is not None else f"{cfg.margin_fraction:g} ln C"
        recovery = ("recovery as the code: weights reset, momentum and EMA kept" if cfg.recovery == "code"
                    else "recovery clears weights, momentum and EMA (recovery=paper)")
        return [f"SAR: image-tower norm weights (the last {cfg.skip_last_blocks} ViT blocks and ln_post, or a ResNet's "
                f"layer4, frozen), one SAM step per {cfg.batch_size} consecutive images, lr {lr}, rho {cfg.rho:g}, "
                f"E0 {margin}; predictions before their batch's update; text '{cfg.templates}' fixed",
                f"{recovery} when the EMA of the loss < {cfg.reset_constant_em:g}; state "
                f"{'reset at every set' if cfg.reset_state == 'per-set' else 'kept across sets'}; a ResNet's "
                "BatchNorm uses batch statistics (each image's own when predicted)"]

    def diagnostics(self) -> Diagnostics:
        if not self.params:
            return Diagnostics()
        s = self.stats
        numbers: dict[str, int | float] = {"updates": s["updates"], "recoveries": s["recoveries"],
                                           "skipped_updates": s["skipped"], "adapted_tensors": len(self.names),
                                           "images_not_in_an_update": len(self.pending)}
        if s["images"]:
            numbers["reliable_fraction_first"] = s["reliable_first"] / s["images"]
            numbers["reliable_fraction_second"] = s["reliable_second"] / s["images"]
        if self.ema is not None:
            numbers["ema"] = self.ema
        drift = torch.stack([(self.params[n].detach() - self.start[n]).norm() for n in self.names]).cpu()
        return Diagnostics(numbers, bars={"drift": drift})
