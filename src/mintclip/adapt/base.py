"""The interface every test-time method implements, its hyper-parameters, and the registry by name.

A method sees a frozen CLIP model and the `TestSet` (class names, templates, family) once per set, then
one test image at a time as its views (view 0 the original); it returns logits over the classes.
Episodic methods (`online = False`) forget everything between images; online ones keep state, which
`state_dict` exposes so that a run can resume exactly. The engine never branches on a method's name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import pkgutil
import types
import typing
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import TestSet
from ..model import CLIP

_REGISTRY: dict[str, type[Method]] = {}


@dataclasses.dataclass
class MethodConfig:
    """Hyper-parameters shared by all methods; each method's Config extends it with the reference defaults."""

    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # "auto": bf16 autocast on GPU, fp32 on CPU


@dataclasses.dataclass
class Prediction:
    """What `predict_batch` returns for B test images."""

    logits: Tensor  # (B, C) fp32
    skipped_updates: list[int]  # per image: optimiser steps refused for a non-finite gradient
    view0_features: Tensor | None = None  # (B, D) normalised frozen features of view 0, if the method has them


@dataclasses.dataclass
class Diagnostics:
    """A method's account of its state at the end of a set, saved beside the records and shown by the
    report as it is, whatever the method: a row of numbers, bar charts, and the state's tensors."""

    numbers: dict[str, int | float] = dataclasses.field(default_factory=dict)  # diagnostics.json
    bars: dict[str, Tensor] = dataclasses.field(default_factory=dict)  # 1-D each, drawn as diagnostics_<name>.png
    tensors: dict[str, Tensor] = dataclasses.field(default_factory=dict)  # diagnostics.safetensors


@dataclasses.dataclass
class _Tally:
    """What one `predict` call noticed on the way, for the default `predict_batch` to return."""

    skipped_updates: int | Tensor = 0  # a device tensor once a step was guarded: read when the image is done
    view0_features: Tensor | None = None  # (1, D)


class Method(ABC):
    name: ClassVar[str]
    online: ClassVar[bool] = False
    n_views: ClassVar[int] = 64  # views the method needs per image (1: only the original)
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    source: ClassVar[str] = ""  # where the defaults come from: official code file or paper
    calibrated: ClassVar[bool] = True  # softmax of the logits is a probability, so ECE means something
    official: ClassVar[bool] = True  # False: no official code exists; the method is designed from its paper
    # the config overrides that select the official code's order of work (mintclip.reference), where a
    # method's own path reorders it: the same numbers by more work, timed against it by `mintclip bench`
    reference_overrides: ClassVar[dict[str, Any]] = {}
    # an online state that belongs to one class list (TDA's per-class caches): it cannot flow back and
    # forth between sets whose classes differ, which an interleaving stream scenario would ask of it
    state_per_class_list: ClassVar[bool] = False

    def __init__(self, config: MethodConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()
        check_config(self.config)
        self.model: CLIP | None = None
        self._tally = _Tally()

    def guarded_step(self, optimizer: torch.optim.Optimizer) -> None:
        """optimizer.step(), undone where a gradient is NaN or infinite (a non-finite loss gives such
        gradients): the parameters and the optimiser's state (moments, step count) keep their values
        from before, as a gradient scaler's skipped step leaves them, so no prompt, bank or optimiser
        state of a later sample is poisoned; the step is counted. Decided on the device by `torch.where`
        (no host synchronisation), which needs the step count on the device: see `adamw`."""
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            optimizer.step()
            return
        finite = torch.stack([torch.isfinite(p.grad).all() for p in params]).all()
        tensors = params + [v for p in params for v in optimizer.state.get(p, {}).values() if isinstance(v, Tensor)]
        before = [t.detach().clone() for t in tensors]
        fresh = [p for p in params if p not in optimizer.state]  # their state appears with this step
        optimizer.step()
        with torch.no_grad():
            for tensor, old in zip(tensors, before):
                tensor.copy_(torch.where(finite, tensor, old))
            for p in fresh:  # a refused first step: state as if never stepped (zero moments, step 0)
                for value in optimizer.state[p].values():
                    if isinstance(value, Tensor):
                        value.copy_(torch.where(finite, value, torch.zeros_like(value)))
        self._tally.skipped_updates = self._tally.skipped_updates + (~finite).long()

    def adamw(self, params: list[Tensor], lr: float, weight_decay: float) -> torch.optim.AdamW:
        """A fresh AdamW over `params`; on a GPU `capturable`, so its step count lives on the device,
        where `guarded_step` can undo a step without reading anything back."""
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, capturable=self.model.device.type == "cuda")

    @property
    def views_per_image(self) -> int:
        """The config's n_views where the method has that hyper-parameter, else the class's."""
        return getattr(self.config, "n_views", self.n_views)

    def augmix(self, test_set: TestSet) -> bool | None:
        """AugMix views for this set, or None for the set's reference default (`test_set.augmix`)."""
        return None

    def check(self, model: CLIP) -> None:
        """Raise ValueError if this method cannot run on `model` (called before any image is read)."""

    @abstractmethod
    def setup(self, model: CLIP, test_set: TestSet) -> None:
        """Once per set: build the text side for its classes."""

    @abstractmethod
    def predict(self, views: Tensor) -> Tensor:
        """views (V, 3, H, W) on the model's device, view 0 the original -> fp32 logits (C,)."""

    def predict_batch(self, views: Tensor) -> Prediction:
        """views (B, V, 3, H, W), image b's views in views[b] (view 0 the original). Episodic methods may
        adapt the B images together, with the same predictions as B calls of `predict`; this default is
        those calls, in order, which is also the only right way for an online method (each image sees the
        state the previous one left)."""
        logits, skipped, view0 = [], [], []
        for image_views in views:
            self._tally = _Tally()
            logits.append(self.predict(image_views))
            skipped.append(int(self._tally.skipped_updates))
            view0.append(self._tally.view0_features)
        self._tally = _Tally()
        return Prediction(torch.stack(logits), skipped, None if any(v is None for v in view0) else torch.cat(view0))

    def notes(self) -> list[str]:
        """Lines for the run's summary: choices a reader of the results must know (e.g. the prompt's start)."""
        return []

    def sample_trace(self) -> dict[str, Any]:
        """What the last image did to an online method's state, as small JSON values (docs/protocols.md
        § Introspection): written per sample beside the records when a run asks for it; {} for none.
        Read back from the device once per image, after its prediction."""
        return {}

    def diagnostics(self) -> Diagnostics:
        """At the end of a set of an online method: what its state holds (e.g. MINT's bank usage)."""
        return Diagnostics()

    def state_dict(self) -> dict[str, Any]:
        """Online state (bank, buffer, cache) for resume; empty for episodic methods."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Must work before `setup` too: state carried from one set to the next is restored before it."""
        if state:
            raise ValueError(f"{self.name} keeps no state across images, got {sorted(state)}")

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast_for(self.model.device, self.config.precision)

    @torch.no_grad()
    def encode_views(self, views: Tensor) -> Tensor:
        """(V, 3, H, W) -> (V, D) L2-normalised fp32 image features; the frozen encoder runs under autocast.
        The views of B images (B, V, 3, H, W) go through it in one pass -> (B, V, D). View 0's features
        are noted for the default `predict_batch`, so the engine's zero-shot prediction needs no second
        pass of the encoder."""
        with self.autocast():
            features = self.model.encode_image(views.flatten(0, -4)).unflatten(0, views.shape[:-3])
        features = F.normalize(features.float(), dim=-1)
        self._tally.view0_features = features.reshape(-1, views.shape[-4], features.shape[-1])[:, 0]
        return features


