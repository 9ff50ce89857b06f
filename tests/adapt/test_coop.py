"""CoOp's learned context as a test-time classifier: its text features are those of CoOp's own prompt
assembly, released checkpoints load without running their pickles, and any trained context also starts
TPT."""

import pytest
import torch
import torch.nn.functional as F

from mintclip.adapt import build_method
from mintclip.adapt.coop import CoOpPromptLearner, read_prompt_config, save_prompts
from mintclip.adapt.prompts import encode_class_prompts, get_tokenizer, load_coop_context, prompt_text, prompts_path
from mintclip.data import TestSet
from tests.helpers import CLASSES, frozen_clip, random_views


@pytest.fixture(scope="module")
def model():
    return frozen_clip()


def official_coop_features(model, classnames, ctx, position):
    """KaiyangZhou/CoOp trainers/coop.py, transcribed: prompts "X X X X name." padded to 77 tokens,
    token_prefix = SOS, token_suffix = everything after the context, assembled per class for the class
    token position, the full 77 positions through the text transformer, pooled at the EOT."""
    tokenizer = get_tokenizer()
    n_ctx = ctx.shape[0]
    tokens = tokenizer([prompt_text(" ".join(["X"] * n_ctx) + " {}.", name) for name in classnames])
    embedding = model.text.token_embedding(tokens)  # (C, 77, W)
    prefix, suffix = embedding[:, :1], embedding[:, 1 + n_ctx:]
    name_lens = [len(tokenizer.encode(name)) for name in classnames]
    rows = []
    for i, name_len in enumerate(name_lens):
        if position == "end":
            parts = [prefix[i], ctx, suffix[i]]
        elif position == "middle":
            half = n_ctx // 2
            parts = [prefix[i], ctx[:half], suffix[i, :name_len], ctx[half:], suffix[i, name_len:]]
        else:
            parts = [prefix[i], suffix[i, :name_len], ctx, suffix[i, name_len:]]
        rows.append(torch.cat(parts))
    prompts = torch.stack(rows)  # (C, 77, W)
    features = model.text.encode_embeddings(prompts, tokens.argmax(-1), length=77)
    return F.normalize(features, dim=-1)


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_text_features_equal_the_official_prompt_assembly(model, position):
    ctx = torch.randn(4, model.config.text.width, generator=torch.Generator().manual_seed(0)) * 0.02
    learner = CoOpPromptLearner(model, CLASSES, ctx_vectors=ctx, position=position)
    with torch.no_grad():
        assert torch.allclose(learner(), official_coop_features(model, CLASSES, ctx, position), atol=1e-5)


def test_an_untrained_context_is_zero_shot(model):
    """No prompts: the context is the embedding of "a photo of a", so coop predicts as zeroshot."""
    test_set = TestSet.named("folder", CLASSES)
    coop, zeroshot = build_method("coop"), build_method("zeroshot")
    coop.setup(model, test_set)
    zeroshot.setup(model, test_set)
    views = random_views(1)
    assert torch.allclose(coop.predict(views), zeroshot.predict(views), atol=1e-4)
    assert torch.allclose(coop.text, encode_class_prompts(model, CLASSES, ["a photo of a {}."]), atol=1e-5)


class ConstantWarmupScheduler:
    """Stands for a class of the training code (dassl) that a released checkpoint pickles: loading must not
    need it, import it or run it."""

    def __setstate__(self, state):
        raise AssertionError("a released checkpoint's objects must not be built")


def write_released_checkpoint(folder, ctx, epoch=50):
    """What Dassl's save_checkpoint writes for CoOp: prompt_learner/model.pth.tar-N with the context, the
    fixed token buffers of the training classes, the optimiser state and the scheduler object."""
    learner = torch.nn.Parameter(ctx.clone())
    optimizer = torch.optim.SGD([learner], lr=0.002, momentum=0.9)
    scheduler = ConstantWarmupScheduler()
    scheduler.successor = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 50)
    path = folder / "prompt_learner" / f"model.pth.tar-{epoch}"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"ctx": ctx, "token_prefix": torch.randn(1000, 1, ctx.shape[1]),
                               "token_suffix": torch.randn(1000, 72, ctx.shape[1])},
                "epoch": epoch, "optimizer": optimizer.state_dict(), "scheduler": scheduler, "val_result": None}, path)
    return path


def test_a_released_checkpoint_loads_to_its_context_and_its_buffers_are_rebuilt(model, tmp_path):
    ctx = torch.randn(4, model.config.text.width)
    write_released_checkpoint(tmp_path, ctx * 0, epoch=10)
    latest = write_released_checkpoint(tmp_path, ctx, epoch=50)
    assert prompts_path(tmp_path) == latest  # the highest epoch of prompt_learner/
    assert torch.equal(load_coop_context(latest), ctx)
    coop = build_method("coop", {"prompts": str(tmp_path)})
    coop.setup(model, TestSet.named("folder", CLASSES))  # the set's own classes, not the 1000 of the buffers
    assert torch.allclose(coop.text, official_coop_features(model, CLASSES, ctx, "end"), atol=1e-5)


def test_a_class_specific_context_is_refused_in_one_line(tmp_path):
    torch.save({"state_dict": {"ctx": torch.zeros(5, 4, 64)}}, tmp_path / "csc.pth")
    with pytest.raises(ValueError, match="class-specific context"):
        load_coop_context(tmp_path / "csc.pth")
    with pytest.raises(FileNotFoundError, match="no prompt file"):
        prompts_path(tmp_path / "nothing")


def test_a_mintclip_prompt_file_keeps_its_settings_and_starts_tpt(model, tmp_path):
    ctx = torch.randn(4, model.config.text.width)
    save_prompts(tmp_path / "prompts.safetensors", {"ctx": ctx}, {"method": "coop", "class_token_position": "front"})
    assert read_prompt_config(tmp_path / "prompts.safetensors")["class_token_position"] == "front"
    coop = build_method("coop", {"prompts": str(tmp_path)})
    coop.setup(model, TestSet.named("folder", CLASSES))
    assert coop.learner.position == "front"  # the file's setting wins over the default "end"
    tpt = build_method("tpt", {"coop": str(tmp_path / "prompts.safetensors")})
    tpt.setup(model, TestSet.named("folder", CLASSES))
    assert torch.equal(tpt.learner.ctx_start, ctx)
