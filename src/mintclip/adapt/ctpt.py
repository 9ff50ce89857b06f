"""C-TPT: calibrated test-time prompt tuning (Yoon et al., ICLR'24), reference `hee-suk-yoon/C-TPT@085e6c2`.

TPT with one more term: loss = marginal entropy - λ · ATFD, where ATFD (average text feature dispersion)
is the mean distance of the L2-normalised class text features from their centroid (docs/methods.md § C-TPT).
Spreading the class features apart lowers the calibration error that entropy minimisation raises.
Everything else (views, selection, AdamW, steps, view-0 prediction, the exact savings) is TPT's.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor

from ..data import TestSet
from .base import register
from .losses import marginal_entropy
from .tpt import TPT, TPTConfig

NATURAL_SHIFT_LAMBDA = 20.0  # scripts/test_tpt_ctpt_ds.sh lambda_term=20 (I, A, V, R, K)
CROSS_DOMAIN_LAMBDA = 50.0  # scripts/test_tpt_ctpt_fg.sh lambda_term=50 (Flower102, DTD, ...)


def atfd(text_features: Tensor) -> Tensor:
    """Average text feature dispersion of (C, D) L2-normalised class features: the mean over classes of
    ||t_c - mean_c' t_c'||₂, the centroid left unnormalised (clip/custom_clip.py, inference())."""
    features = text_features.float()
    return (features - features.mean(0)).norm(dim=-1).mean()


@dataclasses.dataclass
class CTPTConfig(TPTConfig):
    # λ of the dispersion term; None: by the set's family, 20 for ImageNet, its shifts (I/A/V/R/K) and user
    # sets, 50 for the cross-domain sets (scripts/test_tpt_ctpt_ds.sh, scripts/test_tpt_ctpt_fg.sh;
    # tpt_classification.py --lambda_term)
    lam: float | None = None


@register
class CTPT(TPT):
    name = "ctpt"
    Config = CTPTConfig
    source = ("hee-suk-yoon/C-TPT@085e6c2 tpt_classification.py, clip/custom_clip.py, "
              "scripts/test_tpt_ctpt_ds.sh, scripts/test_tpt_ctpt_fg.sh")
    config: CTPTConfig

    def augmix(self, test_set: TestSet) -> bool | None:
        # the natural-shift script passes --I_augmix (AugMix for I/A/V/R/K); cross-domain sets have it anyway
        return True

    def lam(self) -> float:
        """The configured λ, else by the set's family: 50 for the cross-domain sets, 20 for ImageNet, its
        shifts and a user's own sets (which are closer to the distribution shifts; `--hp lam=` for others)."""
        if self.config.lam is not None:
            return self.config.lam
        return CROSS_DOMAIN_LAMBDA if self.test_set.family == "cross-domain" else NATURAL_SHIFT_LAMBDA

    def notes(self) -> list[str]:
        if self.config.lam is not None:
            return [f"C-TPT: lambda {self.config.lam:g} for every set"]
        return [f"C-TPT: lambda {NATURAL_SHIFT_LAMBDA:g} for ImageNet, its shifts and user sets, "
                f"{CROSS_DOMAIN_LAMBDA:g} for the cross-domain sets (set it with --hp lam=)"]

    def objective(self, logits: Tensor, text_features: Tensor) -> Tensor:
        return marginal_entropy(logits) - self.lam() * atfd(text_features)
