"""Long context: document masking for packed rows (model and loader), activation checkpointing at
long sequence lengths, and the passkey-retrieval eval."""

import re
import warnings

import numpy as np
import pytest
import torch

from minimind import MiniMindLM, ModelConfig
from minimind.data.loader import IGNORE, make_loader
from minimind.errors import UserError
from minimind.model.attention import Attention, document_mask, document_positions, document_runs
from minimind.model.rope import RotaryTables
from minimind.train.build import enable_activation_checkpointing
from support import write_jsonl

V = 101
LENGTHS = (5, 9, 7)  # three documents packed into one row of 21 tokens


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=V, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=64)
    return ModelConfig(**{**base, **kw})


FAMILIES = {
    "dense": {},
    "qk_norm": dict(qk_norm=True),
    "moe": dict(num_experts=4, num_experts_per_tok=2, num_shared_experts=1, moe_intermediate_size=32),
    "yarn": dict(rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}),
}


def packed(seed=0):
    """Three random documents, their packed row [1, 21] and its doc ids (0, 1, 2)."""
    g = torch.Generator().manual_seed(seed)
    docs = [torch.randint(0, V, (1, n), generator=g) for n in LENGTHS]
    ids = torch.cat([torch.full((1, n), i) for i, n in enumerate(LENGTHS)], 1)
    return docs, torch.cat(docs, 1), ids


def make(kw, seed=0):
    torch.manual_seed(seed)
    return MiniMindLM(tiny(**kw)).eval()


# ----------------------------------------------------------------------------- document masking

def test_document_positions_and_runs_by_hand():
    d = torch.tensor([[0, 0, 0, 1, 1, 2, -1, -1], [3, 3, 3, 3, 3, 3, 3, 3]])
    assert document_positions(d).tolist() == [[0, 1, 2, 0, 1, 0, 0, 1], list(range(8))]
    assert document_runs(d).tolist() == [[0, 0, 0, 1, 1, 2, 3, 3], [0] * 8]
    # an id reused later in the row is a new document, not the same one again
    again = torch.tensor([[0, 0, 1, 0]])
    m = document_mask(again)[0, 0]
    assert m.tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]


@pytest.mark.parametrize("kw", FAMILIES.values(), ids=FAMILIES.keys())
def test_document_masked_logits_equal_each_document_alone(kw):
    model = make(kw)
    docs, row, ids = packed()
    with torch.no_grad():
        masked = model(row, doc_ids=ids).logits
        alone = torch.cat([model(d).logits for d in docs], 1)
        plain = model(row).logits
    torch.testing.assert_close(masked, alone, rtol=0, atol=1e-5)
    assert (plain[:, LENGTHS[0]:] - alone[:, LENGTHS[0]:]).abs().max() > 1e-3  # the mask did matter


