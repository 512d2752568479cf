"""GPU-path bugs caught on the CPU: compile graph breaks, MoE gradients for starved experts,
the router's precision under autocast (issue: GPU paths correct before anyone runs them)."""

from __future__ import annotations

import dataclasses

import torch
import torch._dynamo
from torch._dynamo.utils import counters

from minimind.config import get_preset
from minimind.model import MiniMindLM


def test_compile_has_no_graph_break_over_changing_lengths():
    # SFT/DPO/GRPO batches change length every step; a symbolic `is_causal` used to break the
    # graph in every layer (and deeper models then hit the recompile limit).
    torch.manual_seed(0)
    model = MiniMindLM(get_preset("tiny")).eval()
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend="eager")
    with torch.no_grad():
        for T in (8, 13, 21, 34):
            ids = torch.randint(0, 100, (2, T))
            torch.testing.assert_close(compiled(ids).logits, model(ids).logits)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] <= 2  # one static, then one dynamic-shape graph
    torch._dynamo.reset()


def _tiny_moe() -> MiniMindLM:
    cfg = dataclasses.replace(get_preset("tiny"), num_experts=4, num_experts_per_tok=1, num_shared_experts=0)
    torch.manual_seed(0)
    return MiniMindLM(cfg)


def test_starved_expert_still_gets_a_gradient():
    # DDP all-reduces every parameter's gradient; an expert that received no token used to get
    # none (None), and DDP then failed with "Expected to have finished reduction".
    model = _tiny_moe()
    for layer in model.layers:
        with torch.no_grad():  # router logits (s, 0, 0, 0): experts 2 and 3 can never win top-1
            layer.mlp.gate.weight.zero_()
            layer.mlp.gate.weight[0] = 1.0
    ids = torch.randint(0, 100, (2, 16))
    model(ids, labels=ids).loss.backward()
    expert_grads = {n: p.grad for n, p in model.named_parameters() if ".experts." in n}
    assert not [n for n, g in expert_grads.items() if g is None]
    starved = [n for n, g in expert_grads.items() if ".experts.3." in n]
    assert starved and all(expert_grads[n].abs().sum() == 0 for n in starved)


def test_router_stays_float32_under_autocast():
    model = _tiny_moe()
    moe = model.layers[0].mlp
    x = torch.randn(32, model.config.hidden_size)
    ref, _, _ = moe.route(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        probs, _, _ = moe.route(x)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs, ref)


def test_rope_keeps_the_autocast_dtype_of_q_and_k(monkeypatch):
    # Under autocast q/k leave their projections in bf16; fp32 rope tables used to upcast them
    # (and the KV cache behind them) to fp32.
    model = MiniMindLM(get_preset("tiny"))
    dtypes = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        dtypes.append((q.dtype, k.dtype))
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randint(0, 100, (1, 8)))
    assert dtypes and all(d == (torch.bfloat16, torch.bfloat16) for d in dtypes), dtypes
