"""Passkey retrieval: does the model find a number hidden in filler text, by length and depth?

The test of Mohtashami & Jaggi (2023), used to check context extension: a five-digit key sits in
a long run of repeated filler sentences, and the prompt ends with "The pass key is"; a model
that uses its whole context copies the key, one that does not guesses.

Contract:
- `make_cases(tokenizer, lengths, depths, trials, seed)` builds, for every length L (tokens),
  depth d (the fraction of the filler placed before the key) and trial, a prompt of exactly L
  tokens: INTRO, filler, NEEDLE with the key, filler, QUESTION. Pieces are tokenised separately
  and joined as ids, so the length is exact; the needle always starts at a whole filler sentence
  group (the filler is cut short only at its very end). The key is drawn from
  numpy's default_rng([seed, L, round(100 d), trial]): the same cases for the same seed, on the fly,
  no data file.
- `correct(text, key)`: the first run of digits in the generated text is exactly the key.
- `evaluate_passkey(engine, cases, max_new_tokens, progress)` generates greedily through the
  inference engine and returns {"task": "passkey", "n", "accuracy", "accuracy_len_<L>" per
  length, "accuracy_depth_<pct>" per depth, "grid": {L: {pct: accuracy}}, "lengths", "depths",
  "trials", "skipped_lengths" (lengths whose prompt plus answer exceed the engine's context),
  "predictions": [{length, depth, key, output, correct}]}.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import UserError
from ..infer import SamplingParams
from .gen import generate_texts

LENGTHS = (256, 512, 1024, 2048)
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
TRIALS = 4
MAX_NEW_TOKENS = 8  # " " and five digits are six tokens with the shipped tokenizer
INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the important information there.")
FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"
_DIGITS = re.compile(r"\d+")


@dataclass
class Case:
    length: int  # tokens in the prompt
    depth: float  # requested share of the filler before the needle
    key: str
    prompt_ids: list[int]
    needle_at: int  # token index where the needle starts


def make_case(tokenizer, length: int, depth: float, key: str) -> Case:
    """One prompt of exactly `length` tokens with `key` at `depth` of the filler."""
    intro, unit = tokenizer.encode(INTRO), tokenizer.encode(FILLER)
    needle, question = tokenizer.encode(NEEDLE.format(key=key)), tokenizer.encode(QUESTION)
    n_filler = length - len(intro) - len(needle) - len(question)
    if n_filler < 0:
        shortest = length - n_filler
        raise UserError(f"passkey length {length} is too short: the prompt without filler already has {shortest} tokens")
    filler = (unit * (n_filler // len(unit) + 1))[:n_filler]
    # The needle goes between whole filler groups: round(depth * groups) of them before it.
    before = round(depth * (n_filler // len(unit))) * len(unit)
    ids = intro + filler[:before] + needle + filler[before:] + question
    return Case(length, depth, key, ids, len(intro) + before)


def make_cases(tokenizer, lengths: Sequence[int] = LENGTHS, depths: Sequence[float] = DEPTHS,
               trials: int = TRIALS, seed: int = 0) -> list[Case]:
    """`trials` cases per (length, depth), ordered by length, then depth, then trial."""
    if trials < 1:
        raise UserError(f"passkey trials must be >= 1, got {trials}")
    bad = [d for d in depths if not 0 <= d <= 1]
    if bad:
        raise UserError(f"passkey depths must be fractions in [0, 1], got {bad[0]}")
    cases = []
    for length in lengths:
        for depth in depths:
            for t in range(trials):
                rng = np.random.default_rng([seed, length, round(100 * depth), t])
                cases.append(make_case(tokenizer, length, depth, str(int(rng.integers(10000, 100000)))))
    return cases


def correct(text: str, key: str) -> bool:
    """The first number in the generated text is exactly the key (no more, no fewer digits)."""
    found = _DIGITS.search(text)
    return found is not None and found.group() == key


def _pct(depth: float) -> str:
    return f"{round(100 * depth)}"


def evaluate_passkey(engine, cases: list[Case], max_new_tokens: int = MAX_NEW_TOKENS,
                     progress: Callable[[int], None] | None = None) -> dict:
    """Greedy generation on every case that fits the engine's context; accuracy overall, per
    length, per depth and per (length, depth)."""
    context = engine.max_seq_len
    fits = [c for c in cases if c.length + max_new_tokens <= context]
    skipped = sorted({c.length for c in cases} - {c.length for c in fits})
    if not fits:
        raise UserError(f"no passkey length fits the model's context of {context} tokens "
                        f"(prompt + {max_new_tokens} new tokens); ask for shorter lengths")
    greedy = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    texts = generate_texts(engine, [c.prompt_ids for c in fits], [greedy] * len(fits), progress)
    hits = [correct(t, c.key) for t, c in zip(texts, fits)]
    lengths = sorted({c.length for c in fits})
    depths = sorted({c.depth for c in fits})

    def mean(keep: Callable[[Case], bool]) -> float:
        picked = [h for h, c in zip(hits, fits) if keep(c)]
        return sum(picked) / len(picked)

    result: dict = {"task": "passkey", "n": len(fits), "accuracy": sum(hits) / len(fits)}
    for L in lengths:
        result[f"accuracy_len_{L}"] = mean(lambda c: c.length == L)
    for d in depths:
        result[f"accuracy_depth_{_pct(d)}"] = mean(lambda c: c.depth == d)
    result["grid"] = {str(L): {_pct(d): mean(lambda c: c.length == L and c.depth == d) for d in depths}
                      for L in lengths}
    result.update(lengths=lengths, depths=depths, trials=len(fits) // (len(lengths) * len(depths)),
                  skipped_lengths=skipped, max_new_tokens=max_new_tokens)
    result["predictions"] = [{"length": c.length, "depth": c.depth, "key": c.key, "output": t, "correct": h}
                             for c, t, h in zip(fits, texts, hits)]
    return result
