"""MINT against an independent transcription of the official code (`Jamieyi2004/MINT@b02acc7`
models/mint.py, models/mpb.py, models/tta.py, main.py) over a stream that crosses the warm-up, then the
memory's persistence (between images, between sets, through state_dict and through a killed run), the
options and ablations, and the diagnostics.

The tiny ViT has 3 blocks, so the query layers are 0,1,2 (the official 3,7,11 on ViT-B/16): 3 query
layers x top-2 = 6 retrieved entries per view, as in the code.
"""

from copy import deepcopy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import mintclip
from mintclip.adapt import Diagnostics, build_method
from mintclip.adapt.mint import default_query_layers
from mintclip.cli import main
from mintclip.engine.records import read_records
from mintclip.model import Tokenizer
from mintclip.data import TestSet
from tests.helpers import CLASSES, comparable, frozen_clip, kill_part_way, make_coop_set, random_views, tiny_clip


OTHER_CLASSES = ["banded", "zigzagged", "porous"]
TINY = {"query_layers": "0,1,2", "n_views": 16, "selection": 0.25, "precision": "fp32"}


def make_mint(model, classes=CLASSES, set_id="I", **overrides):
    method = build_method("mint", {**TINY, "bank_size": 16, **overrides})
    method.setup(model, TestSet.named(set_id, classes))
    return method


# -- the official computation, written out ----------------------------------------------------------------


def official_block(block, x, prompts=None, attn_mask=None):
    """CLIP's ResidualAttentionBlock in the code's sequence-first layout (L, B, C), its attention through
    torch's multi_head_attention_forward; with prompts (P, B, C), MINT._forward_block/_forward_attn: the
    key sequence [cls, prompts[:P/2], patches], the value sequence [cls, prompts[P/2:], patches], both
    from ln_1's output except the raw prompt tokens; the query sequence is ln_1(x) unchanged."""
    attn = block.attn
    y = block.ln_1(x)
    if prompts is None:
        key = value = y
    else:
        half = prompts.shape[0] // 2
        key = torch.cat([y[0:1], prompts[:half], y[1:]], dim=0)
        value = torch.cat([y[0:1], prompts[half:], y[1:]], dim=0)
    out, _ = F.multi_head_attention_forward(
        y, key, value, y.shape[-1], attn.heads, attn.in_proj_weight, attn.in_proj_bias, None, None, False, 0.0,
        attn.out_proj.weight, attn.out_proj.bias, training=False, need_weights=False, attn_mask=attn_mask)
    x = x + out
    return x + block.mlp(block.ln_2(x))


