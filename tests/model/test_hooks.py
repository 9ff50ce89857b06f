"""The hooks the methods stand on, each checked against an independent computation."""

import torch
import torch.nn.functional as F

import mintclip


def class_prompts(model, names, context="a photo of a"):
    tokenizer = mintclip.Tokenizer()
    tokens = tokenizer([f"{context} {name}." for name in names])
    return tokens, model.text.token_embedding(tokens), tokens.argmax(-1)


def test_eot_truncation_equals_the_full_77_tokens(vit):
    tokens, embeddings, eot = class_prompts(vit, ["goldfish", "Mexican hairless dog (xoloitzcuintli)", "ray"])
    with torch.no_grad():
        truncated = vit.text.encode_embeddings(embeddings, eot)
        full = vit.text.encode_embeddings(embeddings, eot, length=77)
    torch.testing.assert_close(truncated, full, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(vit.encode_text(tokens), full, atol=1e-6, rtol=1e-5)


def test_learned_context_replaces_word_embeddings_and_gets_gradients(vit):
    """CoOp: [SOS][ctx x 4][class tokens][.][EOT]; with ctx = the words' own embeddings, nothing changes."""
    tokens, embeddings, eot = class_prompts(vit, ["goldfish", "tiger shark"])
    ctx = embeddings[0, 1:5].detach().clone().requires_grad_(True)  # "a photo of a", (4, width)
    prompts = torch.cat([embeddings[:, :1], ctx.expand(2, -1, -1), embeddings[:, 5:]], dim=1)
    out = vit.text.encode_embeddings(prompts, eot)
    torch.testing.assert_close(out, vit.encode_text(tokens))
    out.sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0


def test_shared_prefix_equals_the_full_sequences_in_value_and_gradient(vit):
    """In float64, so that the check shows exactness rather than fp32 rounding (gradients reach ~1e2)."""
    vit.double().requires_grad_(False)
    _, embeddings, eot = class_prompts(vit, ["goldfish", "great white shark", "Granny Smith apple", "jay"])
    n_prefix = 5  # SOS + 4 context tokens, the same for every class
    ctx_full = embeddings[0, :n_prefix].detach().clone().requires_grad_(True)
    full_input = torch.cat([ctx_full.expand(4, -1, -1), embeddings[:, n_prefix:].detach()], dim=1)
    full = vit.text.encode_embeddings(full_input, eot)
    ctx_shared = embeddings[0, :n_prefix].detach().clone().requires_grad_(True)
    shared = vit.text.encode_shared_prefix(ctx_shared, embeddings[:, n_prefix:].detach(), eot - n_prefix)
    torch.testing.assert_close(shared, full, atol=1e-12, rtol=1e-10)
    weights = torch.randn_like(full)
    (full * weights).sum().backward()
    (shared * weights).sum().backward()
    torch.testing.assert_close(ctx_shared.grad, ctx_full.grad, atol=1e-10, rtol=1e-10)


def test_cls_taps_equal_the_residual_stream_seen_by_forward_hooks(vit, images):
    seen = {}
    handles = [block.register_forward_hook(lambda m, i, o, index=index: seen.__setitem__(index, o[:, 0]))
               for index, block in enumerate(vit.visual.blocks)]
    with torch.no_grad():
        vit.encode_image(images)
        taps = vit.visual.cls_taps(images, [0, 2])
    for handle in handles:
        handle.remove()
    assert taps.shape == (3, 2, 128)
    torch.testing.assert_close(taps[:, 0], seen[0])
    torch.testing.assert_close(taps[:, 1], seen[2])


def mint_block0_oracle(visual, images, key_prompt, value_prompt):
    """MINT's block 0 as its code runs it: nn.MultiheadAttention with the raw prompt tokens placed
    after CLS in the key and value sequences (not in the query), then blocks 1.. unchanged."""
    h = visual.ln_pre(visual.embed(images))
    block = visual.blocks[0]
    y = block.ln_1(h)
    keys = torch.cat([y[:, :1], key_prompt, y[:, 1:]], dim=1)
    values = torch.cat([y[:, :1], value_prompt, y[:, 1:]], dim=1)
    attn = block.attn
    out, _ = F.multi_head_attention_forward(
        y.transpose(0, 1), keys.transpose(0, 1), values.transpose(0, 1), y.shape[-1], attn.heads,
        attn.in_proj_weight, attn.in_proj_bias, None, None, False, 0.0, attn.out_proj.weight, attn.out_proj.bias,
        need_weights=False)
    h = h + out.transpose(0, 1)
    h = h + block.mlp(block.ln_2(h))
    for later in visual.blocks[1:]:
        h = later(h)
    return visual.ln_post(h[:, 0]) @ visual.proj


def test_key_value_prompts_match_mint_and_train(vit, images):
    vit.requires_grad_(False)
    prompt = torch.randn(3, 2, 128, requires_grad=True)  # MINT's associative prompt (B, 2, width)
    key_prompt, value_prompt = prompt[:, :1], prompt[:, 1:]
    out = vit.visual(images, kv_prompts={0: (key_prompt, value_prompt)})
    assert out.shape == (3, 32)
    torch.testing.assert_close(out, mint_block0_oracle(vit.visual, images, key_prompt, value_prompt),
                               atol=1e-5, rtol=1e-4)
    assert not torch.allclose(out, vit.encode_image(images))
    out.square().sum().backward()
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0


def test_one_prompt_broadcasts_over_the_batch(vit, images):
    one = torch.randn(1, 1, 128)
    with torch.no_grad():
        broadcast = vit.visual(images, kv_prompts={1: (one, one)})
        repeated = vit.visual(images, kv_prompts={1: (one.expand(3, -1, -1), one.expand(3, -1, -1))})
    torch.testing.assert_close(broadcast, repeated)


def test_extra_input_tokens_after_cls(vit, images):
    vit.requires_grad_(False)
    tokens = torch.randn(1, 4, 128, requires_grad=True)
    out = vit.visual(images, extra_tokens=tokens)
    h = vit.visual.embed(images)
    h = torch.cat([h[:, :1], tokens.expand(3, -1, -1), h[:, 1:]], dim=1)
    h = vit.visual.ln_pre(h)
    for block in vit.visual.blocks:
        h = block(h)
    torch.testing.assert_close(out, vit.visual.ln_post(h[:, 0]) @ vit.visual.proj)
    out.sum().backward()
    assert tokens.grad.abs().sum() > 0


def test_bf16_autocast_runs_both_towers(vit, images):
    tokens = mintclip.Tokenizer()(["a photo of a dog."])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        image, text = vit.encode_image(images), vit.encode_text(tokens)
    assert image.dtype == text.dtype == torch.bfloat16
    torch.testing.assert_close(image.float(), vit.encode_image(images), atol=0.1, rtol=0.05)
