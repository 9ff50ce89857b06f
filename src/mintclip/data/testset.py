"""What a method is told about the set it is about to see: a `TestSet` value (docs/datasets.md § Set ids
and families).

Methods decide their per-set defaults from the set's family (C-TPT's λ, TDA's views), never by testing
the spelling of its id, and a user's own folder is a family of its own, whose defaults `--hp` overrides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .catalog import CROSS_DOMAIN_SETS
from .folders import ImageDataset
from .templates import templates_for

Family = Literal["imagenet", "imagenet-shift", "cross-domain", "user"]


def family_of(set_id: str) -> Family:
    """'imagenet' (I), 'imagenet-shift' (A, V, R, K), 'cross-domain' (the ten sets and Aircraft), or
    'user' for 'folder', 'folder:NAME' and 'csv' sets."""
    if set_id == "I":
        return "imagenet"
    if set_id in ("A", "V", "R", "K"):
        return "imagenet-shift"
    return "cross-domain" if set_id in CROSS_DOMAIN_SETS else "user"


@dataclass(frozen=True)
class TestSet:
    set_id: str
    classnames: list[str]  # in label order: the classes the logits range over
    family: Family
    templates: list[str]  # the templates the references use for this set (TDA's per-set choice)
    augmix: bool  # the reference default: AugMix views for the cross-domain sets only

    __test__ = False  # not a pytest test class, despite its name

    @classmethod
    def named(cls, set_id: str, classnames: list[str]) -> TestSet:
        """The test set `set_id` over these classes, with its family's defaults."""
        family = family_of(set_id)
        return cls(set_id, list(classnames), family, templates_for(set_id), augmix=family == "cross-domain")

    @classmethod
    def of(cls, dataset: ImageDataset) -> TestSet:
        return cls.named(dataset.set_id, dataset.classnames)
