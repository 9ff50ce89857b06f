"""Each method's bound, for `mintclip bench --breakdown`: the encoder, backward and optimiser work that no
exact reformulation can remove from one test image (docs/performance.md § The bound).

A bound does only that work, on the method's own model, prompts and bank, at the sizes the method's
own decisions set (its selected views, DynaPrompt's selected prompts), and computes no prediction: the
bench runs the method's `predict` first, untimed, then the bound on the same views, timed phase by
phase with the breakdown's clock; the bound's time is the sum of its phases. What is irreducible:

* the frozen image encoder runs once over the views (zero-shot: over view 0 alone);
* text runs each class's prompt to its own EOT (not the batch's longest), the shared prefix once;
* a text forward whose context is the same for every image (TPT's and MINT's first step: the context
  is reset to its start per image) is built once per set, so only its backward is per image;
* gradients flow only where the loss reaches: MINT's selected views, DynaPrompt's selected prompts;
* a prompt that changed must be encoded again to predict (the tuned context, the updated slots).

A bound leaves the method's state (MINT's bank, DynaPrompt's buffer) as the method left it, so the
next image sees the method's own state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .adapt.base import Method
from .adapt.prompts import TextPromptLearner


class OwnLengthText:
    """A prompt learner's class features with each prompt cut at its own EOT: one length bucket per
    distinct length, the shared prefix once for all."""

    def __init__(self, learner: TextPromptLearner) -> None:
        self.learner = learner
        self.buckets = learner.bucketed(len(set(learner.suffix_lengths)))

    def __call__(self, ctx: Tensor | None = None) -> Tensor:
        """(C, D) normalised features of the learner's context, or (K, C, D) of K contexts (K, n_ctx, W)."""
        return self.learner(ctx, self.buckets)


class Bound:
    """One method's bound; `__call__(views)` after the method's own `predict` of those views."""

    def __init__(self, method: Method) -> None:
        self.method = method
        self.text = OwnLengthText(method.learner) if hasattr(method, "learner") else None
        self._start_graph: tuple[Tensor, Tensor] | None = None

    def __call__(self, views: Tensor) -> None:
        WORK[self.method.name](self, views)

    def start_graph(self) -> tuple[Tensor, Tensor]:
        """The starting context's class features with their graph, once per set (per bench process)."""
        if self._start_graph is None:
            start = self.method.learner.ctx_start.clone().requires_grad_(True)
            with torch.enable_grad(), self.method.autocast():
                self._start_graph = start, self.text(start)
        return self._start_graph

    def tune_context(self, steps: int, prompted: Callable[[], Tensor] | None = None,
                     params: Sequence[Tensor] = ()) -> Tensor:
        """`steps` AdamW steps on a copy of the starting context: step 1 back-propagates the set's
        starting graph, later steps encode the context anew; `prompted()` (MINT's selected views) is
        run and back-propagated to `params` at every step. Returns the tuned context."""
        cfg, method = self.method.config, self.method
        ctx = method.learner.ctx_start.clone().requires_grad_(True)
        optimizer = torch.optim.AdamW([ctx, *params], lr=cfg.lr, weight_decay=cfg.weight_decay)
        with torch.enable_grad():
            for step in range(steps):
                if prompted is not None:
                    prompted().sum().backward()
                if step == 0:
                    start, graph = self.start_graph()
                    ctx.grad, = torch.autograd.grad(graph.sum(), start, retain_graph=True)
                else:
                    with method.autocast():
                        self.text(ctx).sum().backward()
                optimizer.step()
                optimizer.zero_grad()
        return ctx.detach()


def _views_once(bound: Bound, views: Tensor) -> None:
    bound.method.encode_views(views)


def _view0_once(bound: Bound, views: Tensor) -> None:
    bound.method.encode_views(views[:1])


def _tpt(bound: Bound, views: Tensor) -> None:
    method = bound.method
    method.encode_views(views)
    ctx = bound.tune_context(method.config.steps)
    with torch.no_grad(), method.autocast():
        bound.text(ctx)


def _mint(bound: Bound, views: Tensor) -> None:
    """The prompt-free query pass, one ranking pass of the prompted views, then per step the selected
    views' prompted pass and backward (and the text's), and view 0's prompted pass to predict."""
    method, cfg = bound.method, bound.method.config
    queries = method.queries(views)
    index, _ = method.bank.retrieve(queries, cfg.top_k, reweight=False) if cfg.memory == "bank" else (
        torch.zeros(len(views), 1, dtype=torch.long, device=views.device), None)
    with torch.no_grad():
        method.image_features(views, index)
    chosen = max(1, int(len(views) * cfg.selection))
    bank = [] if cfg.memory == "none" else [method.bank.keys, method.bank.values]
    kept = [p.detach().clone() for p in bank]  # the method's bank, put back afterwards
    ctx = bound.tune_context(cfg.steps, lambda: method.image_features(views[:chosen], index[:chosen]), bank)
    with torch.no_grad():
        method.image_features(views[:1], index[:1])
        with method.autocast():
            bound.text(ctx)
        for p, value in zip(bank, kept):
            p.copy_(value)


def _dynaprompt(bound: Bound, views: Tensor) -> None:
    """The views once; every scored prompt's class texts without grad; the distinct selected prompts'
    with grad and their backward; one AdamW step; those prompts again to predict."""
    method = bound.method
    buffer, selection = method.buffer, method.last_selection
    method.encode_views(views)
    scored = len(buffer) if method.config.variant == "reference" else 1 + len(buffer.occupied())
    start = method.learner.ctx_start
    with torch.no_grad(), method.autocast():
        bound.text(buffer.ctx[:scored] + start)
    rows = buffer.ctx[selection.slots.unique()].clone().requires_grad_(True)
    optimizer = torch.optim.AdamW([rows], lr=method.config.lr, weight_decay=method.config.weight_decay)
    with torch.enable_grad(), method.autocast():
        bound.text(rows + start).sum().backward()
    optimizer.step()
    with torch.no_grad(), method.autocast():
        bound.text(rows.detach() + start)


WORK: dict[str, Callable[[Bound, Tensor], None]] = {
    "zeroshot": _view0_once, "zero": _views_once, "mta": _views_once, "tda": _views_once,
    "tpt": _tpt, "ctpt": _tpt, "mint": _mint, "dynaprompt": _dynaprompt,
}
