"""TDA, a Training-free Dynamic Adapter (Karmanov et al., CVPR'24, "Efficient Test-Time Adaptation of
Vision-Language Models").

Why it works: no gradients and no prompt. As the stream goes by, TDA keeps two small key-value caches of
test features. The positive cache holds, for each predicted class, the few most confident samples
(lowest entropy), and adds a Tip-Adapter-like vote for their class to the zero-shot logits. The negative
cache holds moderately uncertain samples and subtracts a vote from the classes they found plausible.
Confident pseudo-labels pull a prediction towards them and uncertain ones push it away from classes it
should not pick.

Faithful to kdiAAA/TDA `tda_runner.py` (`update_cache`, `compute_cache_logits`, `run_test_tda`),
`utils.py` (`get_clip_logits`, `get_entropy`, `avg_entropy`, `get_ood_preprocess`) and `configs/*.yaml`:

* Text: per-set templates (`datasets/*.py`; docs/methods.md § Prompt templates), each class the
  normalised mean of its normalised template embeddings (`clip_weights`).
* Views (`build_test_data_loader`): for A/V/R/K (TDA's A/V/R/S) 64 views, the original and 63 AugMix views
  (`get_ood_preprocess`). The int(64 * 0.1) = 6 lowest-entropy views are kept. The image feature is the
  MEAN of their normalised features and is not normalised again. The logits are the mean of their logits.
  `loss` is their marginal entropy (`avg_entropy`), `prob_map` the mean of their softmaxes, and `pred`
  the argmax of the mean logits. ImageNet and every other set use one CLIP-preprocessed view (view 0).
  There `loss` is its entropy, `prob_map` its softmax and `pred` its argmax.
* Logits are `100 * feature @ clip_weights` (`get_clip_logits`). The 100 is a constant in the code and
  kept as `logit_scale`. OpenAI CLIP's `logit_scale.exp()` also equals 100.
* Normalised entropy (`get_entropy`): `loss / log2(C)`. The entropy is in nats and the divisor in bits,
  so the value never exceeds ln 2 ~ 0.69. That is the code's scale, and the (0.2, 0.5) window is tuned on
  it, so the mismatch is kept on purpose.
* The caches are updated with the current sample BEFORE it is predicted, so a sample's own feature votes
  for its own zero-shot class (`run_test_tda`). Both caches are indexed by the zero-shot `pred`. The
  positive cache gets every sample. The negative cache gets a sample only when
  0.2 < normalised entropy < 0.5 (strict, both ends).
* `update_cache`: a class's entries are kept sorted by loss. While there is room the item is appended.
  When the cache is full it replaces the last (worst) entry only if its loss is strictly lower. The list
  is then re-sorted with Python's stable sort, so a new item goes after every entry whose loss is
  <= its own, and among the tied worst entries the newest is evicted first.
* `compute_cache_logits`: affinity = feature @ keys; cache logits = alpha * exp(-beta * (1 - affinity))
  @ values. Positive values are one-hot pseudo-labels. Negative values are the 0/1 mask
  0.03 < p < 1.0 of each cached item's own `prob_map` (the stored one, not the current sample's). The mask
  includes the item's top class (TDA issue #7). In practice the upper bound 1.0 never excludes anything:
  an item with p = 1 cannot have a normalised entropy above 0.2.
* Sign: `final = clip_logits + positive - negative`. Both cache terms are non-negative. The paper writes
  the negative term with two minus signs, which would make it add (TDA issue #5). The code subtracts it
  once, and that is what runs here.
* Caches are per dataset: `run_test_tda` starts them empty for every set. That is `reset_state="per-set"`.
  With "never" they carry over to the next set if it has the same classes (e.g. I then V). A set with
  other classes starts empty, since the slots are per class.

Storage: each cache is a tensor of fixed-capacity slots per class (`ClassSlots`), kept sorted as the
code's lists are, and updated with tensor operations only, with no host sync per image. The state is
those tensors, so a resumed run predicts exactly as an uninterrupted one.

Precision: the reference runs stock fp16 CLIP, so its features, logits and caches are fp16. Here the
encoders run under `self.autocast()` (bf16 on GPU, fp32 on CPU by default). Features, logits, entropies,
caches and cache logits are fp32.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any, Literal

import torch
from torch import Tensor

from ..data import TestSet
from ..model import CLIP
from .base import Diagnostics, MethodConfig, register
from .losses import entropy, marginal_entropy, select_confident_views
from .zeroshot import FixedPromptMethod, Templates

OOD_VIEWS = 64  # utils.py get_ood_preprocess: the original + AugMixAugmenter(n_views=63, augmix=True)
SELECTION = 0.1  # utils.py get_clip_logits: int(V * 0.1) lowest-entropy views, 6 of 64

# Positive cache (alpha, beta) per mintclip set id, from TDA's configs/<name>.yaml positive.alpha/beta
# (docs/methods.md § TDA). Sets TDA has no config for (a user's 'folder' or 'csv') take DEFAULT_POSITIVE.
# *: the copy of the repository read holds no such yaml (configs/ lacks imagenet_a, imagenet_r and
# sun397); the value is the one the research notes give
POSITIVE_PER_SET = {
    "I": (2.0, 5.0),  # imagenet.yaml
    "A": (2.0, 5.0),  # imagenet_a.yaml *
    "V": (1.0, 8.0),  # imagenet_v.yaml
    "R": (1.0, 8.0),  # imagenet_r.yaml *
    "K": (2.363, 7.45),  # imagenet_s.yaml
    "Caltech101": (5.0, 5.0),  # caltech101.yaml
    "DTD": (2.0, 3.0),  # dtd.yaml
    "EuroSAT": (4.0, 8.0),  # eurosat.yaml
    "Aircraft": (2.0, 2.0),  # fgvc.yaml
    "Food101": (1.0, 1.0),  # food101.yaml
    "Flower102": (1.0, 5.0),  # oxford_flowers.yaml
    "Pets": (2.0, 7.0),  # oxford_pets.yaml
    "Cars": (1.0, 7.0),  # stanford_cars.yaml
    "SUN397": (2.0, 3.0),  # sun397.yaml *
    "UCF101": (3.0, 8.0),  # ucf101.yaml
}
DEFAULT_POSITIVE = POSITIVE_PER_SET["I"]  # an unknown set: ImageNet's values


def out_of_distribution(test_set: TestSet) -> bool:
    """utils.py build_test_data_loader's 'A', 'V', 'R', 'S' (Sketch, mintclip's K): the ImageNet shifts,
    which TDA reads through get_ood_preprocess's 64 AugMix views."""
    return test_set.family == "imagenet-shift"