def test_document_masked_loss_and_grads_equal_each_document_alone():
    """fp32: the packed loss (boundary labels -100, as the loader makes them) is the token-weighted
    mean of the per-document losses, and so are its gradients."""
    torch.manual_seed(0)
    model = MiniMindLM(tiny(**FAMILIES["qk_norm"])).train()
    docs, row, ids = packed(1)
    labels = row.clone()
    labels[0, np.cumsum(LENGTHS)[:-1]] = IGNORE  # each later document's first token
    model.zero_grad()
    loss = model(row, labels=labels, doc_ids=ids).loss
    loss.backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    n_targets = sum(n - 1 for n in LENGTHS)
    total = sum(model(d, labels=d).loss * (d.shape[1] - 1) for d in docs) / n_targets
    total.backward()
    torch.testing.assert_close(loss, total, rtol=0, atol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(packed_grads[n], p.grad, rtol=1e-4, atol=1e-5, msg=n)


def test_without_doc_ids_the_forward_is_unchanged():
    """One document covering the row is exactly plain causal attention; no doc_ids is the old path."""
    model = make({})
    _, row, _ = packed()
    with torch.no_grad():
        plain = model(row).logits
        one_doc = model(row, doc_ids=torch.zeros_like(row)).logits
    torch.testing.assert_close(one_doc, plain, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="KV cache"):
        model(row, doc_ids=torch.zeros_like(row), kv_cache=model.new_kv_cache(1, 32))


def test_flex_block_mask_equals_the_sdpa_mask():
    """The GPU path (flex attention with a BlockMask), run eagerly on the CPU, agrees with SDPA."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    torch.manual_seed(0)
    cfg = tiny()
    attn = Attention(cfg).eval()
    _, row, ids = packed()
    x = torch.randn(1, row.shape[1], cfg.hidden_size)
    cos, sin = RotaryTables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)(document_positions(ids), x.dtype)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()"
        flex = attn(x, cos, sin, document_mask(ids, flex=True))
    sdpa = attn(x, cos, sin, document_mask(ids)).detach()
    torch.testing.assert_close(flex, sdpa, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- the packer's doc ids

def texts(n):
    words = ["alpha", "beta", "星期", "gamma", "数据", "delta"]
    return [f"doc {i}: " + " ".join(words[(i + j) % len(words)] for j in range(2 + i % 9)) for i in range(n)]


def test_pretrain_batches_carry_doc_ids_and_unlabel_document_starts(tmp_path, tok):
    src = write_jsonl(tmp_path / "pt.jsonl", [{"text": t} for t in texts(40)])
    plain = make_loader("pretrain", src, tok, 32, 4, val_fraction=0)
    masked = make_loader("pretrain", src, tok, 32, 4, val_fraction=0, document_ids=True)
    for _ in range(3):
        a, b = next(plain), next(masked)
        assert set(a) == {"input_ids", "labels"} and set(b) == {"input_ids", "labels", "doc_ids"}
        assert torch.equal(a["input_ids"], b["input_ids"])  # same windows, same order
        x, docs = b["input_ids"], b["doc_ids"]
        # by hand: a token's document number is the count of EOS tokens before it in its window
        eos_before = torch.cat([torch.zeros(4, 1, dtype=torch.long), (x[:, :-1] == tok.eos_id).long().cumsum(1)], 1)
        assert torch.equal(docs, eos_before)
        starts = torch.zeros_like(x, dtype=torch.bool)
        starts[:, 1:] = docs[:, 1:] != docs[:, :-1]
        assert torch.equal(b["labels"], torch.where(starts, IGNORE, x))
        assert starts.any()  # these short documents always end inside a 32-token window
    assert plain.state_dict() == masked.state_dict()


def test_a_loader_batch_with_document_masking_scores_each_document_alone(tmp_path, tok):
    src = write_jsonl(tmp_path / "pt.jsonl", [{"text": t} for t in texts(40)])
    batch = next(make_loader("pretrain", src, tok, 48, 1, val_fraction=0, document_ids=True))
    torch.manual_seed(0)
    model = MiniMindLM(tiny(vocab_size=tok.vocab_size)).eval()
    x, docs = batch["input_ids"], batch["doc_ids"][0]
    with torch.no_grad():
        out = model(x, labels=batch["labels"], doc_ids=batch["doc_ids"])
        alone = [model(x[:, docs == d], labels=x[:, docs == d]) for d in docs.unique()]
    # mean over every document's own next-token targets, weighted by how many each has
    n = [int((docs == d).sum()) - 1 for d in docs.unique()]
    expected = sum(o.loss * k for o, k in zip(alone, n)) / sum(n)
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=1e-5)


def test_sft_batches_carry_doc_ids_per_conversation_and_pad_as_minus_one(tmp_path, tok):
    convs = [[{"role": "user", "content": f"q{i}?"}, {"role": "assistant", "content": "a" * (1 + i % 4)}]
             for i in range(10)]
    src = write_jsonl(tmp_path / "s.jsonl", [{"conversations": c} for c in convs])
    loader = make_loader("sft", src, tok, 64, 3, val_fraction=0, document_ids=True)
    plan = loader._plan_for(0)
    batch = next(loader)
    for r, k in enumerate(plan["units"][:3].tolist()):
        ids, _ = loader.row(plan, k)
        docs = plan["order"][plan["starts"][k]:plan["starts"][k + 1]]
        expected = sum(([j] * min(int(loader.store.lengths[d]), 64) for j, d in enumerate(docs)), [])
        T = batch["input_ids"].shape[1]
        assert batch["doc_ids"][r].tolist() == expected + [-1] * (T - len(expected))
    with pytest.raises(UserError, match="packed rows"):
        pairs = [{"chosen": convs[0], "rejected": convs[1]}] * 3
        make_loader("dpo", write_jsonl(tmp_path / "d.jsonl", pairs), tok, 64, 1, val_fraction=0, document_ids=True)


# ----------------------------------------------------------------------------- activation checkpointing

@pytest.mark.parametrize("masked", [False, True], ids=["causal", "document-masked"])
def test_activation_checkpointing_keeps_loss_and_grads_at_1024_tokens(masked):
    """Recomputing each block in the backward pass changes memory, not the numbers (seq 1024)."""
    T = 1024
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, V, (1, T), generator=g)
    docs = (torch.arange(T) // 300).view(1, T) if masked else None  # 4 documents
    results = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = MiniMindLM(tiny(max_seq_len=T, hidden_size=32, num_heads=2, num_kv_heads=1)).train()
        if ckpt:
            enable_activation_checkpointing(model)
        calls = []
        model.layers[0].mlp.register_forward_pre_hook(lambda *a: calls.append(1))  # (recomputing stops early)
        loss = model(x, labels=x, doc_ids=docs).loss
        loss.backward()
        assert len(calls) == (2 if ckpt else 1)  # checkpointed: the block ran again in the backward pass
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (l0, g0), (l1, g1) = results
    assert torch.equal(l0, l1)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=0, atol=1e-7, msg=n)
