"""The shared scorer: log-likelihoods equal a hand computation, batching changes nothing, bad text fails."""

from __future__ import annotations

import json

import pytest
import torch
from test_eval_support import shipped_tokenizer, tiny_lm
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from minimind.errors import UserError
from minimind.eval.scorer import Scorer
from minimind.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def model():
    return tiny_lm(seed=1)


@pytest.fixture(scope="module")
def scorer(model):
    return Scorer(model, shipped_tokenizer(), batch_size=3)


def hand_loglikelihood(model, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    """log P(cont | ctx) from one plain forward of ctx + cont and an explicit log-softmax."""
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logits = model(ids).logits[0].double()
    total, greedy = 0.0, True
    for j in range(len(ctx), len(ctx) + len(cont)):
        row = logits[j - 1]
        total += float(row[ids[0, j]] - torch.logsumexp(row, dim=0))
        greedy &= int(row.argmax()) == int(ids[0, j])
    return total, greedy


def test_loglikelihood_equals_hand_computation(model, scorer):
    texts = [("以下是中国关于逻辑学的单项选择题。\n答案：", " A"), ("今天天气", "很好，我们去公园吧"),
             ("The quick brown fox", " jumps over the lazy dog"), ("1 + 1 =", " 2")]
    pairs = [scorer.encode_pair(c, x) for c, x in texts]
    got = scorer.loglikelihood(pairs)
    for (ctx, cont), (ll, greedy) in zip(pairs, got):
        want, want_greedy = hand_loglikelihood(model, ctx, cont)
        assert ll == pytest.approx(want, abs=1e-4)
        assert greedy == want_greedy


def test_greedy_flag_is_true_for_the_argmax_continuation(model, scorer):
    ctx = scorer.encode("你好")
    ids = list(ctx)
    with torch.no_grad():
        for _ in range(3):  # the model's own greedy continuation
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    other = ids[:-1] + [(ids[-1] + 1) % 6400]
    (ll_greedy, g1), (ll_other, g2) = scorer.loglikelihood([(ctx, ids[len(ctx):]), (ctx, other[len(ctx):])])
    assert g1 and not g2 and ll_greedy > ll_other


def test_shared_prompt_and_padding_do_not_change_scores(model, scorer):
    """4 single-token choices share one forward; rows of different lengths share a padded batch."""
    prompts = ["问题一？\n答案：", "一个长得多的问题，用来让这一行比别的行长很多很多很多。\n答案：", "短\n答案："]
    pairs = [p for text in prompts for p in scorer.encode_pairs(text, [" A", " B", " C", " D"])]
    batched = scorer.loglikelihood(pairs)
    alone = [Scorer(model, scorer.tok, batch_size=1).loglikelihood([p])[0] for p in pairs]
    for (a, ga), (b, gb) in zip(batched, alone):
        assert a == pytest.approx(b, abs=1e-4) and ga == gb
    for (ctx, cont), (ll, _) in zip(pairs, batched):
        assert ll == pytest.approx(hand_loglikelihood(model, ctx, cont)[0], abs=1e-4)


def test_a_shared_few_shot_prefix_is_computed_once_and_changes_nothing(model, scorer, monkeypatch):
    shots = "以下是中国关于逻辑学的单项选择题，请选出其中的正确答案。\n\n" + "1 加 1 等于几？\nA. 2\nB. 3\n答案： A\n\n" * 3
    prompts = [shots + q + "\n答案：" for q in ("天空是什么颜色？", "草是什么颜色？很长很长的一个问题。", "雪？")]
    pairs = [p for text in prompts for p in scorer.encode_pairs(text, [" A", " B", " 红色的天空"])]
    calls = []
    original = Scorer._forward_shared
    monkeypatch.setattr(Scorer, "_forward_shared", lambda self, *a: calls.append(a[1]) or original(self, *a))
    got = Scorer(model, scorer.tok, batch_size=8).loglikelihood(pairs)
    assert calls and calls[0] >= len(scorer.encode(shots)) - 4  # the shared part (up to a merged "\n\n"), once
    for (ctx, cont), (ll, greedy) in zip(pairs, got):
        want, want_greedy = hand_loglikelihood(model, ctx, cont)
        assert ll == pytest.approx(want, abs=1e-4) and greedy == want_greedy


def test_encode_pair_follows_lm_eval(scorer):
    tok = scorer.tok
    # Encode context + continuation together, cut after the context's own tokens.
    ctx, cont = scorer.encode_pair("答案：", " A")
    whole = tok.encode("答案： A")
    assert ctx == tok.encode("答案：") and cont == whole[len(ctx):]
    # Trailing whitespace of the context belongs to the continuation.
    assert scorer.encode_pair("答案： ", "A") == scorer.encode_pair("答案：", " A")
    # An empty context is the BOS token.
    assert scorer.encode_pair("", "你好") == ([tok.bos_id], tok.encode("你好"))


def test_long_inputs_are_cut_on_the_left(model):
    s = Scorer(model, shipped_tokenizer(), max_seq_len=8)
    ctx, cont = list(range(100, 120)), [7, 8]
    (ll, _), = s.loglikelihood([(ctx, cont)])
    kept = (ctx + cont)[-9:]
    assert ll == pytest.approx(hand_loglikelihood(model, kept[:-2], kept[-2:])[0], abs=1e-4)
    assert s.truncated == 1


def _unk_tokenizer(folder):
    vocab = {"<unk>": 0, "<|im_end|>": 1, "a": 2, "b": 3}
    hf = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    folder.mkdir()
    (folder / "tokenizer.json").write_text(hf.to_str())
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    return load_tokenizer(folder)


def test_text_the_tokenizer_cannot_encode_is_an_error(tmp_path):
    tok = _unk_tokenizer(tmp_path / "tok")
    s = Scorer(tiny_lm(vocab_size=8), tok)
    assert s.encode("a b") == [2, 3]
    with pytest.raises(UserError, match="cannot encode 'a c'.*unknown token"):
        s.encode_pair("a", " c")
    with pytest.raises(UserError, match="to no tokens"):
        s.encode("   ")


def test_batches_respect_the_row_and_padded_token_budgets(model, scorer):
    s = Scorer(model, scorer.tok, batch_size=3, max_batch_tokens=40)
    rows = [((0,) * n, [i]) for i, n in enumerate([20, 15, 12, 5, 5, 5, 5, 5])]
    assert [[m[0] for _, m in b] for b in s._batches(rows)] == [[0, 1], [2, 3, 4], [5, 6, 7]]
    pairs = [(list(range(100, 100 + n)), [7]) for n in (30, 3, 25, 4)]
    got = [ll for ll, _ in s.loglikelihood(pairs, share_prefixes=False)]
    assert got == pytest.approx([ll for ll, _ in Scorer(model, scorer.tok).loglikelihood(pairs)], abs=1e-4)