@dataclasses.dataclass
class TDAConfig(MethodConfig):
    """Every default is in all of TDA's configs/*.yaml unless noted."""

    pos_enabled: bool = True  # positive.enabled
    pos_capacity: int = 3  # positive.shot_capacity
    pos_alpha: float | None = None  # positive.alpha; None: per set (POSITIVE_PER_SET)
    pos_beta: float | None = None  # positive.beta; None: per set (POSITIVE_PER_SET)
    neg_enabled: bool = True  # negative.enabled
    neg_capacity: int = 2  # negative.shot_capacity
    neg_alpha: float = 0.117  # negative.alpha
    neg_beta: float = 1.0  # negative.beta
    neg_entropy_lower: float = 0.2  # negative.entropy_threshold.lower (normalised entropy, strict)
    neg_entropy_upper: float = 0.5  # negative.entropy_threshold.upper (strict)
    neg_mask_lower: float = 0.03  # negative.mask_threshold.lower (probability, strict)
    neg_mask_upper: float = 1.0  # negative.mask_threshold.upper (strict)
    logit_scale: float = 100.0  # utils.py get_clip_logits: 100. * image_features @ clip_weights
    templates: Templates = "per_set"  # TDA's datasets/*.py templates; see zeroshot.class_templates
    # tda_runner.py: caches start empty for every set; "never": keep them
    reset_state: Literal["per-set", "never"] = "per-set"


