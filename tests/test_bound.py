"""A method's bound: the least encoder, backward and optimiser work one test image needs, which
`mintclip bench --breakdown` times beside the method (docs/performance.md § The bound)."""

import torch

from mintclip.adapt import build_method
from mintclip.adapt.prompts import TextPromptLearner
from mintclip.bench import build_clip, class_names, format_table, run_benchmark
from mintclip.bound import Bound, OwnLengthText
from mintclip.data import TestSet


def test_each_class_cut_at_its_own_length_gives_the_class_features_of_the_padded_pass():
    model = build_clip("micro", "cpu")
    learner = TextPromptLearner(model, class_names(12))
    own = OwnLengthText(learner)
    assert len(own.buckets[0]) > 1  # the made-up names have several lengths
    torch.testing.assert_close(own(), learner(), atol=1e-6, rtol=0)
    contexts = learner.ctx_start + 0.1 * torch.randn(3, *learner.ctx_start.shape)  # three prompts at once
    torch.testing.assert_close(own(contexts), learner(contexts), atol=1e-6, rtol=0)


def test_the_bound_leaves_an_online_method_as_its_own_prediction_left_it():
    model = build_clip("micro", "cpu")
    method = build_method("mint", {"precision": "fp32", "n_views": 8})
    method.setup(model, TestSet.named("folder", class_names(5)))
    views = torch.randn(8, 3, 32, 32)
    method.predict(views)
    state = {k: v.clone() for k, v in method.state_dict().items()}
    Bound(method)(views)
    assert all(torch.equal(v, state[k]) for k, v in method.state_dict().items())


def test_the_bound_does_a_subset_of_the_work_of_each_method():
    """Tokens per image: the bound encodes no more image or text tokens than the method (the same
    views once; text at each class's own length); its time is its phases alone."""
    methods = ["zeroshot", "zero", "tpt", "mint", "dynaprompt"]
    results = run_benchmark(methods, "micro", classes=6, views=8, images=2, warmup=1, device="cpu",
                            precision="fp32", breakdown=True)
    by_path = {(r.method, r.path): r for r in results}
    for name in methods:
        ours, bound = by_path[name, "mintclip"], by_path[name, "bound"]
        assert bound.tokens["image"] <= ours.tokens["image"] and bound.tokens["text"] <= ours.tokens["text"]
        assert bound.phases_ms["views"] == 0 and abs(bound.phases_ms["rest"]) < 1e-6
    assert by_path["zero", "bound"].tokens == by_path["zero", "mintclip"].tokens == {"image": 8 * 17, "text": 0}
    assert by_path["tpt", "bound"].tokens["text"] < by_path["tpt", "mintclip"].tokens["text"]
    table = format_table(results, "header")
    assert "x bound" in table and all(f"{name:<10} bound" in table for name in methods)
