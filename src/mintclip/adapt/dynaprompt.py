"""DynaPrompt: dynamic test-time prompt tuning (Xiao et al., ICLR'25), reference `zzzx1224/DynaPrompt@acd33cf`.

An online buffer of learnable text prompts. For each test image the prompts are scored on its views
(prediction entropy, "probability difference"), a few are selected, tuned by one AdamW step on the
marginal entropy of the most confident views, and the image is classified with the selected prompts'
averaged logits. New prompts start at "a photo of a"; inactive ones are deleted (docs/methods.md
§ DynaPrompt).

Two variants (`Config.variant`):
* `reference` (default): what `dynap_classification.py` and `clip/custom_clip_lessctx.py` do under
  `run_dynap.sh`, quirks included (listed on `DynaPrompt`);
* `paper`: the method as the paper describes it (docs/methods.md § DynaPrompt), the reading
  documented on `DynaPrompt`.

Exact savings over the reference, none of which changes the result: the frozen image encoder runs once
per image (the reference encodes the 64 views again for every forward and view 0 again to predict); the
buffer's class prompts go through the text encoder in one batched pass cut at the longest EOT, each
slot's shared prefix (SOS + context) run once for all its classes (`TextTransformer.encode_shared_prefix`).

Precision: the reference runs fp16 autocast with `GradScaler(init_scale=1000)`. Here the encoders run
under `self.autocast()` (bf16 on GPU, fp32 on CPU) while logits, softmax, entropies and the loss are
fp32; bf16 has fp32's range and fp32 needs none, so there is no scaler (the unscaled AdamW step is the
same update; the reference's scaler would also skip a step whose fp16 gradients overflow, which we do not).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from torch import Tensor

from ..data import TestSet
from ..model import CLIP
from .base import Diagnostics, Method, register
from .losses import entropy, marginal_entropy, most_confident
from ..reference.text import padded_class_features
from .prompts import PromptTuningConfig, context_words, prompt_learner

REFERENCE_SLOTS = 12  # run_dynap.sh num_p=12
PAPER_SLOTS = 10  # the paper's buffer size (docs/methods.md § DynaPrompt, paper and code item 1; issue #3)


# -- scores and selection: pure functions of the per-prompt scores ------------------------------------

def slot_scores(logits: Tensor, difference: str = "max-logit") -> tuple[Tensor, Tensor]:
    """Logits (V, K, C) of V views (view 0 the original) under K prompts -> (entropy, difference), each (K,).

    entropy: each view's prediction entropy, averaged over all V views (view 0 included), as the code.
    difference "max-logit" (reference, `test_time_tuning`'s plpd): view 0's largest logit minus each
    augmented view's own largest logit, averaged over the V - 1 augmented views. "probability" (paper;
    docs/methods.md § DynaPrompt, paper and code item 5): the softmax probability of the class
    predicted on view 0, view 0's minus each augmented view's, averaged likewise.
    """
    logits = logits.float()
    ent = entropy(logits).mean(0)
    if difference == "max-logit":
        top = logits.max(-1).values  # (V, K)
        return ent, (top[0] - top[1:]).mean(0)
    probs = logits.softmax(-1)
    predicted = probs[0].argmax(-1)  # (K,)
    p = probs.gather(-1, predicted.expand(probs.shape[0], -1).unsqueeze(-1)).squeeze(-1)  # (V, K)
    return ent, (p[0] - p[1:]).mean(0)


def _descending(values: Tensor, tie_order: str = "topk") -> Tensor:
    """Indices by descending value. Equal values: "topk" in the order `torch.topk` gives on this device, as
    the code's `p_ent.topk(num_prompts)`; "stable" by index, lower first (see `DynaPrompt`, ties)."""
    if tie_order == "topk":
        return values.topk(len(values)).indices
    return torch.sort(values, descending=True, stable=True).indices


def _ranks(order: Tensor) -> Tensor:
    """The inverse permutation: ranks[order[i]] = i."""
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(len(order), device=order.device)
    return ranks


