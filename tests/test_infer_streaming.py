"""Sampling math, incremental detokenization, stop strings and the reasoning splitter."""

from __future__ import annotations

import pytest
import torch
from infer_support import tiny_tokenizer

from minimind.infer import IncrementalDecoder, ReasoningSplitter, SamplingParams, StopMatcher, sample_tokens
from minimind.infer.sampling import InvalidParams, apply_repetition_penalty, make_generator, token_logprobs


# -- sampling ---------------------------------------------------------------------------------

def draw(logits: list[float], n: int = 4000, **kw) -> torch.Tensor:
    """Sample n tokens from one logit row (n rows in one call, each with its own generator)."""
    params = [SamplingParams(**kw)] * n
    gens = [make_generator(i) for i in range(n)]
    return sample_tokens(torch.tensor([logits] * n), params, gens)


def test_greedy_and_top_k_1_are_argmax():
    logits = [0.1, 2.0, 1.9, -1.0]
    assert draw(logits, 50, temperature=0).tolist() == [1] * 50
    assert draw(logits, 50, temperature=1.5, top_k=1).tolist() == [1] * 50


def test_sampling_frequencies_follow_softmax():
    logits = torch.tensor([0.0, 1.0, 2.0])
    counts = torch.bincount(draw(logits.tolist(), 6000, temperature=1.0), minlength=3).float() / 6000
    assert torch.allclose(counts, torch.softmax(logits, 0), atol=0.03)
    # temperature 2 flattens: probabilities softmax(logits / 2)
    counts = torch.bincount(draw(logits.tolist(), 6000, temperature=2.0), minlength=3).float() / 6000
    assert torch.allclose(counts, torch.softmax(logits / 2, 0), atol=0.03)


def test_top_k_and_top_p_restrict_the_support():
    logits = [3.0, 2.0, 1.0, 0.0]  # probs 0.644, 0.237, 0.087, 0.032
    assert set(draw(logits, 2000, top_k=2).tolist()) == {0, 1}
    assert set(draw(logits, 2000, top_p=0.5).tolist()) == {0}  # 0.644 alone reaches 0.5
    assert set(draw(logits, 2000, top_p=0.85).tolist()) == {0, 1}  # 0.644 + 0.237 = 0.881 >= 0.85
    assert set(draw(logits, 2000, top_p=0.9).tolist()) == {0, 1, 2}  # 0.881 < 0.9: one more
    # within the kept set, the mass is renormalised: top_k=2 gives 0.644 / 0.881 for token 0
    freq0 = (draw(logits, 6000, top_k=2) == 0).float().mean().item()
    assert abs(freq0 - 0.731) < 0.03


def test_repetition_penalty_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, torch.tensor([2.0]))
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0]]
    # with a strong penalty the seen argmax loses
    params = [SamplingParams(temperature=0, repetition_penalty=4.0)]
    assert sample_tokens(torch.tensor([[3.0, 1.0]]), params, [make_generator(0)], torch.tensor([[True, False]])).item() == 1


def test_token_logprobs_by_hand():
    """log p = logit - log(sum exp logits), of the raw logits; the top k sorted likeliest first."""
    import math

    logits = torch.tensor([[0.0, math.log(3.0)], [2.0, 2.0]])  # probabilities [1/4, 3/4] and [1/2, 1/2]
    chosen, top_v, top_i = token_logprobs(logits, torch.tensor([0, 1]), k=1)
    assert chosen.tolist() == pytest.approx([math.log(0.25), math.log(0.5)])
    assert top_i[0].tolist() == [1] and top_v[0].tolist() == pytest.approx([math.log(0.75)])
    assert token_logprobs(logits, torch.tensor([0, 1]), k=5)[1].shape == (2, 2)  # k capped at the vocabulary
    with pytest.raises(InvalidParams, match="logprobs must be an integer in 0..20"):
        SamplingParams(logprobs=21).validate()


def test_rows_use_their_own_params():
    logits = torch.tensor([[0.0, 5.0, 4.9], [0.0, 5.0, 4.9]])
    params = [SamplingParams(temperature=0), SamplingParams(temperature=1.0, top_k=1)]
    assert sample_tokens(logits, params, [make_generator(0), make_generator(1)]).tolist() == [1, 1]


# -- text ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def test_incremental_decoder_never_splits_a_character(tok):
    text = "Hello 你好，世界。小模型 ok!"
    ids = tok.encode(text)
    # The tokenizer really splits Chinese characters over several byte tokens.
    assert any("\ufffd" in tok.decode([i]) for i in ids)
    dec = IncrementalDecoder(tok.decode)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert "你" in pieces[len(tok.encode("Hello 你")) - 1]  # out as soon as its last byte arrives


def test_incremental_decoder_flushes_an_incomplete_tail(tok):
    ids = tok.encode("你")
    dec = IncrementalDecoder(tok.decode)
    assert [dec.push(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert "\ufffd" in tok.decode(ids[:-1])  # the bytes alone are a broken character...
    assert dec.flush() == ""  # ...which is dropped, never shown, when generation stops there
    dec = IncrementalDecoder(tok.decode)
    ids = tok.encode("ab你")
    assert "".join(dec.push(i) for i in ids[:-1]) + dec.flush() == "ab"


def test_stop_matcher_holds_back_and_cuts():
    m = StopMatcher(["STOP", "\n\n"])
    assert m.push("abc ST") == ("abc ", False)  # "ST" might start "STOP"
    assert m.push("ing") == ("STing", False)
    assert m.push("x\n") == ("x", False)
    assert m.push("\nrest") == ("", True)
    m = StopMatcher(["STOP"])
    assert m.push("no stop here S") == ("no stop here ", False)
    assert m.flush() == "S"
    assert StopMatcher([]).push("anything") == ("anything", False)


def run_splitter(pieces: list[str], open: bool) -> tuple[str, str]:
    sp = ReasoningSplitter(open)
    out = [x for p in pieces for x in sp.push(p)] + sp.flush()
    return "".join(t for k, t in out if k == "reasoning"), "".join(t for k, t in out if k == "content")


@pytest.mark.parametrize("chunk", [1, 2, 3, 100])
def test_reasoning_splitter_any_chunking(chunk):
    text = "用户在打招呼。\nsecond line\n</think>\n\n你好，世界！"
    pieces = [text[i:i + chunk] for i in range(0, len(text), chunk)]
    assert run_splitter(pieces, open=True) == ("用户在打招呼。\nsecond line", "你好，世界！")
    # thinking off, but the model opens a think block itself
    text2 = "<think>\nr\n</think>\n\nanswer"
    pieces = [text2[i:i + chunk] for i in range(0, len(text2), chunk)]
    assert run_splitter(pieces, open=False) == ("r", "answer")
    assert run_splitter(["plain <b>answer</b>"], open=False) == ("", "plain <b>answer</b>")
    assert run_splitter(["unfinished thought\n"], open=True) == ("unfinished thought", "")