class OfficialMINT:
    """MINT as the code runs it, one test image at a time (fp32, so no autocast and no GradScaler).

    The bank is group 0 of mpb.py's MemoryPromptBank: one nn.Parameter per key (D,) and per prompt (2, D),
    torch.stack-ed on every forward; the counters are numpy ints; `_training` is the plain attribute that
    tta.py sets. The text side is TextPromptLearner + TextEncoder: 77-token prompts, causal attention.
    """

    def __init__(self, model, classes, keys, prompts, query_layers=(0, 1, 2), top_n=2, lr=5e-3, steps=3,
                 selection_p=0.25):
        self.model, self.visual = model, model.visual
        self.query_layers, self.topN, self.steps, self.selection_p = list(query_layers), top_n, steps, selection_p
        self.layer_e = [0]
        self.bank_size = len(keys)
        self.key_list = [nn.Parameter(k.detach().clone()) for k in keys]  # bank.key_list[0:total]
        self.prompt_list = [nn.Parameter(p.detach().clone()) for p in prompts]  # bank.prompt_list[0:total]
        self.prompt_selected_sum_train = np.zeros((self.bank_size,), dtype=int)
        self.prompt_selected_sum_test = np.zeros((self.bank_size,), dtype=int)
        self._training = False
        # TextPromptLearner(ctx_init="a photo of a"): n_ctx 4, class token at the end
        self.tokenized_prompts = Tokenizer()([f"a photo of a {name}." for name in classes])
        embedding = model.text.token_embedding(self.tokenized_prompts)
        self.token_prefix, self.token_suffix = embedding[:, :1], embedding[:, 5:]
        self.ctx_init_state = embedding[0, 1:5].detach().clone()
        self.ctx = nn.Parameter(self.ctx_init_state.clone())
        # main.py: AdamW(text prompt params + key_list + prompt_list, lr); its state snapshotted once
        self.optimizer = torch.optim.AdamW([self.ctx, *self.key_list, *self.prompt_list], lr)
        self.optim_state = deepcopy(self.optimizer.state_dict())
        self.warm_log, self.loss_log = [], []  # what each tuning forward did, for the test to check

    # models/mint.py
    def get_image_embedding(self, x):
        x = self.visual.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.visual.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
        return torch.cat([cls, x], dim=1) + self.visual.positional_embedding

    def similarity(self, q, k, topN):
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        dist = 1 - torch.matmul(q, k.T)
        warm = False
        if self._training:
            prompt_selected_sum = torch.Tensor(self.prompt_selected_sum_train)
            total = torch.sum(prompt_selected_sum)
            if total <= self.bank_size * q.shape[0] and total > 0:
                dist = dist * (prompt_selected_sum / total)
                warm = True
        _, idx = torch.topk(dist, topN, dim=1, largest=False)
        dist_pick = [torch.stack([dist[b][idx[b][i]] for i in range(idx.shape[1])]) for b in range(idx.shape[0])]
        return torch.stack(dist_pick), idx, warm

    def getPrompts(self, keys):
        pTensor = torch.stack(list(self.prompt_list))  # (total, 2, D)
        return torch.mean(pTensor[keys], dim=1)  # (B, 2, D)

    def solve_selected_prompt(self, keys):
        for b_keys in keys.cpu().numpy():
            for key_idx in b_keys:
                if self._training:
                    self.prompt_selected_sum_train[key_idx] += 1
                else:
                    self.prompt_selected_sum_test[key_idx] += 1

    def get_text_features(self):
        n_cls = len(self.tokenized_prompts)
        prompts = torch.cat([self.token_prefix, self.ctx.unsqueeze(0).expand(n_cls, -1, -1), self.token_suffix], 1)
        text = self.model.text
        x = (prompts + text.positional_embedding).permute(1, 0, 2)
        mask = torch.full((77, 77), float("-inf")).triu_(1)  # CLIP's build_attention_mask
        for block in text.blocks:
            x = official_block(block, x, attn_mask=mask)
        x = text.ln_final(x.permute(1, 0, 2))
        features = x[torch.arange(n_cls), self.tokenized_prompts.argmax(dim=-1)] @ text.text_projection
        features = torch.stack([features / features.norm(dim=-1, keepdim=True)]).mean(0)
        return features / features.norm(dim=1, keepdim=True)

    def forward(self, inputs):
        with torch.no_grad():
            x_embed = self.get_image_embedding(inputs)
            temp_x = self.visual.ln_pre(x_embed.clone()).permute(1, 0, 2)
            all_cls = []
            for blk in self.visual.blocks:  # the prompt-free query pass, every forward
                temp_x = official_block(blk, temp_x)
                all_cls.append(temp_x[0])
            stacked_cls_tokens = torch.stack(all_cls, dim=0)
        picks, warms = [], []
        for layer in self.query_layers:
            kTensor = torch.stack(list(self.key_list))  # (total, D): a fresh stack per query layer
            distance, idx, warm = self.similarity(stacked_cls_tokens[layer], kTensor, self.topN)
            picks.append((distance, idx))
            warms.append(warm)
        keys_idx = torch.cat([idx for _, idx in picks], dim=1)
        distance_selected = torch.cat([d for d, _ in picks], dim=1)
        self.solve_selected_prompt(keys_idx)  # after all three retrievals
        x = self.visual.ln_pre(x_embed).permute(1, 0, 2)
        for i, blk in enumerate(self.visual.blocks):
            prompts = self.getPrompts(keys_idx).permute(1, 0, 2) if i in self.layer_e else None
            x = official_block(blk, x, prompts)
        image_features = self.visual.ln_post(x.permute(1, 0, 2)[:, 0]) @ self.visual.proj
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        logits = self.model.logit_scale.exp() * image_features @ self.get_text_features().t()
        if self._training:
            assert len(set(warms)) == 1  # the counters only change after all three retrievals
            self.warm_log.append(warms[0])
        return logits, distance_selected

    # models/tta.py
    def test_time_tuning(self, inputs):
        self._training = True
        selected_idx = None
        for _ in range(self.steps):
            output, distance = self.forward(inputs)
            if selected_idx is not None:
                output = output[selected_idx]
            else:
                entropy = -(output.softmax(1) * output.log_softmax(1)).sum(1)
                selected_idx = torch.argsort(entropy, descending=False)[:int(entropy.size()[0] * self.selection_p)]
                output = output[selected_idx]
            logits = output - output.logsumexp(dim=-1, keepdim=True)
            avg_logits = logits.logsumexp(dim=0) - np.log(logits.shape[0])
            avg_logits = torch.clamp(avg_logits, min=torch.finfo(avg_logits.dtype).min)
            avg_entropy = -(avg_logits * torch.exp(avg_logits)).sum(dim=-1)
            loss = avg_entropy - 0.2 * torch.mean(torch.sum(distance, dim=1))
            self.loss_log.append(loss.item())
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        self._training = False
        return selected_idx

    def test_time_adapt_eval_one(self, images):
        """One sample of test_time_adapt_eval: reset, reload the optimiser state, tune, predict view 0.
        Returns (prediction logits, step-1 selection, context after tuning)."""
        with torch.no_grad():
            self.ctx.copy_(self.ctx_init_state)  # model.reset()
        self.optimizer.load_state_dict(self.optim_state)
        selected = self.test_time_tuning(images)
        adapted_ctx = self.ctx.detach().clone()
        with torch.no_grad():
            output, _ = self.forward(images[:1])
        return output[0], selected, adapted_ctx


