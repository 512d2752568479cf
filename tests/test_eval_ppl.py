"""Perplexity: bits per byte by hand, the sliding window token by token, documents as pretraining sees them."""

from __future__ import annotations

import math

import pytest
import torch
from support import write_jsonl
from test_eval_support import shipped_tokenizer, tiny_lm

from minimind.data.prepare import prepare
from minimind.errors import UserError
from minimind.eval.ppl import Documents, evaluate_ppl, read_documents, windows
from minimind.eval.scorer import Scorer

TEXTS = ["今天天气很好，我们去公园散步。", "MiniMind trains small language models.", "小模型也能学会说话。" * 12]


@pytest.fixture(scope="module")
def model():
    return tiny_lm(seed=2, max_seq_len=512)


def token_logprob(model, context: list[int], target: int) -> float:
    """log P(target | context) from a forward of the context alone."""
    with torch.no_grad():
        row = model(torch.tensor([context])).logits[0, -1].double()
    return float(row[target] - torch.logsumexp(row, 0))


def test_bits_per_byte_on_a_hand_case(model, tmp_path):
    tok = shipped_tokenizer()
    path = write_jsonl(tmp_path / "held.jsonl", [{"text": t} for t in TEXTS[:2]])
    scorer = Scorer(model, tok)
    res = evaluate_ppl(scorer, read_documents(path, scorer))
    nll, tokens = 0.0, 0
    for text in TEXTS[:2]:
        ids = [tok.eos_id] + tok.encode(text)  # pretraining puts EOS before every document
        nll -= sum(token_logprob(model, ids[:j], ids[j]) for j in range(1, len(ids)))
        tokens += len(ids) - 1
    n_bytes = sum(len(t.encode("utf-8")) for t in TEXTS[:2])
    assert res["tokens"] == tokens and res["bytes"] == n_bytes and res["n"] == 2
    assert res["loss"] == pytest.approx(nll / tokens, rel=1e-5)
    assert res["ppl"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    assert res["bits_per_byte"] == pytest.approx(res["loss"] * tokens / (n_bytes * math.log(2)), rel=1e-9)
    assert res["bits_per_byte"] == pytest.approx(nll / (n_bytes * math.log(2)), rel=1e-5)


@pytest.mark.parametrize("context,stride", [(16, 5), (16, 16), (12, 1)])
def test_sliding_window_scores_each_token_once_with_the_documented_context(model, context, stride):
    tok = shipped_tokenizer()
    text = TEXTS[2]
    ids = [tok.eos_id] + tok.encode(text)
    assert len(ids) > 3 * context
    # By hand: target j (1-based in ids) sits in the first window (j <= C: context from 0), or in
    # window k >= 1 covering (C + (k-1)S, C + kS]; that window holds at most C inputs ending at its end.
    nll = 0.0
    for j in range(1, len(ids)):
        if j <= context:
            start = 0
        else:
            k = math.ceil((j - context) / stride)
            end = min(context + k * stride + 1, len(ids))
            start = max(0, end - context - 1)
            assert j - start >= context - stride  # the documented minimum context
        nll -= token_logprob(model, ids[start:j], ids[j])
    scorer = Scorer(model, tok, max_seq_len=context)
    res = evaluate_ppl(scorer, Documents([scorer.encode(text)], [len(text.encode("utf-8"))]), stride)
    assert res["tokens"] == len(ids) - 1
    assert res["loss"] * res["tokens"] == pytest.approx(nll, rel=1e-5)
    assert res["stride"] == stride and res["context"] == context


def test_windows_cover_every_token_once():
    ids = list(range(10, 60))
    for C, S in [(8, 3), (8, 8), (49, 7), (60, 30)]:
        scored = [t for _, cont in windows(ids, 0, C, S) for t in cont]
        assert scored == ids
        for ctx, cont in windows(ids, 0, C, S):
            assert len(ctx) + len(cont) - 1 <= C
    with pytest.raises(UserError, match="--stride"):
        windows(ids, 0, 8, 9)


def test_limit_slice_and_prepared_directory_agree(model, tmp_path):
    tok = shipped_tokenizer()
    path = write_jsonl(tmp_path / "held.jsonl", [{"text": t} for t in TEXTS])
    scorer = Scorer(model, tok)
    first2 = evaluate_ppl(scorer, read_documents(path, scorer, limit=2))
    hand = evaluate_ppl(scorer, read_documents(write_jsonl(tmp_path / "two.jsonl",
                                                           [{"text": t} for t in TEXTS[:2]]), scorer))
    assert first2["loss"] == hand["loss"] and first2["n"] == 2
    prepared = prepare("pretrain", [path], tmp_path / "prep", tok).path
    from_dir = evaluate_ppl(scorer, read_documents(prepared, scorer))
    from_file = evaluate_ppl(scorer, read_documents(path, scorer))
    for key in ("loss", "bits_per_byte", "tokens", "bytes", "n"):
        assert from_dir[key] == pytest.approx(from_file[key])


def test_bad_pretrain_records(model, tmp_path):
    scorer = Scorer(model, shipped_tokenizer())
    path = write_jsonl(tmp_path / "bad.jsonl", [{"text": "好"}, '{"text": 3}', "{oops", {"text": "行"}])
    with pytest.raises(UserError, match=r"bad.jsonl:2: 'text' must be a string"):
        read_documents(path, scorer)
    docs = read_documents(path, scorer, skip_bad=True)
    assert len(docs.ids) == 2 and docs.skipped == 2
