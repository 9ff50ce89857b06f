"""MINT: Memory-Infused Prompt Tuning at test time (arXiv 2506.03190), official code `Jamieyi2004/MINT@b02acc7`
(models/mint.py, models/tta.py, main.py, utils/args.py; docs/methods.md § MINT).

Per test image: a prompt-free pass gives the residual-stream CLS after blocks 3, 7, 11 (the queries);
each query retrieves its top-2 entries of the Memory Prompt Bank; the 6 values, averaged, form the
associative prompt, whose token 0 is an extra key and token 1 an extra value at block 0. Text context
(reset every image) and bank (kept across the stream: the memory) are trained together by AdamW for 3
steps on `marginal entropy of the 6 most confident views - 0.2 * mean_views sum_6 distances`. The
prediction classifies view 0 with the tuned context and a fresh retrieval without warm-up re-weighting.

Exact fast path (`fast=True`; docs/performance.md § Image side): the same computation in another
order, so only float rounding differs (1.7e-5 on logits in the tests); Adam can magnify such rounding
into whole steps when the selected views' entropies are near zero, as it would between two GPUs:
* the queries come from the frozen encoder without prompts, so the query pass runs once per image
  (the code repeats it every forward) and view 0's queries serve the prediction;
* at step 1 a no-grad prompted pass over all views ranks them; gradients then flow only through the
  selected views' prompted pass, since only they enter the entropy. Retrieval, the counters and the key
  term still cover every view at every step, as in the code;
* the text context is reset to the same start for every image, so the step-1 text forward is built once
  per set and back-propagated with `retain_graph` (`reuse_step0_graph`, as TPT's).
`fast=False` runs the code's order (`mintclip.reference.mint`: every view with gradients, the query pass
every forward): the oracle of the tests and the yardstick of the benchmark.
Precision: the code runs fp16 autocast with GradScaler(1000); here bf16 autocast on GPU (fp32 on CPU)
with fp32 distances, logits and entropy, and no scaler.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from torch import Tensor

from ..data import TestSet
from ..model import CLIP
from .base import Diagnostics, Method, register
from .losses import marginal_entropy, select_confident_views
from ..reference import mint as reference_mint
from .memory import MemoryPromptBank
from .prompts import PromptTuningConfig, prompt_learner


@dataclasses.dataclass
class MINTConfig(PromptTuningConfig):
    # as TPT's: utils/args.py --n_ctx 4, --lr 5e-3 (torch.optim.AdamW(params, lr): weight decay 0.01),
    # --selection_p 0.1 (6 of 64 views), -b 64. ctx_init: main.py --load ./models/coop.pth is the official
    # default (a CoOp context, --hp coop=PATH); without one, "a photo of a"
    steps: int = 3  # utils/args.py --tta_steps 3
    bank_size: int = 512  # MINT.__init__ bank_size
    prompt_length: int = 2  # prompt_num: 1 key token + 1 value token
    top_k: int = 2  # topN, per query layer
    # CLS after these blocks (0-indexed) of the prompt-free pass; "auto": 3,7,11 on 12 blocks (the code,
    # which runs only on ViT-B: its bank width 768 is hard-coded), the same depths 4/12, 8/12, 12/12 elsewhere
    query_layers: str = "auto"
    inject_layers: str = "0"  # layer_e = [0]
    per_layer_keys: bool = False  # the code: one key set (group 0) for all query layers
    key_loss_weight: float = 0.2  # tta.py: - 0.2 * mean(sum(distance))
    key_loss_sign: float = -1.0  # the code's minus pushes keys away from their queries; +1 pulls (L2P)
    warmup: bool = True  # MINT.similarity's frequency re-weighting while total count <= N * views
    # ablations: "static" one learned visual prompt, no retrieval; "none" text only
    memory: Literal["bank", "static", "none"] = "bank"
    # the code keeps bank and counters across the sets of a run; or "per-set"
    reset_memory: Literal["never", "per-set"] = "never"
    bank_seed: int = 0
    # not in the code: the step-1 text forward built once per set and back-propagated for every image
    # (exact, docs/performance.md § Text side), holding its activations between images; False: per image
    reuse_step0_graph: bool = True
    fast: bool = True  # False: the code's order of work (mintclip.reference.mint), the oracle and yardstick


def _layers(spec: str) -> list[int]:
    return [int(x) for x in spec.replace("/", ",").split(",") if x.strip()]


def default_query_layers(blocks: int) -> list[int]:
    """The code's blocks 3, 7, 11 of 12 at the same relative depths of a ViT with `blocks` blocks."""
    return sorted({max(0, blocks * quarter // 12 - 1) for quarter in (4, 8, 12)})


@register
class MINT(Method):
    name = "mint"
    online = True
    n_views = 64
    Config = MINTConfig
    source = "Jamieyi2004/MINT@b02acc7 models/mint.py, models/mpb.py, models/tta.py, main.py, utils/args.py"
    reference_overrides = {"fast": False}
    config: MINTConfig

    def __init__(self, config: MINTConfig | None = None) -> None:
        super().__init__(config)
        self.bank: MemoryPromptBank | None = None
        self._last_index: Tensor | None = None  # (M,) view 0's retrieved entries at the last prediction
        self._counts_before: Tensor | None = None  # train_counts before the last image's tuning
        auto = self.config.query_layers.strip().lower() == "auto"
        self.query_layers = [] if auto else _layers(self.config.query_layers)  # "auto": resolved by `check`
        self.inject_layers = _layers(self.config.inject_layers)
        if self.config.prompt_length % 2:
            raise ValueError("prompt_length must be even: half the tokens are keys, half values")

    def notes(self) -> list[str]:
        cfg = self.config
        start = f"CoOp context from {cfg.coop}" if cfg.coop else (
            f"context '{cfg.ctx_init}' (the official default is a CoOp context: --coop PATH)")
        return [f"text: {start}", f"memory: {cfg.memory}, reset {cfg.reset_memory}, loss sign {cfg.key_loss_sign:+g}"]

    # -- state --------------------------------------------------------------------------------------

    def _new_bank(self, width: int, device: torch.device) -> MemoryPromptBank:
        cfg = self.config
        size = 1 if cfg.memory == "static" else cfg.bank_size
        key_sets = len(self.query_layers) if cfg.per_layer_keys else 1
        return MemoryPromptBank(size, cfg.prompt_length, width, key_sets, len(self.inject_layers), cfg.bank_seed, device)

    def check(self, model: CLIP) -> None:
        if model.config.vision.kind != "vit":
            raise ValueError("MINT prompts a vision transformer; this checkpoint has a ResNet image tower")
        blocks = len(model.visual.blocks)
        if self.config.query_layers.strip().lower() == "auto":
            self.query_layers = default_query_layers(blocks)
        if max(self.query_layers + self.inject_layers) >= blocks:
            raise ValueError(f"MINT's query_layers {self.query_layers} / inject_layers {self.inject_layers} need "
                             f"blocks that this {blocks}-block ViT lacks; set them, e.g. --hp query_layers=0,1,2")

    def setup(self, model: CLIP, test_set: TestSet) -> None:
        cfg = self.config
        self.check(model)
        self.model = model
        self.learner = prompt_learner(model, test_set.classnames, cfg)
        if self.bank is None or cfg.reset_memory == "per-set":
            self.bank = self._new_bank(model.config.vision.width, model.device)
        self.bank.to(model.device)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.bank is None else {k: v.detach().cpu().clone() for k, v in self.bank.state_dict().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        keys, values = state["keys"], state["values"]
        self.bank = MemoryPromptBank(keys.shape[1], values.shape[2], keys.shape[2], keys.shape[0], values.shape[0])
        self.bank.load_state_dict(state)
        if self.model is not None:
            self.bank.to(self.model.device)

    # -- the forward pieces --------------------------------------------------------------------------

    @torch.no_grad()
    def queries(self, views: Tensor) -> Tensor:
        """(V, Q, W) residual-stream CLS after the query layers, from the prompt-free pass."""
        with self.autocast():
            return self.model.visual.cls_taps(views, self.query_layers).float()

    def retrieve(self, queries: Tensor, tuning: bool) -> tuple[Tensor, Tensor]:
        """Indices (V, M) and distances (V, M) of the retrieved entries; counted as the code counts them."""
        if self.config.memory != "bank":  # static: the single entry; none: no visual prompt at all
            index = torch.zeros(queries.shape[0], 1, dtype=torch.long, device=queries.device)
            return index, torch.zeros(index.shape, device=queries.device)
        index, distance = self.bank.retrieve(queries, self.config.top_k, reweight=tuning and self.config.warmup)
        self.bank.count(index, tuning)
        return index, distance

    def image_features(self, views: Tensor, index: Tensor) -> Tensor:
        """(V, D) normalised features of the views prompted with their associative prompts."""
        kv_prompts = None
        if self.config.memory != "none":
            half = self.config.prompt_length // 2
            kv_prompts = {}
            for value_set, layer in enumerate(self.inject_layers):
                prompt = self.bank.assemble(index, value_set)  # (V, L, W)
                kv_prompts[layer] = (prompt[:, :half], prompt[:, half:])
        with self.autocast():
            features = self.model.visual(views, kv_prompts=kv_prompts)
        return torch.nn.functional.normalize(features.float(), dim=-1)

    def text_features(self) -> Tensor:
        with self.autocast():
            return self.learner()

    def logits(self, image: Tensor, text: Tensor) -> Tensor:
        return self.model.logit_scale.detach().float().exp() * image @ text.float().T

    def select(self, logits: Tensor) -> Tensor:
        """Indices of the int(V * selection) most confident views of (V, C) logits, chosen at step 1."""
        return select_confident_views(logits, self.config.selection)

    def loss(self, logits: Tensor, distance: Tensor) -> Tensor:
        key_term = distance.sum(dim=1).mean()
        return marginal_entropy(logits) + self.config.key_loss_sign * self.config.key_loss_weight * key_term

    # -- one test image --------------------------------------------------------------------------------

    def fresh_optimizer(self) -> torch.optim.AdamW:
        """Reset the text context (episodic) and start AdamW afresh over it and the bank (online)."""
        self.learner.reset()
        params = [self.learner.ctx] + ([] if self.config.memory == "none" else [self.bank.keys, self.bank.values])
        return self.adamw(params, self.config.lr, self.config.weight_decay)

    def adapt(self, views: Tensor) -> Tensor:
        """`steps` AdamW steps on the views (V, 3, H, W); returns their prompt-free queries (V, Q, W), which
        view 0's prediction reuses. Retrieval, the counters and the key term cover every view at every
        step; gradients flow only through the views selected at step 1, the only ones in the entropy."""
        optimizer = self.fresh_optimizer()
        if self.bank is not None:
            self._counts_before = self.bank.train_counts.clone()
        queries = self.queries(views)  # the frozen encoder without prompts: the same at every step
        selected = None
        with torch.enable_grad():
            for step in range(self.config.steps):
                index, distance = self.retrieve(queries, tuning=True)
                shared = step == 0 and self.config.reuse_step0_graph
                if shared:  # the context starts each image at ctx_start: the set's one forward serves all
                    with self.autocast():
                        start, graph = self.learner.start_graph()
                    text = graph.detach().requires_grad_(True)
                else:
                    text = self.text_features()
                if selected is None:
                    with torch.no_grad():
                        selected = self.select(self.logits(self.image_features(views, index), text))
                logits = self.logits(self.image_features(views[selected], index[selected]), text)
                loss = self.loss(logits, distance)
                optimizer.zero_grad()
                loss.backward()
                if shared:
                    self.learner.ctx.grad, = torch.autograd.grad(graph, start, text.grad, retain_graph=True)
                self.guarded_step(optimizer)
        return queries

    def predict(self, views: Tensor) -> Tensor:
        if not self.config.fast:
            return reference_mint.predict(self, views)
        queries = self.adapt(views)
        return self.classify(views[:1], queries[:1])

    @torch.no_grad()
    def classify(self, view0: Tensor, queries: Tensor) -> Tensor:
        """View 0 (1, 3, H, W) with its queries (1, Q, W): a fresh retrieval (counted as a test selection,
        no warm-up re-weighting) and the tuned context -> logits (C,); then the context is reset."""
        index, _ = self.retrieve(queries, tuning=False)
        self._last_index = index[0]
        logits = self.logits(self.image_features(view0, index), self.text_features())[0]
        self.learner.reset()
        return logits

    def sample_trace(self) -> dict[str, Any]:
        """The entries the last image's prediction retrieved (view 0's, in retrieval order), how many
        distinct entries its tuning steps retrieved, and how many the bank has ever served."""
        if self.bank is None or self.config.memory != "bank" or self._last_index is None:
            return {}
        counts = self.bank.train_counts + self.bank.test_counts
        return {"retrieved": self._last_index.tolist(),
                "tuning_entries": int((self.bank.train_counts > self._counts_before).sum()),
                "entries_ever_used": int((counts > 0).sum())}

    def diagnostics(self) -> Diagnostics:
        """Usage and spread of the bank: entries ever retrieved, the usage histogram, pairwise key cosines."""
        if self.bank is None or self.config.memory != "bank":
            return Diagnostics()
        counts = (self.bank.train_counts + self.bank.test_counts).cpu()
        keys = torch.nn.functional.normalize(self.bank.keys.detach().float()[0], dim=-1).cpu()
        cosine = keys @ keys.T
        off_diagonal = cosine[~torch.eye(len(keys), dtype=torch.bool)]
        return Diagnostics(
            numbers={"entries_retrieved": int((counts > 0).sum()), "bank_size": len(counts),
                     "selections": int(counts.sum()), "key_cosine_mean": float(off_diagonal.mean()),
                     "key_cosine_std": float(off_diagonal.std()), "key_cosine_max": float(off_diagonal.max())},
            bars={"usage": counts.sort(descending=True).values},
            tensors={k: v.detach().cpu().contiguous() for k, v in self.bank.state_dict().items()})