class ClassSlots:
    """A TDA cache as tensors: `capacity` slots per class, each class's valid entries first, sorted by loss.

    features (C, K, D) fp32, losses (C, K) fp32 (+inf in empty slots), valid (C, K) bool, and for the
    negative cache prob_maps (C, K, C) fp32, the softmax each item was cached with."""

    def __init__(self, features: Tensor, losses: Tensor, valid: Tensor, prob_maps: Tensor | None = None) -> None:
        self.features, self.losses, self.valid, self.prob_maps = features, losses, valid, prob_maps

    @classmethod
    def empty(cls, classes: int, capacity: int, dim: int, prob_maps: bool = False,
              device: torch.device | str = "cpu") -> ClassSlots:
        return cls(torch.zeros(classes, capacity, dim, device=device),
                   torch.full((classes, capacity), math.inf, device=device),
                   torch.zeros(classes, capacity, dtype=torch.bool, device=device),
                   torch.zeros(classes, capacity, classes, device=device) if prob_maps else None)

    @property
    def capacity(self) -> int:
        return self.losses.shape[1]

    def tensors(self) -> dict[str, Tensor]:
        out = {"features": self.features, "losses": self.losses, "valid": self.valid}
        return out if self.prob_maps is None else out | {"prob_maps": self.prob_maps}

    def to(self, device: torch.device | str) -> ClassSlots:
        moved = {k: v.to(device) for k, v in self.tensors().items()}
        return ClassSlots(moved["features"], moved["losses"], moved["valid"], moved.get("prob_maps"))

    def add(self, label: Tensor | int, feature: Tensor, loss: Tensor, prob_map: Tensor | None = None,
            gate: Tensor | bool = True) -> None:
        """tda_runner.py update_cache for class `label`, if `gate`. While there is room the item goes in.
        When the class is full it goes in only if its loss is strictly below the worst, which then drops.
        It lands after every entry whose loss is <= its own, which is the order the code's append (or
        replace-last) followed by a stable sort gives. Tensor operations only: nothing is read back."""
        device = self.losses.device
        index = torch.as_tensor(label, device=device).reshape(1)  # a 1-element index: no read-back
        loss = torch.as_tensor(loss, dtype=torch.float32, device=device)
        losses, valid = self.losses.index_select(0, index)[0], self.valid.index_select(0, index)[0]  # (K,)
        accept = (~valid[-1] | (loss < losses[-1])) & torch.as_tensor(gate, device=device)
        at = (valid & (losses <= loss)).sum()  # the insertion slot
        slot = torch.arange(self.capacity, device=device)
        source = slot - (slot > at).long()  # entries after the slot move down one; a full class's last drops
        here = slot == at

        def insert(store: Tensor, new: Tensor) -> None:  # store (C, K, ...): the class's slots with `new` at `at`
            old = store.index_select(0, index)[0]  # (K, ...)
            shape = (-1,) + (1,) * (old.ndim - 1)
            updated = torch.where(accept, torch.where(here.view(shape), new.to(old.dtype), old[source]), old)
            store.index_copy_(0, index, updated[None])

        insert(self.features, feature.float())
        insert(self.losses, loss)
        insert(self.valid, torch.ones((), dtype=torch.bool, device=device))
        if self.prob_maps is not None:
            insert(self.prob_maps, prob_map.float())

    def weights(self, feature: Tensor, alpha: float, beta: float) -> Tensor:
        """(C, K): alpha * exp(-beta * (1 - feature @ key)) for each valid entry, 0 for an empty slot."""
        affinity = self.features @ feature.float()  # (C, K)
        return alpha * torch.exp(-beta * (1 - affinity)) * self.valid

    def positive_logits(self, feature: Tensor, alpha: float, beta: float) -> Tensor:
        """(C,) compute_cache_logits with one-hot values: each entry votes for the class it is stored under."""
        return self.weights(feature, alpha, beta).sum(-1)

    def negative_logits(self, feature: Tensor, alpha: float, beta: float, lower: float, upper: float) -> Tensor:
        """(C,) compute_cache_logits with values = each entry's mask lower < prob_map < upper (0/1)."""
        mask = ((self.prob_maps > lower) & (self.prob_maps < upper)).float()  # (C, K, C)
        return torch.einsum("ck,ckj->j", self.weights(feature, alpha, beta), mask)


@dataclasses.dataclass
class Observation:
    """What utils.py get_clip_logits returns for one image: feature (D,), clip_logits (C,), loss (),
    prob_map (C,), pred () (the zero-shot class; a tensor, so that nothing is read back)."""

    feature: Tensor
    clip_logits: Tensor
    loss: Tensor
    prob_map: Tensor
    pred: Tensor


