"""Packed oneDNN matmuls for CPU inference: same results as nn.Linear, never stale, never leaking."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from infer_support import tiny_model

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