def reference_selection(ent: Tensor, diff: Tensor, init: Tensor | int, tie_order: str = "topk") -> Tensor:
    """The code's selection over all K slots' scores (K,); init: the fresh slot's id (`ctx_order[0]`);
    tie_order: how equal scores are ordered (`_descending`).

    Returns slot ids, the init slot last; the init slot can also appear earlier (counted twice).
      ent_order   slots by entropy, descending; r = the init slot's position in it
      candidates  slots after the init in ent_order (if the init is last: the init itself)
                  AND among the first r slots by difference, descending (r from the ENTROPY order)
      selected    ent_order[candidate ids] + [init]: the sorted candidate slot ids are used as
                  positions in ent_order (`ent_order[alllist]`), then the init slot
    """
    n = ent.shape[0]
    init = torch.as_tensor(init, device=ent.device)
    ent_order = _descending(ent, tie_order)
    ent_rank, diff_rank = _ranks(ent_order), _ranks(_descending(diff, tie_order))
    r = ent_rank[init]
    by_entropy = ent_rank >= (r + 1).clamp(max=n - 1)
    by_difference = diff_rank < r
    candidates = (by_entropy & by_difference).nonzero().flatten()  # ascending ids, as np.intersect1d
    return torch.cat([ent_order[candidates], init.reshape(1)])


def paper_selection(ent: Tensor, diff: Tensor) -> Tensor:
    """Scores of [v0, buffered prompts...] (1 + M,) -> bool (M,): the buffered prompts with lower entropy
    AND larger probability difference than the initial prompt v0 (the paper's Eq. 3 and 5, whose
    thresholds come from v0: DynaPrompt issue #1)."""
    return (ent[1:] < ent[0]) & (diff[1:] > diff[0])


@dataclasses.dataclass
class Selection:
    slots: Tensor  # selected slot ids, in the order the buffer moved them (may repeat: reference quirk)
    rows: Tensor  # their rows in the scored logits (reference: the slot ids; paper: 0 is v0)
    appended: int | None = None  # paper: the slot that took a new prompt
    deleted: int | None = None  # paper: the prompt deleted to make room


@dataclasses.dataclass
class PromptBuffer:
    """The online state: K prompt slots as residuals on the initial context, a recency queue, use counts.

    A slot with use 0 holds no prompt of its own: its residual is zero, i.e. the initial prompt.
    """

    ctx: Tensor  # (K, n_ctx, W) fp32 residuals: slot k's context is init_ctx + ctx[k]
    order: Tensor  # (K,) slot ids, least recently selected first (the code's ctx_order)
    use: Tensor  # (K,) selections since the slot last started (the code's ctx_use)

    @classmethod
    def empty(cls, slots: int, n_ctx: int, width: int, device: torch.device | str | None = None) -> PromptBuffer:
        return cls(torch.zeros(slots, n_ctx, width, device=device), torch.arange(slots, device=device),
                   torch.zeros(slots, dtype=torch.long, device=device))

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PromptBuffer:
        missing = {"ctx", "order", "use"} - set(state)
        if missing:
            raise ValueError(f"dynaprompt state lacks {sorted(missing)}")
        buffer = cls(state["ctx"].float().clone(), state["order"].long().clone(), state["use"].long().clone())
        k = buffer.ctx.shape[0]
        if buffer.ctx.ndim != 3 or buffer.order.shape != (k,) or buffer.use.shape != (k,):
            raise ValueError(f"dynaprompt state has inconsistent shapes: ctx {tuple(buffer.ctx.shape)}, "
                             f"order {tuple(buffer.order.shape)}, use {tuple(buffer.use.shape)}")
        return buffer

    def state_dict(self) -> dict[str, Tensor]:
        return {"ctx": self.ctx.detach().cpu().clone(), "order": self.order.cpu().clone(),
                "use": self.use.cpu().clone()}

    def to(self, device: torch.device | str) -> PromptBuffer:
        return PromptBuffer(self.ctx.to(device), self.order.to(device), self.use.to(device))

    def __len__(self) -> int:
        return self.ctx.shape[0]

    def occupied(self) -> Tensor:
        """Ids of the slots that hold a prompt (selected at least once), ascending."""
        return (self.use > 0).nonzero().flatten()

    def restart(self, slot: int) -> None:
        """Delete a slot's prompt: residual zero (back to the initial prompt), use count zero."""
        self.ctx[slot] = 0
        self.use[slot] = 0

    def touch(self, slots: Tensor) -> None:
        """For each listed slot in turn: move it to the end of the queue and count one use (the code's
        remove/append/+= 1 loop). A repeated slot counts twice and ends where it was listed last."""
        position = torch.arange(len(slots), device=slots.device)
        later = ((slots[:, None] == slots[None, :]) & (position[None, :] > position[:, None])).any(1)  # listed again
        moved = slots[~later]
        self.order = torch.cat([self.order[~torch.isin(self.order, slots)], moved])
        self.use = self.use + torch.bincount(slots, minlength=len(self))

    # reference ---------------------------------------------------------------------------------------

    def recycle_if_full(self) -> int | None:
        """Before scoring (reference): if no slot is unused, restart the least recently selected one,
        which stays at the head of the queue and is this sample's init slot. Returns it, or None."""
        if bool((self.use == 0).any()):
            return None
        slot = int(self.order[0])
        self.restart(slot)
        return slot

    def select_reference(self, ent: Tensor, diff: Tensor, tie_order: str = "topk") -> Selection:
        """Scores of all K slots -> the code's selection (`reference_selection`), queue and counts updated."""
        slots = reference_selection(ent, diff, self.order[0], tie_order)
        self.touch(slots)
        return Selection(slots, slots)

    # paper -------------------------------------------------------------------------------------------

    def select_paper(self, ent: Tensor, diff: Tensor) -> Selection:
        """Scores of [v0, *occupied slots (ascending)] -> the paper's selection. The qualifying prompts if
        any; else a new prompt (v0) in the first unused slot, deleting the least recently selected
        prompt when every slot is taken. Queue and counts updated."""
        occupied = self.occupied()
        if ent.shape != (1 + len(occupied),) or diff.shape != ent.shape:
            raise ValueError(f"expected scores for v0 and {len(occupied)} buffered prompts, got {tuple(ent.shape)}")
        qualifies = paper_selection(ent, diff)
        if bool(qualifies.any()):
            rows = qualifies.nonzero().flatten() + 1
            selection = Selection(occupied[rows - 1], rows)
        else:
            free = self.order[self.use[self.order] == 0]
            deleted = None
            if len(free):
                slot = int(free[0])
            else:
                slot = deleted = int(self.order[0])
                self.restart(slot)
            selection = Selection(torch.tensor([slot], device=ent.device),
                                  torch.zeros(1, dtype=torch.long, device=ent.device), slot, deleted)
        self.touch(selection.slots)
        return selection