def spy_on(method):
    """Record what MINT computed: step losses, the selection and the context before each reset."""
    seen = {"losses": [], "selected": [], "ctx": []}
    loss, select, reset = method.loss, method.select, method.learner.reset
    method.loss = lambda *a: seen["losses"].append(loss(*a)) or seen["losses"][-1]
    method.select = lambda logits: seen["selected"].append(select(logits)) or seen["selected"][-1]
    method.learner.reset = lambda: seen["ctx"].append(method.learner.ctx.detach().clone()) or reset()
    return seen


def test_a_stream_equals_the_official_code_through_the_warm_up():
    """4 images of 16 views, a bank of 20, 6 entries per view: 96 selections per tuning forward against
    the warm-up limit 20 * 16 = 320. Tuning forwards see totals 0 | 96, 192 (image 1: pure similarity,
    then warm-up), 288 | 384, 480 (image 2: warm-up, then pure similarity), then pure similarity.

    Temperature 20: this random tiny model's classes lie far apart, so at 100 its entropies fall to 1e-8,
    where Adam turns float noise in the gradients into whole +-lr steps (context off by 1e-2 either way)."""
    model = frozen_clip(temperature=20.0)
    stream = [random_views(seed=s) for s in range(10, 14)]
    methods = {fast: make_mint(model, bank_size=20, fast=fast) for fast in (True, False)}
    start = methods[True].state_dict()  # a copy
    assert all(torch.equal(start[k], v) for k, v in methods[False].state_dict().items())  # the same seed
    official = OfficialMINT(model, CLASSES, start["keys"][0], start["values"][0])
    spies = {fast: spy_on(method) for fast, method in methods.items()}
    worst = {"logits": 0.0, "keys": 0.0, "values": 0.0, "ctx": 0.0, "loss": 0.0}
    for sample, views in enumerate(stream):
        ref_logits, ref_selected, ref_ctx = official.test_time_adapt_eval_one(views)
        ref_keys = torch.stack([k.detach() for k in official.key_list])
        ref_values = torch.stack([p.detach() for p in official.prompt_list])
        for fast, method in methods.items():
            spy = spies[fast]
            logits = method.predict(views)
            assert torch.equal(spy["selected"][-1], ref_selected), (sample, fast)
            assert np.array_equal(method.bank.train_counts.numpy(), official.prompt_selected_sum_train)
            assert np.array_equal(method.bank.test_counts.numpy(), official.prompt_selected_sum_test)
            assert int(logits.argmax()) == int(ref_logits.argmax())
            pairs = {"logits": (logits, ref_logits), "keys": (method.bank.keys[0], ref_keys),
                     "values": (method.bank.values[0], ref_values), "ctx": (spy["ctx"][-1], ref_ctx),
                     "loss": (torch.stack(spy["losses"][-3:]).detach(),
                              torch.tensor(official.loss_log[-3:]))}
            for name, (ours, ref) in pairs.items():
                worst[name] = max(worst[name], float((ours.detach() - ref).abs().max()))
    assert official.warm_log == [False, True, True, True, False, False] + [False] * 6
    assert official.prompt_selected_sum_train.sum() == 4 * 3 * 16 * 6
    assert official.prompt_selected_sum_test.sum() == 4 * 6
    assert (ref_keys - start["keys"][0]).abs().max() > 1e-3 and (ref_values - start["values"][0]).abs().max() > 1e-3
    # measured (fp32, CPU, both paths): logits 1.7e-5 (of up to ~10), keys 2.4e-7, values 5.5e-6 (entries
    # of ~1), context 3.7e-7, losses 1e-6
    print({name: f"{value:.1e}" for name, value in worst.items()})
    assert worst["logits"] < 1e-4 and worst["loss"] < 1e-5
    assert worst["keys"] < 2e-6 and worst["values"] < 5e-5 and worst["ctx"] < 2e-6


