"""Packed oneDNN matmuls for CPU inference: same results as nn.Linear, never stale, never leaking."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from infer_support import tiny_model

from minimind import MiniMindLM, ModelConfig
from minimind.infer import Engine, SamplingParams
from minimind.infer.packed_linear import PackedLinears

pytestmark = pytest.mark.skipif(not PackedLinears(torch.nn.Linear(2, 2)).available,
                                reason="PyTorch built without oneDNN")


def greedy(model, prompts, n=8, engine=None):
    engine = engine or Engine(model)
    params = SamplingParams(max_new_tokens=n, temperature=0, stop_token_ids=[])
    return [s.output_ids for s in engine.generate(prompts, params)]


def test_packed_linear_equals_linear_and_only_inside_the_block():
    model = tiny_model()
    packed = PackedLinears(model)
    assert len(packed.linears) == 2 * 7 + 1  # q k v o gate up down per layer, and the head
    x = torch.randn(3, 5, 64)
    lin = model.layers[0].self_attn.q_proj
    with torch.inference_mode():
        plain = model(torch.tensor([[1, 2, 3, 4]])).logits
        with packed.active():
            assert "forward" in lin.__dict__
            y = lin(x)
            logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    assert "forward" not in lin.__dict__  # the model is the plain model again
    torch.testing.assert_close(y, F.linear(x, lin.weight), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, plain, rtol=1e-4, atol=1e-4)


def test_packed_linear_with_bias_and_any_leading_shape():
    torch.manual_seed(0)
    lin = torch.nn.Linear(24, 40, bias=True)
    with torch.no_grad():
        lin.bias.normal_()
    packed = PackedLinears(lin)
    for shape in [(1, 24), (7, 24), (2, 3, 24), (0, 24)]:
        x = torch.randn(shape)
        with torch.inference_mode(), packed.active():
            y = lin(x)
        assert y.shape == (*shape[:-1], 40)
        torch.testing.assert_close(y, F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)


def test_packed_weights_follow_in_place_updates():
    model = tiny_model()
    packed = PackedLinears(model)
    lin = model.layers[1].mlp.down_proj
    x = torch.randn(4, lin.in_features)
    with torch.inference_mode(), packed.active():
        before = lin(x)
    with torch.no_grad():
        lin.weight.mul_(-2)  # what an optimizer step does: same tensor, new values
    with torch.inference_mode(), packed.active():
        after = lin(x)
    torch.testing.assert_close(after, -2 * before, rtol=1e-5, atol=1e-5)


def test_gradients_still_flow_when_grad_is_enabled():
    model = tiny_model()
    packed = PackedLinears(model)
    with packed.active():
        loss = model(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss
    loss.backward()
    assert model.layers[0].self_attn.q_proj.weight.grad is not None


def test_engine_reused_after_training_step_sees_new_weights():
    """One engine, weights changed in place between two generations (GRPO does exactly this)."""
    model = tiny_model()
    engine = Engine(model)
    prompts = [[5, 6, 7], [9] * 11]
    first = greedy(model, prompts, engine=engine)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    assert greedy(model, prompts, engine=engine) == greedy(model, prompts, engine=Engine(model))
    assert greedy(model, prompts, engine=engine) != first


def test_a_new_engine_sees_what_a_fused_optimizer_step_changed():
    """PyTorch's fused AdamW kernel leaves parameters' version counters alone, so a packed weight
    cannot tell it is stale; a new Engine packs afresh (the RL stages make one per rollout)."""
    model = tiny_model()
    prompts = [[5, 6, 7], [9] * 11]
    before = greedy(model, prompts)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    torch.optim.AdamW(model.parameters(), lr=0.5, fused=True).step()
    after = greedy(model, prompts)  # a new Engine, same weight tensors
    assert after == greedy(copy.deepcopy(model), prompts)  # new tensors: nothing memoised for them
    assert after != before


def linear_calls(fn) -> int:
    """oneDNN linear calls while `fn` runs (each packed matmul is one)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == "mkldnn::_linear_pointwise")


FUSED_FAMILIES = {
    "dense": {},
    "qkv_bias_qk_norm": dict(qkv_bias=True, qk_norm=True),
    "moe": dict(num_experts=4, num_experts_per_tok=2, num_shared_experts=1, moe_intermediate_size=32),
}


@pytest.mark.parametrize("kw", FUSED_FAMILIES.values(), ids=FUSED_FAMILIES.keys())
def test_fused_projections_equal_the_plain_model(kw):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=64,
                      **kw)
    model = MiniMindLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # biases and norm weights away from their 0/1 init
            p.add_(torch.randn_like(p) * 0.05)
    packed = PackedLinears(model)
    x = torch.randint(0, 97, (3, 9))
    mask = torch.ones_like(x)
    mask[1, :4] = 0
    with torch.inference_mode():
        plain = model(x, attention_mask=mask).logits
        plain_step = model(x[:, :8], kv_cache=(c := model.new_kv_cache(3, 16))).logits, model(x[:, 8:], kv_cache=c).logits
        with packed.active():
            fused = model(x, attention_mask=mask).logits
            c = model.new_kv_cache(3, 16)
            fused_step = model(x[:, :8], kv_cache=c).logits, model(x[:, 8:], kv_cache=c).logits
            calls = linear_calls(lambda: model(x))
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)
    for a, b in zip(fused_step, plain_step):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # Per layer: q/k/v as one matmul, o, gate/up as one (the dense MLP or the shared expert), down;
    # then the head (unfused it would be 7 per layer + 1). The MoE router computes in fp32 itself.
    assert calls == cfg.num_layers * 4 + 1
    # A prefill of more than 64 rows runs unfused: there the fused matmul is no faster and the
    # elementwise ops on its strided halves are slower.
    with torch.inference_mode(), packed.active():
        assert linear_calls(lambda: model(torch.randint(0, 97, (2, 40)))) == cfg.num_layers * 7 + 1


def test_fused_weights_follow_updates_and_hooks_unfuse():
    model = tiny_model()
    packed = PackedLinears(model)
    x = torch.tensor([[3, 4, 5, 6]])
    attn = model.layers[0].self_attn
    with torch.inference_mode(), packed.active():
        model(x)  # packs the fused weights
    with torch.no_grad():
        attn.k_proj.weight.mul_(-1.5)  # one member of the fused q/k/v group changes in place
        model.layers[1].mlp.up_proj.weight.mul_(0.5)
    with torch.inference_mode():
        plain = model(x).logits
        with packed.active():
            torch.testing.assert_close(model(x).logits, plain, rtol=1e-4, atol=1e-4)
    seen = []
    attn.v_proj.register_forward_hook(lambda m, i, o: seen.append(o.shape) or o * 2)  # LoRA-like hook
    with torch.inference_mode():
        plain = model(x).logits
        with packed.active():
            got = model(x).logits
    torch.testing.assert_close(got, plain, rtol=1e-4, atol=1e-4)
    assert len(seen) == 2  # the hook ran in the packed forward too: that layer's q/k/v ran unfused
