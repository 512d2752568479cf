"""The generation engine: KV-cached decoding equals recomputation, batching equals single runs."""

from __future__ import annotations

import pytest
import torch
from infer_support import tiny_model, tiny_tokenizer

from minimind.infer import Engine, InvalidParams, SamplingParams

PROMPTS = [[5, 6, 7], [9] * 11, list(range(3, 19)), [20, 21], [40, 41, 42, 43, 44, 45]]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def naive_greedy(model, prompt: list[int], n: int) -> list[int]:
    """Reference: recompute the whole sequence every step (no cache, no padding)."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, temperature=0, stop_token_ids=[], **kw)


def test_cached_batched_greedy_equals_recomputation(model):
    seqs = Engine(model).generate(PROMPTS, greedy(12))
    for p, s in zip(PROMPTS, seqs):
        assert s.output_ids == naive_greedy(model, p, 12)
        assert s.finish_reason == "length"


def test_continuous_batching_with_shifts_equals_single_runs(model):
    """2 rows, a 30-slot cache and staggered arrivals force right shifts, row moves and left shifts."""
    engine = Engine(model)
    alone = {i: naive_greedy(model, p, 10) for i, p in enumerate(PROMPTS)}
    runner = engine.runner(capacity=2, max_seq_len=30)
    waiting = [engine.new_sequence(p, greedy(10)) for p in PROMPTS]
    seqs = list(waiting)
    steps = 0
    while waiting or runner.seqs:
        # Admit at most one per step so rows of different ages share the cache.
        if waiting and runner.room_for(len(waiting[0].prompt_ids)):
            runner.admit([waiting.pop(0)])
        runner.step()
        steps += 1
        assert runner.length <= 30
    for i, s in enumerate(seqs):
        assert s.output_ids == alone[i], i
    assert steps < 80


def test_each_row_stops_on_its_own(model):
    ref = Engine(model).generate(PROMPTS, greedy(12))
    # Stop each row on the 4th token it produces: rows end at different steps.
    stops = [s.output_ids[3] for s in ref]
    params = [SamplingParams(max_new_tokens=12, temperature=0, stop_token_ids=[t]) for t in stops]
    out = Engine(model).generate(PROMPTS, params)
    for r, s, t in zip(ref, out, stops):
        k = r.output_ids.index(t)
        assert s.output_ids == r.output_ids[:k + 1]  # the stop token is the last id, as in transformers
        assert s.finish_reason == "stop"


def test_max_new_tokens_per_row(model):
    params = [greedy(n) for n in (1, 3, 7, 2, 5)]
    out = Engine(model).generate(PROMPTS, params)
    assert [len(s.output_ids) for s in out] == [1, 3, 7, 2, 5]


def test_seeded_sampling_is_independent_of_the_batch():
    model = tiny_model(sharp=False)  # near-uniform logits: samples differ from seed to seed
    params = [SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=100 + i, stop_token_ids=[])
              for i in range(len(PROMPTS))]
    together = Engine(model).generate(PROMPTS, params)
    for i, p in enumerate(PROMPTS):
        alone = Engine(model).generate([p], params[i])[0]
        assert alone.output_ids == together[i].output_ids
    again = Engine(model).generate(PROMPTS[:1], params[0])[0]
    assert again.output_ids == together[0].output_ids
    other = Engine(model).generate(PROMPTS[:1], SamplingParams(max_new_tokens=10, seed=7, stop_token_ids=[]))[0]
    assert other.output_ids != together[0].output_ids


def test_cancel_frees_the_row(model):
    engine = Engine(model)
    runner = engine.runner(capacity=2, max_seq_len=64)
    a, b = (engine.new_sequence(p, greedy(20)) for p in PROMPTS[:2])
    runner.admit([a, b])
    runner.step()
    a.cancelled = True
    events = runner.step()
    assert a.finish_reason == "cancelled" and [s.id for s in runner.seqs] == [b.id]
    assert any(e.seq is a and e.finished for e in events)
    c = engine.new_sequence(PROMPTS[2], greedy(5))
    runner.admit([c])
    while runner.seqs:
        runner.step()
    assert c.output_ids == naive_greedy(model, PROMPTS[2], 5)
    assert b.output_ids == naive_greedy(model, PROMPTS[1], 20)


def test_context_limit(model):
    engine = Engine(model, max_seq_len=20)
    with pytest.raises(InvalidParams, match="context length is 20"):
        engine.new_sequence(list(range(20)), greedy(5))
    s = engine.generate([list(range(1, 16))], greedy(50))[0]
    assert len(s.output_ids) == 5 and s.finish_reason == "length"  # prompt + output = 20 tokens


def test_invalid_params():
    model = tiny_model()
    engine = Engine(model)
    for bad in (dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(max_new_tokens=0), dict(top_k=-2)):
        with pytest.raises(InvalidParams, match=next(iter(bad))):
            engine.new_sequence([1, 2], SamplingParams(**bad))
    with pytest.raises(InvalidParams, match="token ids"):
        engine.new_sequence([1, 500], SamplingParams())


def test_text_stop_strings_and_stream(tmp_path):
    tok = tiny_tokenizer(tmp_path)
    model = tiny_model(tok.vocab_size, seed=3, sharp=False)
    engine = Engine(model, tok)
    prompt = tok.encode("Hello world")
    sample = SamplingParams(max_new_tokens=30, temperature=0.7, seed=5, stop_token_ids=[])
    full = engine.generate([prompt], sample)[0]
    # Cut by its budget, the text may end mid-character: that incomplete tail is dropped, not shown.
    assert full.text == tok.decode(full.output_ids).rstrip("\ufffd") and len(full.output_ids) == 30
    pieces = list(engine.stream(prompt, sample))
    assert "".join(pieces) == full.text
    # A stop string cut out of the middle of the text: the output ends right before it.
    text = full.text
    stop = text[len(text) // 2: len(text) // 2 + 2]
    cut = engine.generate([prompt], SamplingParams(**{**sample.__dict__, "stop": [stop]}))[0]
    assert cut.text == text[:text.find(stop)] and cut.finish_reason == "stop"
    assert len(cut.output_ids) < 30


def test_repetition_penalty_rows_mixed_with_plain_rows_equal_recomputation(model):
    """Only penalised rows track seen tokens; they must still see prompt + output, whatever their neighbours."""
    def naive(prompt, n, penalty):
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(n):
                logits = model(torch.tensor([ids])).logits[0, -1]
                seen = torch.zeros_like(logits, dtype=torch.bool)
                seen[torch.tensor(ids)] = True
                pen = torch.where(logits > 0, logits / penalty, logits * penalty)
                ids.append(int(torch.where(seen, pen, logits).argmax()))
        return ids[len(prompt):]

    params = [greedy(14, repetition_penalty=10.0) if i % 2 == 0 else greedy(14) for i in range(len(PROMPTS))]
    engine = Engine(model)
    runner = engine.runner(capacity=2, max_seq_len=32)  # staggered rows: moves and shifts carry `seen` along
    waiting = [engine.new_sequence(p, sp) for p, sp in zip(PROMPTS, params)]
    seqs = list(waiting)
    while waiting or runner.seqs:
        if waiting and runner.room_for(len(waiting[0].prompt_ids)):
            runner.admit([waiting.pop(0)])
        runner.step()
    for i, (p, s) in enumerate(zip(PROMPTS, seqs)):
        assert s.output_ids == naive(p, 14, 10.0 if i % 2 == 0 else 1.0), i
    # Unpenalised, rows 0 and 2 repeat their own earlier outputs: the penalty must change that, so a
    # row that lost track of the tokens it generated fails the comparison above.
    assert all(seqs[i].output_ids != naive(PROMPTS[i], 14, 1.0) for i in (0, 2))