# -- the memory persists: between images, between sets, through state_dict ---------------------------------


def test_the_memory_carries_over_between_images_while_the_text_context_restarts():
    model = frozen_clip()
    x, y = random_views(seed=5), random_views(seed=6)
    on_a_fresh_bank = make_mint(model).predict(x)
    method = make_mint(model)
    start, ctx_start = method.state_dict(), method.learner.ctx.detach().clone()
    method.predict(y)
    after_y = method.state_dict()
    assert not torch.equal(after_y["keys"], start["keys"]) and not torch.equal(after_y["values"], start["values"])
    assert int(after_y["train_counts"].sum()) == 3 * 16 * 6 and int(after_y["test_counts"].sum()) == 6
    assert torch.equal(method.learner.ctx.detach(), ctx_start)  # the text is episodic
    after_memory_of_y = method.predict(x)
    assert not torch.allclose(after_memory_of_y, on_a_fresh_bank)  # the bank is not
    assert int(method.bank.train_counts.sum()) == 2 * 3 * 16 * 6 and int(method.bank.test_counts.sum()) == 2 * 6


def test_the_set_s_step_1_text_graph_serves_every_image_with_the_same_stream():
    """The context restarts at ctx_start for every image, so step 1's text forward is the set's, built
    once and back-propagated per image: the stream of predictions and the bank are those of a fresh
    forward per image (measured bit for bit on CPU)."""
    model = frozen_clip()
    cached, fresh = make_mint(model), make_mint(model, reuse_step0_graph=False)
    for seed in (5, 6, 7):
        views = random_views(seed=seed)
        assert torch.equal(cached.predict(views), fresh.predict(views))
    assert all(torch.equal(cached.state_dict()[key], value) for key, value in fresh.state_dict().items())


def test_the_trace_gives_the_entries_each_image_used():
    model = frozen_clip()
    method = make_mint(model)
    method.predict(random_views(seed=5))
    first = method.sample_trace()
    assert len(first["retrieved"]) == 6 and 0 < first["tuning_entries"] <= first["entries_ever_used"]
    method.predict(random_views(seed=6))
    second = method.sample_trace()
    assert second["entries_ever_used"] >= first["entries_ever_used"]
    assert second["entries_ever_used"] == int(((method.bank.train_counts + method.bank.test_counts) > 0).sum())


@pytest.mark.parametrize("reset_memory", ["never", "per-set"])
def test_a_second_set_keeps_the_memory_unless_it_is_reset_per_set(reset_memory):
    model = frozen_clip()
    method = make_mint(model, reset_memory=reset_memory)
    initial = method.state_dict()
    method.predict(random_views(seed=5))
    end_of_first_set = method.state_dict()
    method.setup(model, TestSet.named("DTD", OTHER_CLASSES))
    second = method.state_dict()
    expected = end_of_first_set if reset_memory == "never" else initial
    assert all(torch.equal(second[k], expected[k]) for k in expected)
    if reset_memory == "per-set":
        assert int(second["train_counts"].sum()) == 0 and int(second["test_counts"].sum()) == 0
    assert method.predict(random_views(seed=6)).shape == (len(OTHER_CLASSES),)