# -- the method ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class DynaPromptConfig(PromptTuningConfig):
    # as TPT's: scripts/test_dynap.sh ctx_init=a_photo_of_a (the context has its token count, --n_ctx 4;
    # prompts are residuals on these embeddings, so a start is needed: the words or a CoOp context),
    # run_dynap.sh lr=0.005 (torch.optim.AdamW(prompt_learner.parameters(), lr), weight decay PyTorch's
    # 0.01), selection_p=0.1 (6 of 64 views, at least 1 here), bs=64, one step per sample
    # "reference": the official code's behaviour, quirks included; "paper": the paper's description
    variant: Literal["reference", "paper"] = "reference"
    # prompt slots; None: 12 for reference (run_dynap.sh num_p=12), 10 for paper (docs/methods.md § DynaPrompt)
    num_p: int | None = None
    # at each set's start: "per-set" a fresh buffer; "code" the official code's multi-set run
    # (model.reset() zeroes every prompt, ctx_order and ctx_use carry over); "none" everything carries
    reset_state: Literal["per-set", "code", "none"] = "per-set"
    # the official code's order of work, for benchmarks and as an oracle: every slot's class prompts
    # padded to 77 tokens, and view 0 encoded again to predict; the same numbers, more work
    reference_order: bool = False
    # equal scores (fresh slots score exactly alike) in the reference variant: "topk" as the code
    # (torch.topk's order on the scores' device), "stable" lower slot id first on every device
    tie_order: Literal["topk", "stable"] = "topk"