def all_finite(tensors: list[Tensor]) -> bool:
    """Whether every tensor is free of NaN and infinity (true for none); one host synchronisation."""
    return not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def autocast_for(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """bf16 (or fp16) autocast in the encoders; logits, softmax and entropy are computed in fp32 outside it."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device.type, dtype=dtype)


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: the method becomes available by its `name`, which no other method may have."""
    known = _REGISTRY.get(cls.name)
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"two methods are named {cls.name!r}: {known.__module__}.{known.__qualname__} and "
                         f"{cls.__module__}.{cls.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def available_methods() -> dict[str, type[Method]]:
    """Every registered method by name: each module of this package is imported, and registers its own."""
    package = importlib.import_module(__package__)
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{__package__}.{module.name}")
    return dict(_REGISTRY)


BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _options(hint: Any) -> tuple[Any, ...]:
    """`int | None` -> (int, NoneType); `Literal["a", "b"] | None` -> (Literal["a", "b"], NoneType); `int` -> (int,)."""
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def _choices(hint: Any) -> tuple[Any, ...] | None:
    """The values a `Literal[...]` (or `Literal[...] | None`) field allows; None for any other type."""
    literals = [t for t in _options(hint) if typing.get_origin(t) is typing.Literal]
    if not literals:
        return None
    return (*typing.get_args(literals[0]), *([None] if type(None) in _options(hint) else []))


def parse_value(key: str, value: Any, hint: Any) -> Any:
    """A `--hp` string converted to the field's declared type (`int`, `float`, `bool`, `str`, `Literal[...]`,
    `X | None`); values from YAML arrive typed and pass as they are (`check_config` judges them). A bad
    value names the key and the expected type."""
    if not isinstance(value, str):
        return value
    options = _options(hint)
    if type(None) in options and value.strip().lower() == "none":
        return None
    kind = next((t for t in options if t is not type(None)), str)
    if typing.get_origin(kind) is typing.Literal:
        if value not in typing.get_args(kind):
            raise ValueError(f"hyper-parameter {key}={value!r}: expected one of {', '.join(typing.get_args(kind))}")
        return value
    if kind is bool:
        if value.strip().lower() not in BOOLEANS:
            raise ValueError(f"hyper-parameter {key}={value!r}: expected true or false")
        return BOOLEANS[value.strip().lower()]
    if kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            raise ValueError(f"hyper-parameter {key}={value!r}: expected {'an integer' if kind is int else 'a number'}"
                             ) from None
    return value


def parse_overrides(config_type: type[MethodConfig], overrides: dict[str, Any]) -> dict[str, Any]:
    """Values from YAML or `--hp key=value` strings, converted to each field's declared type."""
    hints = typing.get_type_hints(config_type)
    fields = [f.name for f in dataclasses.fields(config_type)]
    unknown = [key for key in overrides if key not in fields]
    if unknown:
        raise ValueError(f"unknown hyper-parameter {unknown[0]!r} for this method; known: {', '.join(fields)}")
    return {key: parse_value(key, value, hints[key]) for key, value in overrides.items()}


def check_config(config: MethodConfig) -> None:
    """Every `Literal[...]` field holds one of its values, however the config was made (--hp, YAML, Python)."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        allowed, value = _choices(hints[field.name]), getattr(config, field.name)
        if allowed is not None and value not in allowed:
            raise ValueError(f"hyper-parameter {field.name}={value!r}: expected one of "
                             f"{', '.join(str(a) for a in allowed)}")


def build_method(name: str, overrides: dict[str, Any] | None = None) -> Method:
    methods = available_methods()
    if name not in methods:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(methods))}")
    cls = methods[name]
    return cls(cls.Config(**parse_overrides(cls.Config, overrides or {})))