def test_state_dict_round_trip_gives_identical_next_predictions():
    model = frozen_clip()
    x, y, z = (random_views(seed=s) for s in (5, 6, 7))
    original = make_mint(model)
    original.predict(x)
    original.predict(y)
    state = original.state_dict()
    assert sorted(state) == ["keys", "test_counts", "train_counts", "values"]
    before_setup = build_method("mint", {**TINY, "bank_size": 16})
    before_setup.load_state_dict(state)  # as the engine restores state carried from one set to the next
    before_setup.setup(model, TestSet.named("I", CLASSES))
    after_setup = make_mint(model)
    after_setup.load_state_dict(state)  # as the engine restores state saved within a set
    expected = original.predict(z)
    for restored in (before_setup, after_setup):
        assert torch.equal(restored.predict(z), expected)
        assert all(torch.equal(v, original.state_dict()[k]) for k, v in restored.state_dict().items())
    state["keys"].zero_()  # a copy: the method's bank is not touched
    assert original.bank.keys.abs().sum() > 0


def test_a_batch_is_predicted_image_by_image_in_stream_order():
    """An online method keeps Method's default predict_batch: `predict` per image, each on the bank the
    previous one left, its skipped updates counted per image."""
    model = frozen_clip()
    views = torch.stack([random_views(seed=s) for s in (5, 6, 7)])
    stream = make_mint(model)
    expected = torch.stack([stream.predict(image_views) for image_views in views])
    method = make_mint(model)
    predict, calls = method.predict, []

    poisoned = torch.nn.Parameter(torch.zeros(1))
    poisoned.grad = torch.full((1,), float("nan"))

    def predict_and_skip(image_views):  # the b-th image also meets b non-finite updates, which are refused
        for _ in calls:
            method.guarded_step(torch.optim.AdamW([poisoned]))
        calls.append(image_views)
        return predict(image_views)

    method.predict = predict_and_skip
    prediction = method.predict_batch(views)
    assert torch.equal(prediction.logits, expected) and prediction.skipped_updates == [0, 1, 2]
    assert prediction.view0_features is None and poisoned.item() == 0  # MINT's own features are prompted
    assert all(torch.equal(v, stream.state_dict()[k]) for k, v in method.state_dict().items())


# -- options and ablations --------------------------------------------------------------------------------


def spy_on_retrieval(method):
    """Record every bank retrieval: (indices, distances, re-weighted?)."""
    calls, retrieve = [], method.bank.retrieve

    def spy(queries, top_k, reweight):
        index, distance = retrieve(queries, top_k, reweight)
        calls.append((index, distance.detach(), reweight))
        return index, distance

    method.bank.retrieve = spy
    return calls


@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_the_key_loss_sign_pushes_keys_away_from_their_queries_or_pulls_them_closer(sign):
    """The code's `- 0.2 * distance` (sign -1) raises the distance between the retrieved keys and the queries
    that chose them; sign +1 (L2P's pull) lowers it. Measured on the entries the first forward retrieved."""
    model, views = frozen_clip(), random_views()
    method = make_mint(model, key_loss_sign=sign, warmup=False)
    queries = F.normalize(method.queries(views), dim=-1)  # (V, 3, W)
    index, before = method.bank.retrieve(queries, 2, reweight=False)  # (V, 6): 2 per query layer
    method.predict(views)
    keys = F.normalize(method.bank.keys.detach()[0], dim=-1)[index]  # (V, 6, W)
    after = 1 - (queries.repeat_interleave(2, dim=1) * keys).sum(-1)
    change = float((after - before).mean().detach())
    assert (change > 1e-4) if sign < 0 else (change < -1e-4), change


def test_static_memory_is_one_learned_prompt_without_retrieval_or_key_loss():
    model, views = frozen_clip(), random_views()
    method = make_mint(model, memory="static")
    assert method.bank.keys.shape == (1, 1, 128) and method.bank.values.shape == (1, 1, 2, 128)
    keys, values = method.bank.keys.detach().clone(), method.bank.values.detach().clone()
    calls = spy_on_retrieval(method)
    index, distance = method.retrieve(method.queries(views), tuning=True)
    assert index.shape == (16, 1) and not index.any() and not distance.any()
    method.predict(views)
    assert not calls  # the bank's retrieval never runs
    assert torch.equal(method.bank.keys, keys)  # no key term: no gradient, not even weight decay
    assert not torch.equal(method.bank.values, values)  # the one prompt is trained
    assert int(method.bank.train_counts.sum()) == int(method.bank.test_counts.sum()) == 0
    assert method.diagnostics() == Diagnostics()


