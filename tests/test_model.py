"""The model's behaviour: causality, KV-cache decoding, MoE dispatch and aux loss, RoPE, learning."""

import math

import pytest
import torch
import torch.nn.functional as F

from minimind import MiniMindLM, ModelConfig
from minimind.model import KVCache, attention
from minimind.model.attention import decode_attend
from minimind.model.layers import RMSNorm
from minimind.model.moe import MoE
from minimind.model.rope import RotaryTables, apply_rope, rope_inv_freq, rotate, rotate_half
from support import model_families, tiny_model_config

V = 101


def tiny(**kw) -> ModelConfig:
    return tiny_model_config(128, **kw)


FAMILIES = model_families(32)


def make(kw, seed=0) -> MiniMindLM:
    torch.manual_seed(seed)
    return MiniMindLM(tiny(**kw)).eval()


@pytest.mark.parametrize("kw", FAMILIES.values(), ids=FAMILIES.keys())
def test_future_tokens_never_change_past_logits(kw):
    model = make(kw)
    x = torch.randint(0, V, (2, 24))
    y = x.clone()
    y[:, 12:] = torch.randint(0, V, (2, 12))  # rewrite the future
    with torch.no_grad():
        a, b = model(x).logits, model(y).logits
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=1e-5)
    assert (a[:, 12:] - b[:, 12:]).abs().max() > 1e-3  # and the future did matter


@pytest.mark.parametrize("kw", FAMILIES.values(), ids=FAMILIES.keys())
def test_incremental_decoding_equals_full_forward(kw):
    model = make(kw)
    x = torch.randint(0, V, (2, 20))
    with torch.no_grad():
        full = model(x).logits
        cache = model.new_kv_cache(2, max_seq_len=32)
        steps = [model(x[:, :8], kv_cache=cache).logits]  # prefill 8, then one token at a time
        steps += [model(x[:, t:t + 1], kv_cache=cache).logits for t in range(8, 20)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=1e-4)
    assert cache.length == 20


@pytest.mark.parametrize("kw", [FAMILIES["dense"], FAMILIES["moe"]], ids=["dense", "moe"])
def test_batched_left_padded_decoding_equals_each_sequence_alone(kw):
    model = make(kw)
    lengths, new = [5, 11, 8], 6
    seqs = [torch.randint(3, V, (n + new,)) for n in lengths]
    T = max(lengths)
    ids = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, (s, n) in enumerate(zip(seqs, lengths)):
        ids[i, T - n:], mask[i, T - n:] = s[:n], 1
    with torch.no_grad():
        cache = model.new_kv_cache(3, max_seq_len=T + new)
        out = [model(ids, attention_mask=mask, kv_cache=cache).logits[:, -1:]]
        for t in range(new - 1):
            step = torch.stack([s[n + t] for s, n in zip(seqs, lengths)]).view(3, 1)
            out.append(model(step, kv_cache=cache).logits)
        batched = torch.cat(out, 1)
        for i, (s, n) in enumerate(zip(seqs, lengths)):
            alone = model(s[None, : n + new - 1]).logits[0, n - 1:]
            torch.testing.assert_close(batched[i], alone, rtol=0, atol=1e-4)


def test_padded_forward_without_cache_matches_unpadded():
    model = make({})
    s = torch.randint(3, V, (9,))
    ids = torch.cat([torch.zeros(4, dtype=torch.long), s])[None]
    mask = torch.cat([torch.zeros(4), torch.ones(9)]).long()[None]
    with torch.no_grad():
        torch.testing.assert_close(model(ids, attention_mask=mask).logits[0, 4:], model(s[None]).logits[0],
                                   rtol=0, atol=1e-4)


