"""Zero-shot CLIP, the baseline every test-time method is measured against: one view, fixed class prompts.

`zeroshot` uses the single prompt "a photo of a {}." of TPT, MINT, C-TPT and DynaPrompt (azshue/TPT
`clip/custom_clip.py`, `--ctx_init a_photo_of_a`). `ensemble` averages CLIP's 80 ImageNet templates,
the "Ensemble" row of the TPT and MINT tables (docs/methods.md § Prompt templates). Both are fixed
classifiers: the text side is encoded once per set, and a prediction is `logit_scale.exp() * cos(view 0,
class)` in fp32.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import Tensor

from ..data import TestSet, template_set
from ..model import CLIP
from .base import Method, MethodConfig, register
from .prompts import encode_class_prompts

Templates = Literal["single", "simple_7", "openai_80", "per_set"]


def class_templates(choice: Templates, test_set: TestSet) -> list[str]:
    """The templates named by a method's `templates` field: 'single' ("a photo of a {}."), 'simple_7'
    (the 7 Tip templates, ZERO's `--templates`), 'openai_80' (CLIP's ImageNet ensemble) or 'per_set'
    (TDA's per-dataset choice, `test_set.templates`)."""
    return list(test_set.templates) if choice == "per_set" else template_set(choice)


class FixedPromptMethod(Method):
    """A method whose class prompts never change: `config.templates` is encoded once per set."""

    def setup(self, model: CLIP, test_set: TestSet) -> None:
        self.model = model
        with self.autocast():
            templates = class_templates(self.config.templates, test_set)
            self.text = encode_class_prompts(model, test_set.classnames, templates)  # (C, D)

    def class_logits(self, features: Tensor) -> Tensor:
        """Normalised features (..., D) -> fp32 logits (..., C) = logit_scale.exp() * cos(feature, class)."""
        return self.model.logit_scale.exp().float() * features @ self.text.T


@dataclasses.dataclass
class ZeroShotConfig(MethodConfig):
    templates: Templates = "single"  # see class_templates


@register
class ZeroShot(FixedPromptMethod):
    """CLIP's zero-shot classifier on the original view: logits = logit_scale.exp() * f(view 0) @ T.T."""

    name = "zeroshot"
    n_views = 1
    Config = ZeroShotConfig
    source = "CLIP (Radford et al., ICML'21); prompt 'a photo of a {}.' as azshue/TPT clip/custom_clip.py"

    @torch.no_grad()
    def predict(self, views: Tensor) -> Tensor:
        return self.class_logits(self.encode_views(views[:1]))[0]  # (C,)


@dataclasses.dataclass
class EnsembleConfig(ZeroShotConfig):
    templates: str = "openai_80"


@register
class Ensemble(ZeroShot):
    """Zero-shot CLIP with a template ensemble: each template's normalised class embedding, averaged and
    normalised again. 'openai_80' is the "Ensemble" baseline of TPT and MINT; 'per_set' reproduces TDA's
    per-dataset templates (kdiAAA/TDA `datasets/*.py`)."""

    name = "ensemble"
    Config = EnsembleConfig
    source = "CLIP's 80 ImageNet templates (openai/CLIP notebooks), the TPT/MINT 'Ensemble' row; per_set: kdiAAA/TDA"