@register
class DynaPrompt(Method):
    """DynaPrompt, online. `variant="reference"` reproduces the official code, quirks included:

    1. Buffer of 12 slots (run_dynap.sh num_p=12; the paper says 10).
    2. Prompts are residuals on the "a photo of a" embeddings: slot k's context is init_ctx + ctx[k], ctx
       starts at zero, and a deleted prompt is zeroed, i.e. reset to "a photo of a" (issue #5).
    3. `ctx_order` is a recency queue (least recently selected first) and `ctx_use` counts selections.
    4. Before scoring a sample, if no slot has use 0, the slot at the head of the queue is zeroed and its
       count set to 0; it stays at the head. Once every slot has been used this happens on every sample:
       a prompt is deleted and a fresh one appended each time (items 2 and 6 below: by recency).
    5. The head of the queue is the "init" slot; it is always selected (listed last), even when other
       slots qualify. During warm-up it is the first never-selected slot.
    6. Scores: entropy averaged over all views (view 0 included); "probability difference" = view 0's
       largest logit (x100 scale) minus each augmented view's own largest logit, averaged (item 5 below).
    7. Candidates: slots ranked after the init slot by entropy (descending; if the init is ranked last,
       the init itself), intersected with the first r slots by difference, r being the init slot's rank
       in the ENTROPY order (item 3 below).
    8. The sorted candidate slot ids index the entropy order as positions (`ent_order[alllist]`, item 4
       below);
       so the init slot itself can be selected a second time, and then counts twice in the view
       selection, the loss, the use count and the prediction average.
    9. Queue update: each selected slot in turn is moved to the end (init last); use += 1 per listing.
    10. Views: the int(V * 0.1) = 6 lowest-entropy views, entropy averaged over the selected slots (at
        least one here; the code would take none below 10 views).
    11. Loss: the mean over the selected slots of each slot's marginal entropy on those views.
    12. One AdamW step (lr 5e-3, fresh optimiser state per sample) on the whole (num_p, n_ctx, W) buffer:
        only selected slots get gradient, but the decoupled weight decay (0.01) shrinks EVERY slot's
        residual by (1 - lr * wd), pulling all prompts towards "a photo of a".
    13. Every slot runs through the text encoder with grad; selection uses that same forward's logits.
    14. Prediction: the selected slots' logits (not probabilities) on view 0 with the updated prompts,
        averaged (duplicates included).
    15. Across sets the code zeroes every residual (`model.reset()`) but keeps `ctx_order` and `ctx_use`:
        `reset_state="code"`. The default here is a fresh buffer per set (`"per-set"`).

    Ties: fresh slots all have zero residual, so they score identically, and the code orders them by
    whatever `torch.topk` returns (`ent_order = p_ent.topk(num_prompts)[1]`, likewise `plpd_order`):
    kernel dependent on CUDA, scrambled on CPU. Because of item 8 that order decides which slots are
    selected, so the buffer follows it. `tie_order="topk"` (default) calls `topk` on the same device, as
    the code; the official result itself therefore depends on the device it ran on. `tie_order="stable"`
    orders equal scores by slot id, lower first, the same on every device (for reproducibility across
    machines); during warm-up it puts the init slot (the lowest unused id) first among the fresh ones.

    (Items below: docs/methods.md § DynaPrompt, "Paper and code"; issues: zzzx1224/DynaPrompt.)

    `variant="paper"`, this module's reading of the paper (docs/methods.md § DynaPrompt, and issue #1):
    * a buffer of up to 10 prompts; the initial prompt v0 ("a photo of a") is scored every sample as the
      reference point but does not occupy a slot;
    * selected: the buffered prompts with lower entropy AND larger probability difference than v0
      (Eq. 3 and 5, thresholds from v0, issue #1), not the code's rank cutoff; no index quirk;
    * the probability difference is on softmax probabilities of the class predicted on view 0 (item
      5); the entropy is averaged over all views, as in the code;
    * if none qualifies, a new prompt starting at v0 is appended (into the first unused slot), deleting
      the least recently selected prompt when the buffer is full (item 6 reads the paper's "inactive"
      as possibly by frequency; the authors call the queue head "the most inactive prompt" in issue #1,
      so recency is kept); if some qualify, nothing is appended and v0 is not added (item 2);
    * only the selected (or new) prompts are tuned, weight decay included; views, loss and the logit
      average for prediction are as in the code.
    """

    name = "dynaprompt"
    online = True
    n_views = 64
    Config = DynaPromptConfig
    source = "zzzx1224/DynaPrompt@acd33cf dynap_classification.py, clip/custom_clip_lessctx.py, run_dynap.sh"
    reference_overrides = {"reference_order": True}
    config: DynaPromptConfig

    def __init__(self, config: DynaPromptConfig | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        default_slots = REFERENCE_SLOTS if cfg.variant == "reference" else PAPER_SLOTS
        self.num_slots = default_slots if cfg.num_p is None else cfg.num_p
        if self.num_slots < 1:
            raise ValueError(f"dynaprompt needs at least one prompt slot, got num_p={cfg.num_p}")
        if cfg.n_views < 2:
            raise ValueError("dynaprompt needs at least 2 views: the probability difference compares view 0 "
                             "with the others")
        if context_words(cfg.ctx_init) is None and not cfg.coop:
            raise ValueError("dynaprompt needs ctx_init (or coop): its prompts are residuals on that start")
        if cfg.steps != 1:
            raise ValueError(f"dynaprompt takes one AdamW step per sample, as the official code; got steps={cfg.steps}")
        self.buffer: PromptBuffer | None = None
        self.last_selection: Selection | None = None
        self._restarted: int | None = None  # reference: the slot restarted before the last image's scoring
        self._stats = {"samples": 0, "selected": 0, "restarted": 0, "appended": 0}

    def setup(self, model: CLIP, test_set: TestSet) -> None:
        cfg = self.config
        self.model = model
        self.learner = prompt_learner(model, test_set.classnames, cfg)
        shape = (self.num_slots, self.learner.n_ctx, self.learner.ctx_start.shape[-1])
        if self.buffer is None or cfg.reset_state == "per-set":
            self.buffer = PromptBuffer.empty(*shape)
        else:
            self._check_shape(self.buffer, shape)
            if cfg.reset_state == "code":  # model.reset(): ctx := ctx_init_state (zeros); queue and counts stay
                self.buffer.ctx.zero_()
        self.buffer = self.buffer.to(model.device)
        self._stats = dict.fromkeys(self._stats, 0)
        self.last_selection = None

    # -- the pieces, each usable alone ---------------------------------------------------------------

    def slot_logits(self, residuals: Tensor, image_features: Tensor) -> Tensor:
        """Residuals (R, n_ctx, W), image features (V, D) -> fp32 logits (V, R, C), with grad to residuals:
        every slot's class texts in one pass of the text encoder (`reference_order`: R x C prompts of 77
        tokens, as custom_clip_lessctx.py builds them)."""
        contexts = residuals + self.learner.ctx_start  # the code's self.ctx + self.init_ctx
        with self.autocast():
            if self.config.reference_order:
                text = padded_class_features(self.learner, contexts)  # (R, C, D)
            else:
                text = self.learner(contexts)  # (R, C, D)
        scale = self.model.logit_scale.detach().float().exp()
        return (scale * image_features.float() @ text.flatten(0, 1).t()).unflatten(1, text.shape[:2])

    def adapt(self, image_features: Tensor) -> Selection:
        """Score the buffer's prompts on the views' features (V, D), select, update the buffer and take one
        AdamW step on the selected prompts; returns the selection (its slots hold the tuned prompts)."""
        cfg, buffer = self.config, self.buffer
        if cfg.variant == "reference":
            self._restarted = buffer.recycle_if_full()
            self._stats["restarted"] += self._restarted is not None
            scored = buffer.ctx  # every slot, with grad (the code's forward)
        else:
            scored = torch.cat([torch.zeros_like(buffer.ctx[:1]), buffer.ctx[buffer.occupied()]])  # v0 first
        if cfg.reference_order:  # every scored slot with grad, as the code
            residuals = scored.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                logits = self.slot_logits(residuals, image_features)
        else:  # scored without grad; only the selected slots, which alone reach the loss, again with it
            with torch.no_grad():
                logits = self.slot_logits(scored, image_features)
        difference = "max-logit" if cfg.variant == "reference" else "probability"
        ent, diff = slot_scores(logits.detach(), difference)
        if cfg.variant == "reference":
            selection = buffer.select_reference(ent, diff, cfg.tie_order)
        else:
            selection = buffer.select_paper(ent, diff)
        views = most_confident(entropy(logits[:, selection.rows].detach()).mean(1), cfg.selection)  # (6,)
        with torch.enable_grad():
            if cfg.reference_order:
                chosen = logits[:, selection.rows]  # (V, n, C)
                grad, = torch.autograd.grad(marginal_entropy(chosen[views]).mean(), residuals)
            else:
                distinct, position = selection.rows.unique(return_inverse=True)  # a slot may be listed twice
                rows = scored[distinct].detach().clone().requires_grad_(True)
                chosen = self.slot_logits(rows, image_features[views])[:, position]  # (6, n, C)
                rows_grad, = torch.autograd.grad(marginal_entropy(chosen).mean(), rows)
                grad = torch.zeros_like(scored).index_copy_(0, distinct, rows_grad)  # no other slot reaches the loss
        if cfg.variant == "reference":  # AdamW over the whole buffer tensor; rows are slot ids
            self._adamw_step(torch.arange(len(buffer), device=grad.device), grad)
        else:  # the paper tunes the selected (or new) prompts only; a new prompt's gradient is v0's row
            self._adamw_step(selection.slots, grad[selection.rows])
        self._stats["samples"] += 1
        self._stats["selected"] += len(selection.slots)
        self._stats["appended"] += selection.appended is not None
        self._stats["restarted"] += selection.deleted is not None
        self.last_selection = selection
        return selection

    def predict(self, views: Tensor) -> Tensor:
        image_features = self.encode_views(views)
        selection = self.adapt(image_features)
        view0 = self.encode_views(views[:1]) if self.config.reference_order else image_features[:1]
        with torch.no_grad():
            logits = self.slot_logits(self.buffer.ctx[selection.slots], view0)[0]  # (n, C)
        return logits.mean(0)

    def _adamw_step(self, slots: Tensor, grad: Tensor) -> None:
        """One step of a fresh AdamW (the code reloads the initial optimiser state per sample) on the
        buffer rows `slots` (unique) with gradient `grad`; AdamW is elementwise, so stepping these rows
        alone equals stepping the whole tensor with zero gradient elsewhere, except for weight decay."""
        cfg = self.config
        rows = self.buffer.ctx[slots].clone().requires_grad_(True)
        optimizer = self.adamw([rows], cfg.lr, cfg.weight_decay)
        rows.grad = grad.to(rows.dtype)
        self.guarded_step(optimizer)
        self.buffer.ctx[slots] = rows.detach()

    # -- state ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {} if self.buffer is None else self.buffer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Before `setup` (state carried between sets) or after it (resuming within a set)."""
        if self.model is None:
            self.buffer = PromptBuffer.from_state(state) if state else None
            return
        shape = (self.num_slots, self.learner.n_ctx, self.learner.ctx_start.shape[-1])
        buffer = PromptBuffer.from_state(state) if state else PromptBuffer.empty(*shape)
        self._check_shape(buffer, shape)
        self.buffer = buffer.to(self.model.device)

    @staticmethod
    def _check_shape(buffer: PromptBuffer, shape: tuple[int, int, int]) -> None:
        if tuple(buffer.ctx.shape) != shape:
            raise ValueError(f"dynaprompt state holds prompts of shape {tuple(buffer.ctx.shape)}, this run needs "
                             f"{shape} (num_p, n_ctx, text width)")

    # -- reporting -----------------------------------------------------------------------------------

    def notes(self) -> list[str]:
        cfg = self.config
        if cfg.variant == "reference":
            variant = (f"DynaPrompt variant 'reference' (official code, quirks kept): {self.num_slots} prompt slots, "
                       "the fresh prompt always selected, the least recently selected slot restarted every "
                       "sample once all are used; " + ("equal scores ordered by torch.topk on this device, as the code "
                       "(tie_order=topk)" if cfg.tie_order == "topk" else "equal scores ordered by slot id, lower "
                       "first (tie_order=stable)"))
        else:
            variant = (f"DynaPrompt variant 'paper': buffer of up to {self.num_slots} prompts, selected when their "
                       "entropy is lower and probability difference larger than 'a photo of a''s; a new prompt "
                       "only when none qualifies (deleting the least recently selected when full)")
        reset = {
            "per-set": "prompt buffer reset at each set (reset_state=per-set); the official code zeroes the "
                       "prompts per set but keeps its recency queue and use counts (reset_state=code)",
            "code": "prompt buffer as the official code across sets (reset_state=code): prompts zeroed at each "
                    "set, recency queue and use counts carried over",
            "none": "prompt buffer carried across sets unchanged (reset_state=none)",
        }[cfg.reset_state]
        return [variant, reset]

    def sample_trace(self) -> dict[str, Any]:
        """The slots the last image selected (in the buffer's order, repeats kept), the slot that took a
        new prompt and the one whose prompt was deleted (reference: the restarted slot is both), and
        how many slots hold a prompt after it."""
        selection = self.last_selection
        if selection is None:
            return {}
        restarted = self._restarted if self.config.variant == "reference" else None
        return {"selected": selection.slots.tolist(),
                "appended": selection.appended if restarted is None else restarted,
                "deleted": selection.deleted if restarted is None else restarted,
                "in_use": int((self.buffer.use > 0).sum())}

    def diagnostics(self) -> Diagnostics:
        if self.buffer is None or not self._stats["samples"]:
            return Diagnostics()
        stats = self._stats
        return Diagnostics({"samples": stats["samples"], "mean_selected_prompts": stats["selected"] / stats["samples"],
                            "prompts_restarted_or_deleted": stats["restarted"], "prompts_appended": stats["appended"],
                            "slots_in_use": int((self.buffer.use > 0).sum())},
                           bars={"slot_use": self.buffer.use.float().cpu()})
