"""Hyper-parameters are typed in one place, the config dataclass: `--hp` strings parse by its type hints,
and a value outside a `Literal` is refused with the key and the choices, however the config was made."""

import pytest
import torch

from mintclip.adapt import available_methods, build_method, register
from mintclip.adapt.dynaprompt import DynaPrompt, DynaPromptConfig
from mintclip.adapt.prompts import PromptTuningConfig, context_words
from mintclip.adapt.tpt import TPT


def test_hp_strings_parse_by_the_fields_type_hints():
    method = build_method("dynaprompt", {"num_p": "5", "variant": "paper", "lr": "1e-3", "precision": "fp32"})
    assert (method.config.num_p, method.config.variant, method.config.lr) == (5, "paper", 1e-3)
    assert build_method("dynaprompt", {"num_p": "none"}).config.num_p is None  # `int | None`
    assert build_method("ctpt", {"lam": "None"}).config.lam is None and build_method("ctpt", {"lam": "7"}).config.lam == 7.0


@pytest.mark.parametrize("key, value, expected", [
    ("variant", "both", "variant='both': expected one of reference, paper"),
    ("precision", "fp64", "precision='fp64': expected one of auto, bf16, fp16, fp32"),
    ("num_p", "many", "num_p='many': expected an integer"),
    ("selection", "most", "selection='most': expected a number"),
    ("reference_order", "maybe", "reference_order='maybe': expected true or false"),
])
def test_a_bad_value_names_the_key_and_the_expected_type(key, value, expected):
    with pytest.raises(ValueError, match=expected):
        build_method("dynaprompt", {key: value})


def test_a_config_made_in_python_is_checked_too():
    with pytest.raises(ValueError, match="tie_order='random': expected one of topk, stable"):
        DynaPrompt(DynaPromptConfig(tie_order="random"))


def test_the_prompt_tuners_share_one_config_and_one_spelling_of_ctx_init():
    for name in ("tpt", "ctpt", "mint", "dynaprompt"):
        assert isinstance(build_method(name).config, PromptTuningConfig)
    assert build_method("mint").config.steps == 3 and build_method("tpt").config.steps == 1
    assert context_words("a_photo_of_a") == "a photo of a" == context_words("a photo of a")
    assert context_words(None) is context_words("none") is context_words(" ") is None


def test_every_method_module_is_found_without_a_list():
    assert {"zeroshot", "ensemble", "tpt", "ctpt", "zero", "mta", "mint", "tda", "dynaprompt"} <= set(available_methods())


def test_a_second_method_of_the_same_name_is_refused():
    with pytest.raises(ValueError, match="two methods are named 'tpt'"):
        @register
        class AnotherTPT(TPT):
            name = "tpt"
    assert available_methods()["tpt"] is TPT


def _steps(grads: list[torch.Tensor], method: TPT) -> tuple[torch.nn.Parameter, torch.optim.AdamW]:
    param = torch.nn.Parameter(torch.linspace(-1, 1, 4))
    optimizer = torch.optim.AdamW([param], lr=0.1)
    for grad in grads:
        param.grad = grad.clone()
        method.guarded_step(optimizer)
    return param, optimizer


def test_a_refused_step_leaves_the_parameters_and_the_optimiser_as_they_were():
    """Decided on the device, with nothing read back: a non-finite gradient's step is undone, moments and
    step count included, so the steps around it are exactly those of a run without it."""
    good, bad = torch.tensor([0.5, -1.0, 2.0, 0.0]), torch.tensor([1.0, float("nan"), 0.0, 0.0])
    method = TPT()
    clean, clean_opt = _steps([good, 2 * good], method)
    assert method._tally.skipped_updates == 0
    guarded, guarded_opt = _steps([bad, good, torch.full((4,), float("inf")), 2 * good], method)
    assert torch.equal(guarded, clean) and int(method._tally.skipped_updates) == 2
    clean_state, guarded_state = clean_opt.state[clean], guarded_opt.state[guarded]
    assert all(torch.equal(clean_state[k], guarded_state[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
