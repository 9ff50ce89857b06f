"""Hyper-parameters are typed in one place, the config dataclass: `--hp` strings parse by its type hints,
and a value outside a `Literal` is refused with the key and the choices, however the config was made."""

import pytest

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
