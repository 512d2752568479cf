"""The compiled decode step (infer/static_decode.py): the same tokens, logits and cache as the eager
step, and no recompilation as the cache fills, rows leave or batches change size."""

from __future__ import annotations

import copy

import pytest
import torch
from infer_support import tiny_model

from minimind import MiniMindLM, ModelConfig
from minimind.infer import Engine, SamplingParams
from minimind.infer.packed_linear import PackedLinears
from minimind.infer.static_decode import CompiledDecode


def _compiles() -> int:
    """Frames torch.compile has compiled so far in this process (each trace of a new graph is one)."""
    return torch._dynamo.utils.counters["frames"]["ok"]


@pytest.fixture(scope="module")
def engines():
    model = tiny_model(max_seq_len=160)
    return Engine(model), Engine(model, compile=True)


def generate(engine, prompts, budgets):
    params = [SamplingParams(max_new_tokens=n, temperature=0, stop_token_ids=[]) for n in budgets]
    return [s.output_ids for s in engine.generate(prompts, params)]


def test_compiled_engine_generates_what_the_eager_one_does_without_recompiling(engines):
    eager, compiled = engines
    assert compiled.compiled is not None
    # Rows of different lengths (left padding) that finish at different steps (3 rows, then 2, then
    # 1), running past the 64-slot windows (slot 9 + 90 tokens).
    prompts, budgets = [[5, 6, 7], [9] * 17, [3, 1, 4, 1, 5, 9, 2, 6, 5]], [40, 5, 90]
    before = _compiles()
    assert generate(compiled, prompts, budgets) == generate(eager, prompts, budgets)
    first = _compiles() - before
    # A second call: other lengths, a bigger cache (its capacity is what the longest row needs).
    prompts2, budgets2 = [[8] * 30, [2, 7], [11, 12, 13, 14]], [100, 60, 3]
    assert generate(compiled, prompts2, budgets2) == generate(eager, prompts2, budgets2)
    # Traces: one for several rows, one for a single row (torch specialises sizes 0 and 1), and one
    # where the attended slots reach the cache's capacity. Then none at all: not for other lengths,
    # not for a new engine, not for another model of the same shape (its weights are graph inputs).
    assert 1 <= first <= 3
    other = tiny_model(max_seq_len=160, seed=3)
    assert generate(Engine(other, compile=True), prompts, budgets) == generate(Engine(other), prompts, budgets)
    assert _compiles() - before == first


def test_compiled_step_logits_and_cache_equal_the_eager_step():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=96,
                      qk_norm=True, qkv_bias=True)
    model = MiniMindLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ids = torch.randint(0, 97, (3, 7))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a left-padded row
    packed, step = PackedLinears(model), CompiledDecode(model)
    caches = [model.new_kv_cache(3, 80) for _ in range(2)]
    with torch.inference_mode(), packed.active():
        for cache in caches:
            model(ids, attention_mask=mask, kv_cache=cache)
        tok = torch.randint(0, 97, (3, 1))
        for _ in range(4):
            want = model(tok, kv_cache=caches[0]).logits[:, -1]
            got = step(tok, caches[1])
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            tok = want.argmax(-1, keepdim=True)
    eager, compiled = caches
    assert compiled.length == eager.length == 11
    assert torch.equal(compiled.key_valid(80), eager.key_valid(80)) and torch.equal(compiled.count, eager.count)
    torch.testing.assert_close(compiled.k, eager.k, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled.v, eager.v, rtol=1e-5, atol=1e-6)


def test_mixture_of_experts_models_decode_eagerly():
    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, max_seq_len=32,
                      num_experts=2, num_experts_per_tok=1, moe_intermediate_size=16)
    model = MiniMindLM(cfg).eval()
    engine = Engine(model, compile=True)
    assert not CompiledDecode.supports(model) and engine.compiled is None
    assert len(generate(engine, [[1, 2, 3]], [4])[0]) == 4


def test_a_model_with_hooks_decodes_eagerly_even_after_compiling():
    """torch.compile does not guard on module hooks: a hook added after the graph was traced would be
    skipped. The engine decodes a hooked model eagerly instead (LoRA adapters are hooks)."""
    model = tiny_model(max_seq_len=160, seed=6)
    eager, compiled = Engine(model), Engine(model, compile=True)
    prompts = [[5, 6, 7], [9] * 11, [4, 4]]
    params = SamplingParams(max_new_tokens=12, temperature=0, stop_token_ids=[])
    assert compiled.compiled.ready()
    plain = [s.output_ids for s in compiled.generate(prompts, params)]
    model.layers[0].self_attn.o_proj.register_forward_hook(lambda module, inputs, out: out * 3)
    assert not compiled.compiled.ready()
    hooked = [s.output_ids for s in compiled.generate(prompts, params)]
    assert hooked == [s.output_ids for s in eager.generate(prompts, params)] and hooked != plain


def test_compiled_engine_matches_eager_when_a_full_context_shifts_rows(engines):
    """A context of 40 slots: the row with the long prompt ends at the limit, the cache then shifts
    the other row's slots left (BatchRunner._shift) and decoding goes on over moved slots."""
    model = engines[0].model
    eager, compiled = Engine(model, max_seq_len=40), Engine(model, max_seq_len=40, compile=True)
    prompts, budgets = [[7] * 30, [5, 6, 7, 8, 9]], [30, 30]
    got = generate(compiled, prompts, budgets)
    assert got == generate(eager, prompts, budgets)
    assert len(got[0]) == 10 and len(got[1]) == 30  # the first row stopped at the context's end


def test_a_new_cache_size_does_not_trace_again():
    """Engines size their cache to the longest request, so consecutive calls see other capacities.
    The per-layer cache tensors are views of the whole cache, and torch also guards their bases'
    strides: with the capacity left a constant there, the second call traced again (mid-benchmark)."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=96, hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=128)
    model = MiniMindLM(cfg).eval()  # a shape no other test compiles: the traces counted are its own
    engine = Engine(model, max_batch_size=3, compile=True)
    prompts = [[5, 6, 7, 8], [9, 10, 11, 12], [1, 2, 3, 4]]
    generate(engine, prompts[:1], [2])  # one row (a trace of its own), capacity 6
    generate(engine, prompts, [2, 2, 2])  # several rows, capacity 6, the attended slots short of it
    before = _compiles()
    # Capacity 24 now; the slots attended stop at 23, short of the capacity step's own trace.
    assert generate(engine, prompts, [20, 20, 20]) == generate(Engine(model), prompts, [20, 20, 20])
    assert _compiles() - before == 0