def class_digest(classnames: list[str]) -> Tensor:
    """A 63-bit fingerprint of the class list, kept in the state: caches carry over only to the same classes."""
    digest = hashlib.blake2b("\n".join(classnames).encode(), digest_size=8).digest()
    return torch.tensor(int.from_bytes(digest, "little") >> 1, dtype=torch.int64)


@register
class TDA(FixedPromptMethod):
    """TDA: zero-shot logits + positive cache - negative cache, both updated online (module docstring)."""

    name = "tda"
    online = True
    state_per_class_list = True
    n_views = OOD_VIEWS
    Config = TDAConfig
    source = ("kdiAAA/TDA tda_runner.py (update_cache, compute_cache_logits, run_test_tda), utils.py "
              "(get_clip_logits, get_entropy), configs/*.yaml; CVPR'24")

    def __init__(self, config: TDAConfig | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        if cfg.pos_capacity < 1 or cfg.neg_capacity < 1:
            raise ValueError("pos_capacity and neg_capacity must be at least 1")
        self.test_set: TestSet | None = None
        self.positive: ClassSlots | None = None
        self.negative: ClassSlots | None = None
        self.classes: Tensor | None = None  # class_digest of the classes the caches hold
        self.set_classes: Tensor | None = None  # class_digest of the set `setup` was last called for

    # -- per set ----------------------------------------------------------------------------------------

    @property
    def views_per_image(self) -> int:
        """64 for the ImageNet shifts A/V/R/K and 1 for every other set. Before `setup` it is 64, the most
        any set needs."""
        return OOD_VIEWS if self.test_set is None or out_of_distribution(self.test_set) else 1

    def augmix(self, test_set: TestSet) -> bool:
        return out_of_distribution(test_set)  # get_ood_preprocess (augmix=True); other sets: CLIP's preprocess

    def positive_params(self, test_set: TestSet) -> tuple[float, float]:
        """(alpha, beta) of the positive cache: the overrides, else the set's configs/*.yaml values (a user
        set, for which TDA has no config: ImageNet's)."""
        known = test_set.family != "user"
        alpha, beta = POSITIVE_PER_SET[test_set.set_id] if known else DEFAULT_POSITIVE
        cfg = self.config
        return (alpha if cfg.pos_alpha is None else cfg.pos_alpha, beta if cfg.pos_beta is None else cfg.pos_beta)

    def setup(self, model: CLIP, test_set: TestSet) -> None:
        super().setup(model, test_set)  # self.text (C, D)
        self.test_set = test_set
        self.pos_alpha, self.pos_beta = self.positive_params(test_set)
        classnames = test_set.classnames
        self.set_classes = class_digest(classnames)
        keep = (self.config.reset_state == "never" and self.positive is not None
                and torch.equal(self.classes, self.set_classes))
        if keep:
            self.positive, self.negative = self.positive.to(model.device), self.negative.to(model.device)
        else:
            self.reset(len(classnames), self.text.shape[1], model.device)
            self.classes = self.set_classes

    def reset(self, classes: int, dim: int, device: torch.device | str) -> None:
        self.positive = ClassSlots.empty(classes, self.config.pos_capacity, dim, device=device)
        self.negative = ClassSlots.empty(classes, self.config.neg_capacity, dim, prob_maps=True, device=device)

    def notes(self) -> list[str]:
        cfg = self.config
        if cfg.pos_alpha is None and cfg.pos_beta is None:
            positive = "alpha/beta per set from TDA's configs/*.yaml (ImageNet's 2.0/5.0 for a set TDA has none for)"
        else:
            positive = f"pos_alpha={cfg.pos_alpha}, pos_beta={cfg.pos_beta} (None: per set)"
        reset = ("reset at every set (reset_state=per-set), as TDA's per-dataset runs" if cfg.reset_state == "per-set" else
                 "kept across sets with the same classes (reset_state=never); a set with other classes starts empty")
        return [f"views: 64 AugMix views for A/V/R/K (6 most confident averaged), else one; "
                f"templates {cfg.templates}",
                f"caches: {reset}; positive {cfg.pos_capacity}/class, {positive}; negative {cfg.neg_capacity}/class, "
                f"alpha {cfg.neg_alpha:g}, beta {cfg.neg_beta:g}, subtracted once as in the code"]

    # -- one image ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def observe(self, views: Tensor) -> Observation:
        """utils.py get_clip_logits: the views' features and zero-shot logits, reduced to one image."""
        features = self.encode_views(views)  # (V, D) normalised, fp32
        logits = self.config.logit_scale * features @ self.text.T  # (V, C)
        if len(views) > 1:
            chosen = select_confident_views(logits, SELECTION)  # the 6 lowest-entropy of 64
            selected = logits[chosen]
            mean_logits = selected.mean(0)
            return Observation(features[chosen].mean(0), mean_logits, marginal_entropy(selected),
                               selected.softmax(-1).mean(0), mean_logits.argmax())
        return Observation(features[0], logits[0], entropy(logits)[0], logits[0].softmax(-1), logits[0].argmax())

    @torch.no_grad()
    def update(self, seen: Observation) -> None:
        """run_test_tda's cache updates for one image: positive always, negative inside the entropy window."""
        cfg = self.config
        if cfg.pos_enabled:
            self.positive.add(seen.pred, seen.feature, seen.loss)
        if cfg.neg_enabled:
            normalised = seen.loss / math.log2(len(seen.clip_logits))  # get_entropy: nats / bits
            gate = (cfg.neg_entropy_lower < normalised) & (normalised < cfg.neg_entropy_upper)
            self.negative.add(seen.pred, seen.feature, seen.loss, seen.prob_map, gate)

    @torch.no_grad()
    def adapted_logits(self, seen: Observation) -> Tensor:
        """run_test_tda's final_logits = clip_logits + positive cache logits - negative cache logits."""
        cfg = self.config
        logits = seen.clip_logits.clone()
        if cfg.pos_enabled:
            logits += self.positive.positive_logits(seen.feature, self.pos_alpha, self.pos_beta)
        if cfg.neg_enabled:
            logits -= self.negative.negative_logits(seen.feature, cfg.neg_alpha, cfg.neg_beta,
                                                    cfg.neg_mask_lower, cfg.neg_mask_upper)
        return logits

    @torch.no_grad()
    def predict(self, views: Tensor) -> Tensor:
        if self.set_classes is None or not torch.equal(self.classes, self.set_classes):
            raise RuntimeError("tda: the caches are not this set's (loaded state for other classes); call setup")
        seen = self.observe(views)
        self.update(seen)  # before the prediction, as the code
        return self.adapted_logits(seen)

    # -- state ----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        if self.positive is None:
            return {}
        state = {f"positive.{k}": v for k, v in self.positive.tensors().items()}
        state |= {f"negative.{k}": v for k, v in self.negative.tensors().items()}
        return {k: v.detach().cpu().clone() for k, v in state.items()} | {"classes": self.classes.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The caches as `state_dict` gave them. Before `setup` they are held, and `setup` keeps them or resets
        them as `reset_state` says. After `setup` they replace the current set's caches (resuming within a
        set). Caches for other classes than the current set's wait for the next `setup`; `predict` refuses them."""
        if not state:
            return
        device = self.model.device if self.model is not None else "cpu"

        def slots(prefix: str) -> ClassSlots:
            get = {k.split(".", 1)[1]: v.clone() for k, v in state.items() if k.startswith(prefix + ".")}
            return ClassSlots(get["features"].float(), get["losses"].float(), get["valid"].bool(),
                              get["prob_maps"].float() if "prob_maps" in get else None).to(device)

        positive, negative, classes = slots("positive"), slots("negative"), state["classes"].clone()
        for name, cache, capacity in (("pos", positive, self.config.pos_capacity),
                                      ("neg", negative, self.config.neg_capacity)):
            if cache.capacity != capacity:
                raise ValueError(f"tda: the state's {name} cache holds {cache.capacity} per class, "
                                 f"{name}_capacity is {capacity}")
        self.positive, self.negative, self.classes = positive, negative, classes

    def sample_trace(self) -> dict[str, Any]:
        """The caches' fill after the last image: entries held, positive and negative."""
        if self.positive is None:
            return {}
        return {"positive_entries": int(self.positive.valid.sum()), "negative_entries": int(self.negative.valid.sum())}

    def diagnostics(self) -> Diagnostics:
        if self.positive is None:
            return Diagnostics()
        return Diagnostics({"positive_entries": int(self.positive.valid.sum()),
                            "positive_classes": int(self.positive.valid.any(-1).sum()),
                            "negative_entries": int(self.negative.valid.sum()),
                            "negative_classes": int(self.negative.valid.any(-1).sum())})
