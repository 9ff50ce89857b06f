"""MINT's Memory Prompt Bank on scripted keys and queries: retrieval by cosine distance, the code's warm-up
re-weighting (`MINT.similarity`), counting (`solve_selected_prompt`), assembling the associative prompt."""

import pytest
import torch
import torch.nn.functional as F

from mintclip.adapt.memory import MemoryPromptBank


def scripted_bank(counts=(0, 0, 0, 0)):
    """4 entries in 3-D: keys along +x, +y, +z, -x; prompts of 2 tokens."""
    bank = MemoryPromptBank(size=4, prompt_length=2, width=3)
    with torch.no_grad():
        bank.keys.copy_(torch.tensor([[[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0]]]) * 3)  # norms do not matter
    bank.train_counts.copy_(torch.tensor(counts))
    return bank


# two views, one query layer: view a lies near +x (then +y), view b near +y (then +z)
QUERIES = torch.tensor([[[1.0, 0.2, 0.0]], [[0.0, 1.0, 0.4]]])  # (B=2, Q=1, D=3)


def cosine_distance(queries, keys):
    return 1 - F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).T


def test_retrieval_picks_the_nearest_keys_by_cosine_distance():
    bank = scripted_bank()
    index, distance = bank.retrieve(QUERIES, top_k=2, reweight=False)
    assert index.tolist() == [[0, 1], [1, 2]]
    expected = cosine_distance(QUERIES[:, 0], bank.keys[0]).gather(1, index)
    torch.testing.assert_close(distance, expected)
    assert distance.requires_grad  # the key term reaches the keys


def test_warm_up_first_pure_similarity_then_never_used_entries_then_pure_similarity_again():
    bank = scripted_bank()
    limit = bank.size * len(QUERIES)  # N * B = 8: the warm-up lasts while 0 < total <= 8
    # total 0: the first tuning retrieval is pure similarity
    index, distance = bank.retrieve(QUERIES, top_k=1, reweight=True)
    assert index.tolist() == [[0], [1]] and distance.min() > 0
    bank.count(index, tuning=True)
    assert bank.train_counts.tolist() == [1, 1, 0, 0]
    # total 2: distances times each entry's share of past selections; the never-used +z and -x sit at 0
    index, distance = bank.retrieve(QUERIES, top_k=2, reweight=True)
    assert [set(row) for row in index.tolist()] == [{2, 3}, {2, 3}] and not distance.any()
    _, every = bank.retrieve(QUERIES, top_k=4, reweight=True)
    plain = cosine_distance(QUERIES[:, 0], bank.keys[0]).detach()
    torch.testing.assert_close(every.sort(dim=1).values, (plain * torch.tensor([0.5, 0.5, 0, 0])).sort(dim=1).values)
    # at the limit itself (total == N * B) still warm: the one never-used entry wins every row
    bank.train_counts.copy_(torch.tensor([4, 2, 2, 0]))
    assert int(bank.train_counts.sum()) == limit
    index, _ = bank.retrieve(QUERIES, top_k=1, reweight=True)
    assert index.tolist() == [[3], [3]]
    # beyond it: pure similarity again, though -x was never used
    bank.train_counts.copy_(torch.tensor([5, 2, 2, 0]))
    index, distance = bank.retrieve(QUERIES, top_k=1, reweight=True)
    assert index.tolist() == [[0], [1]] and distance.min() > 0


def test_the_warm_up_limit_scales_with_the_number_of_views():
    bank = scripted_bank(counts=(3, 1, 1, 0))  # total 5: beyond 4 * 1 view, within 4 * 2 views
    assert bank.retrieve(QUERIES[:1], top_k=1, reweight=True)[0].tolist() == [[0]]  # 1 view: similarity
    assert bank.retrieve(QUERIES, top_k=1, reweight=True)[0].tolist() == [[3], [3]]  # 2 views: warm-up


def test_the_prediction_is_never_re_weighted():
    bank = scripted_bank(counts=(1, 1, 0, 0))  # well inside the warm-up
    index, distance = bank.retrieve(QUERIES[:1], top_k=1, reweight=False)
    assert index.tolist() == [[0]] and distance.min() > 0
    bank.count(index, tuning=False)
    assert bank.test_counts.tolist() == [1, 0, 0, 0] and bank.train_counts.tolist() == [1, 1, 0, 0]


def test_every_retrieved_index_counts_once_even_when_query_layers_agree():
    bank = scripted_bank()
    queries = torch.cat([QUERIES, QUERIES], dim=1)  # (B=2, Q=2, D): both layers ask the same
    index, _ = bank.retrieve(queries, top_k=2, reweight=False)
    assert index.tolist() == [[0, 1, 0, 1], [1, 2, 1, 2]]  # grouped by layer, as the code's torch.cat
    bank.count(index, tuning=True)
    assert bank.train_counts.tolist() == [2, 4, 2, 0]


def test_per_layer_key_sets():
    bank = MemoryPromptBank(size=4, prompt_length=2, width=3, key_sets=2)
    with torch.no_grad():
        bank.keys[0].copy_(torch.eye(4, 3))  # +x, +y, +z, 0 (never near)
        bank.keys[1].copy_(torch.eye(4, 3).flip(0))  # 0, +z, +y, +x
    queries = torch.tensor([[[1.0, 0, 0], [1.0, 0, 0]]])  # the same query at both layers
    index, _ = bank.retrieve(queries, top_k=1, reweight=False)
    assert index.tolist() == [[0, 3]]  # +x is entry 0 of set 0 and entry 3 of set 1


def test_the_associative_prompt_is_the_plain_mean_of_the_retrieved_values():
    bank = MemoryPromptBank(size=4, prompt_length=2, width=3, value_sets=2)
    index = torch.tensor([[0, 1, 1], [3, 3, 3]])
    for value_set in (0, 1):
        prompt = bank.assemble(index, value_set)
        assert prompt.shape == (2, 2, 3)
        values = bank.values[value_set]
        torch.testing.assert_close(prompt[0], (values[0] + 2 * values[1]) / 3)
        torch.testing.assert_close(prompt[1], values[3])


def test_the_bank_starts_from_its_seed():
    a, b = MemoryPromptBank(8, 2, 5, seed=1), MemoryPromptBank(8, 2, 5, seed=1)
    assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    assert not torch.equal(a.keys, MemoryPromptBank(8, 2, 5, seed=2).keys)
    assert float(a.keys.detach().std()) == pytest.approx(1, abs=0.3)  # N(0, 1), as mpb.py's torch.randn
    assert not a.train_counts.any() and not a.test_counts.any()
    assert sorted(a.state_dict()) == ["keys", "test_counts", "train_counts", "values"]