def test_no_memory_leaves_the_image_encoder_unprompted():
    model, views = frozen_clip(), random_views()
    method = make_mint(model, memory="none")
    start = method.state_dict()
    index, _ = method.retrieve(method.queries(views), tuning=True)
    with torch.no_grad():
        assert torch.equal(method.image_features(views, index), F.normalize(model.encode_image(views), dim=-1))
    spy = spy_on(method)
    method.predict(views)
    assert not torch.equal(spy["ctx"][-1], spy["ctx"][0])  # only the text context adapts
    assert all(torch.equal(v, start[k]) for k, v in method.state_dict().items())


def test_default_query_layers_are_the_codes_depths_on_any_vit():
    assert default_query_layers(12) == [3, 7, 11]  # the code's blocks on ViT-B
    assert default_query_layers(24) == [7, 15, 23] and default_query_layers(6) == [1, 3, 5]
    assert default_query_layers(3) == [0, 1, 2] and default_query_layers(1) == [0]
    model = tiny_clip()  # 3 blocks: the default runs, where 3,7,11 would not
    method = build_method("mint", {k: v for k, v in TINY.items() if k != "query_layers"} | {"bank_size": 16})
    method.setup(model, TestSet.named("I", CLASSES))
    assert method.query_layers == [0, 1, 2]
    with pytest.raises(ValueError, match="query_layers"):
        build_method("mint", {"query_layers": "3,7,11"}).check(model)


def test_one_query_layer_retrieves_two_entries_per_view():
    model, views = frozen_clip(), random_views()
    method = make_mint(model, query_layers="2")
    calls = spy_on_retrieval(method)
    method.predict(views)
    assert [c[0].shape for c in calls] == [(16, 2)] * 3 + [(1, 2)]
    assert int(method.bank.train_counts.sum()) == 3 * 16 * 2 and int(method.bank.test_counts.sum()) == 2


def test_top_1_retrieves_one_entry_per_query_layer():
    model, views = frozen_clip(), random_views()
    method = make_mint(model, top_k=1)
    calls = spy_on_retrieval(method)
    method.predict(views)
    assert [c[0].shape for c in calls] == [(16, 3)] * 3 + [(1, 3)]


def test_per_layer_keys_give_each_query_layer_its_own_key_set():
    model, views = frozen_clip(), random_views()
    method = make_mint(model, per_layer_keys=True, warmup=False)
    assert method.bank.keys.shape == (3, 16, 128) and method.bank.values.shape == (1, 16, 2, 128)
    keys = method.bank.keys.detach().clone()
    queries = method.queries(views)
    index, _ = method.retrieve(queries, tuning=True)
    for layer in range(3):  # layer l's queries against key set l, by hand
        distance = 1 - F.normalize(queries[:, layer], dim=-1) @ F.normalize(keys[layer], dim=-1).T
        assert torch.equal(index[:, 2 * layer:2 * layer + 2], distance.topk(2, largest=False).indices)
    method.predict(views)
    moved = (method.bank.keys.detach() - keys).abs().amax(-1) > 1e-4  # (3, N): Adam moved these rows
    assert moved.any(dim=1).all()  # every key set learns


def test_two_injection_blocks_use_two_value_sets():
    model, views = frozen_clip(), random_views()
    method = make_mint(model, inject_layers="0,1")
    assert method.bank.values.shape == (2, 16, 2, 128)
    values = method.bank.values.detach().clone()
    prompted, forward = [], model.visual.forward
    model.visual.forward = lambda images, kv_prompts=None, **kw: prompted.append(sorted(kv_prompts)) or forward(
        images, kv_prompts=kv_prompts, **kw)
    try:
        method.predict(views)
    finally:
        del model.visual.forward
    assert prompted and all(blocks == [0, 1] for blocks in prompted)
    moved = (method.bank.values.detach() - values).abs().flatten(2).amax(-1) > 1e-4  # (2, N)
    assert moved.any(dim=1).all()  # both value sets are trained