def test_cache_overflow_and_context_limit_raise():
    model = make({})
    cache = model.new_kv_cache(1, max_seq_len=4)
    with pytest.raises(ValueError, match="KV cache is full"):
        model(torch.zeros(1, 5, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        model(torch.zeros(1, 129, dtype=torch.long))


def test_loss_is_shifted_cross_entropy_with_ignore_index():
    model = make({})
    x = torch.randint(0, V, (2, 10))
    labels = x.clone()
    labels[0, :4] = -100
    out = model(x, labels=labels)
    assert out.logits is None  # the loss path never builds the full logits
    logits = model(x).logits
    # By hand: position t predicts token t+1; ignored labels drop out of the mean.
    terms = [-F.log_softmax(logits[b, t], -1)[labels[b, t + 1]] for b in range(2) for t in range(9)
             if labels[b, t + 1] != -100]
    torch.testing.assert_close(out.loss, torch.stack(terms).mean())
    assert out.aux_loss.item() == 0.0  # dense model


def test_rope_relative_positions():
    # A rotated q.k depends only on the distance between positions.
    inv_freq, scale = rope_inv_freq(16, 10000.0)
    assert scale == 1.0

    def rotated(x, pos):
        ang = torch.cat([pos * inv_freq, pos * inv_freq])
        return apply_rope(x, ang.cos(), ang.sin())

    q, k = torch.randn(16), torch.randn(16)
    a = rotated(q, 7.0) @ rotated(k, 3.0)
    b = rotated(q, 104.0) @ rotated(k, 100.0)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rotated(q, 5.0).norm(), q.norm())  # a rotation keeps length


def test_yarn_keeps_fast_pairs_and_interpolates_slow_ones():
    plain, _ = rope_inv_freq(64, 1e6)
    yarn, scale = rope_inv_freq(64, 1e6, {"factor": 16, "original_max_position_embeddings": 2048})
    assert scale == pytest.approx(0.1 * math.log(16) + 1)
    torch.testing.assert_close(yarn[:4], plain[:4])  # high-frequency pairs untouched
    torch.testing.assert_close(yarn[-4:], plain[-4:] / 16)  # low-frequency pairs divided by factor


# -- mixture of experts ---------------------------------------------------------------------------


def moe_layer(**kw) -> MoE:
    torch.manual_seed(0)
    return MoE(tiny(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, **kw))


@pytest.mark.parametrize("shared", [0, 2])
def test_moe_dispatch_equals_a_per_token_loop(shared):
    layer = moe_layer(num_shared_experts=shared)
    x = torch.randn(2, 7, 64)
    y, _ = layer(x)
    probs, weights, experts = layer.route(x.reshape(-1, 64))
    expect = []
    for t, tok in enumerate(x.reshape(-1, 64)):  # the naive reference: one token at a time
        out = sum(w * layer.experts[e](tok) for w, e in zip(weights[t], experts[t]))
        if layer.shared_experts is not None:
            out = out + layer.shared_experts(tok)
        expect.append(out)
    torch.testing.assert_close(y.reshape(-1, 64), torch.stack(expect), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(14))  # top-k renormalised


def test_moe_aux_loss_is_one_for_balanced_routing():
    layer = moe_layer()
    with torch.no_grad():
        layer.gate.weight.zero_()  # uniform router: P_e = 1/E, so E * sum f_e P_e = sum f_e = 1
    _, aux = layer(torch.randn(3, 8, 64))
    assert aux.item() == pytest.approx(1.0)


def test_moe_aux_loss_hand_value_and_levels():
    layer = moe_layer()
    E = 4
    probs = torch.tensor([[[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1]],
                          [[0.7, 0.1, 0.1, 0.1], [0.7, 0.1, 0.1, 0.1]]])
    experts = torch.tensor([[[0, 1], [1, 0]], [[0, 2], [0, 3]]])
    # Sequence 0: f = (1/2, 1/2, 0, 0), P = (0.4, 0.4, 0.1, 0.1) -> 4 * 0.4 = 1.6
    # Sequence 1: f = (1/2, 0, 1/4, 1/4), P = (0.7, 0.1, 0.1, 0.1) -> 4 * (0.35 + 0.05) = 1.6
    seq = layer.balance_loss(probs, experts, None)
    assert seq.item() == pytest.approx(1.6)
    layer.aux_level = "batch"
    # Whole batch: f = (4/8, 2/8, 1/8, 1/8), P = (0.55, 0.25, 0.1, 0.1)
    f, p = torch.tensor([0.5, 0.25, 0.125, 0.125]), torch.tensor([0.55, 0.25, 0.1, 0.1])
    assert layer.balance_loss(probs, experts, None).item() == pytest.approx(E * (f * p).sum().item())
    # Padding tokens do not count: masking sequence 1's second token changes only its share.
    mask = torch.tensor([[1, 1], [1, 0]])
    layer.aux_level = "seq"
    f1, p1 = torch.tensor([0.5, 0, 0.5, 0]), torch.tensor([0.7, 0.1, 0.1, 0.1])
    expect = (1.6 + E * (f1 * p1).sum().item()) / 2
    assert layer.balance_loss(probs, experts, mask).item() == pytest.approx(expect)


def test_model_aux_loss_averages_layers_and_collapse_costs_more():
    model = make(FAMILIES["moe"])
    with torch.no_grad():
        for layer in model.layers:
            layer.mlp.gate.weight.zero_()
    assert model(torch.randint(0, V, (2, 16))).aux_loss.item() == pytest.approx(1.0)
    # Collapse: every token is certain of expert 0 and picks experts 0 and 1:
    # f = (1/2, 1/2, 0, 0), P = (1, 0, 0, 0) -> E * 1/2 = 2, twice the balanced value.
    probs = torch.tensor([1.0, 0, 0, 0]).expand(2, 5, 4)
    experts = torch.tensor([0, 1]).expand(2, 5, 2)
    assert model.layers[0].mlp.balance_loss(probs, experts, None).item() == pytest.approx(2.0)


# -- learning -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [FAMILIES["dense"], FAMILIES["moe"]], ids=["dense", "moe"])
def test_tiny_model_overfits_one_batch(kw):
    torch.manual_seed(0)
    model = MiniMindLM(tiny(**kw)).train()
    x = torch.randint(0, V, (2, 24))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        out = model(x, labels=x)
        loss = out.loss + model.config.aux_loss_coef * out.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if out.loss.item() < 0.05:
            break
    assert out.loss.item() < 0.1


def test_shifted_and_compacted_cache_decodes_the_same():
    model = make({})
    x = torch.randint(3, V, (3, 9))
    with torch.no_grad():
        plain = model.new_kv_cache(3, max_seq_len=16)
        model(x[:, :8], kv_cache=plain)
        expect = model(x[:, 8:], kv_cache=plain).logits

        moved = model.new_kv_cache(3, max_seq_len=16)
        model(x[:, :8], kv_cache=moved)
        moved.shift(rows=3, length=8, delta=4)  # slots 0..3 become invalid padding
        moved.move_row(src=2, dst=0, length=12)  # row 0 now holds row 2's history
        view = moved.view(0, 2, length=12, padded=True)
        got = model(x[[2, 1], 8:], kv_cache=view).logits
    torch.testing.assert_close(got, expect[[2, 1]], rtol=0, atol=1e-4)
    assert moved.valid[:2, :4].sum() == 0 and moved.valid[:2, 4:12].all()


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2), (6, 1)])
@pytest.mark.parametrize("masked", [False, True])
def test_grouped_decode_attention_equals_sdpa(heads, kv_heads, masked):
    # One query per row against S cached keys; rows 1.. have leading padding slots (left padding).
    torch.manual_seed(0)
    B, S, D = 3, 11, 16
    q, k, v = torch.randn(B, heads, 1, D), torch.randn(B, kv_heads, S, D), torch.randn(B, kv_heads, S, D)
    mask = None
    if masked:
        mask = torch.ones(B, 1, 1, S, dtype=torch.bool)
        mask[1, ..., :4] = False
        mask[2, ..., :10] = False  # only the query's own slot remains
    got = decode_attend(q, k, v, mask)
    G = heads // kv_heads  # query head h reads K/V head h // G
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), attn_mask=mask)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    # and by hand for one head of the padded row: softmax over its real keys only
    h = heads - 1
    keys = slice(4, S) if masked else slice(0, S)
    w = torch.softmax(k[1, h // G, keys] @ q[1, h, 0] / math.sqrt(D), -1)
    torch.testing.assert_close(got[1, h, 0], w @ v[1, h // G, keys], rtol=1e-5, atol=1e-6)


def test_decode_step_dispatches_to_grouped_attention(monkeypatch):
    # The model's decode step (T == 1) takes the grouped path, and SDPA is not called at all.
    model = make({})
    x = torch.randint(3, V, (2, 6))
    calls, sdpa = [], F.scaled_dot_product_attention
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or sdpa(*a, **kw))
    with torch.no_grad():
        cache = model.new_kv_cache(2, max_seq_len=8)
        model(x[:, :5], kv_cache=cache)
        prefill_calls = len(calls)
        model(x[:, 5:], kv_cache=cache)
    assert prefill_calls == model.config.num_layers and len(calls) == prefill_calls


def test_rope_rotate_equals_rotate_half_formula_exactly():
    # The model's roll + signed-sin rotation is the textbook rotate-half product, bit for bit.
    tables = RotaryTables(16, 32, 10000.0)
    pos = torch.tensor([[0, 5, 31], [2, 2, 7]])
    cos, signed_sin = tables(pos, torch.float32)
    x = torch.randn(2, 3, 3, 16)
    plain_cos, plain_sin = tables.cos[pos].unsqueeze(1), tables.sin[pos].unsqueeze(1)
    expect = x * plain_cos + rotate_half(x) * plain_sin
    assert torch.equal(rotate(x, cos, signed_sin), expect)
    assert torch.equal(apply_rope(x, plain_cos, plain_sin), expect)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_equals_hand_formula(dtype):
    norm = RMSNorm(48, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(48))
    x = torch.randn(3, 5, 48).to(dtype)
    xf = x.float()
    expect = norm.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(dtype)
    got = norm(x)
    assert got.dtype == expect.dtype
    torch.testing.assert_close(got, expect, rtol=1e-6, atol=1e-6)


def test_position_counter_equals_cumsum_positions_across_staggered_rows():
    # Positions = real tokens before each slot in its own row (the cumsum definition), kept by a
    # per-row counter through padded prefills, decode steps, shifts, row moves, views and a write
    # into `valid` from outside (as eval's shared-prefix scoring does).
    cache = KVCache(tiny(), batch_size=3, max_seq_len=24)

    def check(c, T, mask=None):
        pos = c.begin(T, mask)
        end = c.length + T
        valid = c.key_valid(end)  # read without marking the counts for a recount
        ref = (valid.long().cumsum(-1) - 1).clamp(min=0)[:, c.length:end]
        assert torch.equal(pos, ref)
        assert torch.equal(c.count, valid.sum(-1))
        c.commit(T)

    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 1]])
    check(cache, 5, mask)
    for _ in range(3):
        check(cache, 1)
    check(cache, 2, torch.tensor([[1, 1], [0, 1], [1, 1]]))
    cache.shift(rows=3, length=10, delta=3)  # three invalid slots in front of every row
    cache.length = 13
    check(cache, 1)
    cache.move_row(src=2, dst=0, length=14)
    view = cache.view(0, 2, length=14, padded=True)
    check(view, 1)  # writes through to rows 0 and 1 of the cache
    cache.valid[2, :14] = True  # an outside write: row 2's count must follow it
    cache.length = 15
    check(cache, 1)
    assert cache.count[2] == 15


def test_cache_stores_keys_transposed_and_returns_what_was_written():
    # Keys live as [..., head_dim, slots] (rows of K^T contiguous for the decode matmul); `k` and
    # what `update` returns are [..., slots, head_dim] views that read back exactly what was written.
    cfg = tiny()
    cache = KVCache(cfg, batch_size=2, max_seq_len=10)
    assert cache.k.shape == cache.v.shape == (cfg.num_layers, 2, cfg.num_kv_heads, 10, cfg.head_dim)
    assert cache.k.stride(-2) == 1 and cache.v.stride(-1) == 1
    k1, v1 = torch.randn(2, cfg.num_kv_heads, 3, cfg.head_dim), torch.randn(2, cfg.num_kv_heads, 3, cfg.head_dim)
    cache.begin(3, None)
    keys, values = cache.update(1, k1, v1)
    cache.commit(3)
    assert torch.equal(keys, k1) and torch.equal(values, v1)
    k2 = torch.randn(2, cfg.num_kv_heads, 1, cfg.head_dim)
    cache.begin(1, None)
    keys, _ = cache.update(1, k2, k2)
    assert torch.equal(keys, torch.cat([k1, k2], dim=2))