@pytest.mark.parametrize("warmup", [True, False])
def test_the_warm_up_can_be_switched_off(warmup):
    """16 views x 6 entries = 96 selections per tuning forward, under the limit 16 x 16 = 256: with the
    warm-up, tuning forwards 2 and 3 of the first image take never-used entries; without, similarity."""
    model, views = frozen_clip(), random_views()
    method = make_mint(model, warmup=warmup)
    calls = spy_on_retrieval(method)
    method.predict(views)
    assert [reweight for _, _, reweight in calls] == [warmup] * 3 + [False]
    first, second = set(calls[0][0].flatten().tolist()), set(calls[1][0].flatten().tolist())
    if warmup:
        assert not first & second and not calls[1][1].any()  # unused entries, at distance 0
    else:
        assert calls[1][1].min() > 0  # plain 1 - cos


def test_one_step():
    model, views = frozen_clip(), random_views()
    method = make_mint(model, steps=1)
    spy = spy_on(method)
    method.predict(views)
    assert len(spy["losses"]) == 1 and int(method.bank.train_counts.sum()) == 16 * 6


def test_few_views_with_the_default_selection_still_adapt():
    """int(8 * 0.1) = 0: the code would select no view and take a NaN entropy (only the key term would
    train); at least one view is selected."""
    model = frozen_clip()
    method = make_mint(model, n_views=8, selection=0.1)
    spy = spy_on(method)
    method.predict(random_views(8))
    assert len(spy["selected"][-1]) >= 1 and torch.isfinite(torch.stack(spy["losses"])).all()


# -- diagnostics --------------------------------------------------------------------------------------------


def test_diagnostics_describe_the_bank():
    model = frozen_clip()
    method = make_mint(model)
    for seed in (5, 6):
        method.predict(random_views(seed=seed))
    report = method.diagnostics()
    counts = method.bank.train_counts + method.bank.test_counts
    numbers = report.numbers
    assert numbers["bank_size"] == 16 and numbers["selections"] == int(counts.sum()) == 2 * (3 * 16 * 6 + 6)
    assert numbers["entries_retrieved"] == int((counts > 0).sum()) and 0 < numbers["entries_retrieved"] <= 16
    assert torch.equal(report.bars["usage"], counts.sort(descending=True).values)
    assert all(torch.equal(report.tensors[k], v) for k, v in method.bank.state_dict().items())
    keys = F.normalize(method.bank.keys.detach()[0], dim=-1)
    cosine = (keys @ keys.T)[~torch.eye(16, dtype=torch.bool)]
    assert numbers["key_cosine_max"] == pytest.approx(float(cosine.max()))
    assert numbers["key_cosine_mean"] == pytest.approx(float(cosine.mean()), abs=1e-6)


# -- through the engine: a killed run resumes to the records of an uninterrupted one ----------------------


def test_a_killed_mint_run_resumes_to_an_uninterrupted_run(tmp_path):
    checkpoint = tmp_path / "tiny.safetensors"
    mintclip.save_clip(tiny_clip(), checkpoint)
    make_coop_set(tmp_path / "data" / "eurosat", ["Forest", "River"], "EuroSAT", "2750", per_class=3)
    make_coop_set(tmp_path / "data" / "dtd", ["banded", "zigzagged"], "DescribableTextures", "images", per_class=3)
    hp = ["--hp", "query_layers=0,1,2", "bank_size=16", "n_views=8"]  # selection 0.1: 1 view of 8

    def args(out):
        return ["run", str(tmp_path / "data"), "--test_sets", "EuroSAT/DTD", "--method", "mint", "--weights",
                str(checkpoint), "--workers", "0", "--no-progress", "--save-every", "2", "--out", str(out), *hp]

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main(args(whole)) == 0
    slow = ("import time, torch, mintclip.adapt.mint as m; p = m.MINT.predict; "
            "m.MINT.predict = lambda self, views: time.sleep(0.1) or p(self, views); ")
    kill_part_way(args(killed), killed / "seed0" / "DTD" / "records.jsonl", at_least=3, prelude=slow)
    assert 3 <= len(read_records(killed / "seed0" / "DTD" / "records.jsonl")) < 6  # killed in the second set
    assert main([*args(killed), "--resume"]) == 0
    assert comparable(killed) == comparable(whole)
    for set_id in ("EuroSAT", "DTD"):  # the bank at the end of each set, bit for bit
        a, b = (load_file(str(out / "seed0" / set_id / "diagnostics.safetensors")) for out in (whole, killed))
        assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
