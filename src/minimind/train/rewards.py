"""Reward functions for RL stages (GRPO): rule-based checks, a reward-model hook, weighted sums.

Contract:
- A reward function has one signature: `fn(completion, answer, messages) -> float`, where
  `completion` is the full text of the generated assistant message *including* its opening
  `<think>` tag (the GRPO stage puts back the `<think>\\n` that the prompt supplied), `answer` is
  the reference answer of the record or None, and `messages` is the prompt conversation. Any
  callable with this signature plugs in.
- Built-in rule rewards: `format_reward` (1/0), `correctness_reward` (1/0), `length_penalty`
  (0 down to -1) and `repetition_penalty` (0 down to -1). They never raise on odd text.
- `reward_model(scorer)` wraps a learned scorer `scorer(messages_with_reply) -> float` (for
  example a classifier head on a chat model) as a reward function.
- `WeightedRewards` sums weighted terms and reports each term for logging; `build_rewards(spec)`
  builds one from a CLI string such as "format:0.5,correct:1,length:0.1@400,repetition:0.2@3"
  (`name[:weight][@param]`; the param is the length target in characters, or the n-gram size).

Pure Python (no torch): rewards are computed on decoded text, outside the autograd graph. The
answer matcher (`answers_match`, `extract_final_answer`, ...) is `minimind.eval.answers`, shared
with evaluation so that a model is rewarded by the rule it is scored by. The think tags are the
tokenizer's, and a completion is split into reasoning and answer by `chat.split_reasoning`, the
one splitter (at the first `</think>`; its docstring says why).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from ..chat import split_reasoning
from ..errors import UserError
# The answer matcher is shared with evaluation (one rule for reward and score); these names stay
# importable from here for existing callers.
from ..eval.answers import answers_match, extract_final_answer, normalize_text, parse_number
from ..tokenizer import THINK_END, THINK_START
from ..tools import ToolError, ToolRegistry, validate_arguments

__all__ = ["RewardFn", "WeightedRewards", "answers_match", "build_rewards", "correctness_reward",
           "extract_final_answer", "format_reward", "length_penalty", "normalize_text", "parse_number",
           "repetition_penalty", "reward_model"]

RewardFn = Callable[[str, "str | None", list], float]

# ----------------------------------------------------------------------------- format


def format_reward(completion: str, answer: str | None = None, messages: list | None = None, *,
                  require_reasoning: bool = False) -> float:
    """1.0 when the text is exactly one <think>...</think> block followed by a non-empty answer.

    The block must open the message (whitespace aside) and the answer must not contain another
    tag. An empty think block (the "thinking off" form) passes unless `require_reasoning`.
    """
    text = completion.strip()
    if not text.startswith(THINK_START) or text.count(THINK_START) != 1 or text.count(THINK_END) != 1:
        return 0.0
    reasoning, ans = split_reasoning(text)
    if not ans or (require_reasoning and not reasoning):
        return 0.0
    return 1.0


# ----------------------------------------------------------------------------- correctness


def correctness_reward(completion: str, answer: str | None, messages: list | None = None, *,
                       rel_tol: float = 1e-6) -> float:
    """1.0 when the final answer matches the reference (see `answers_match`); 0.0 without one."""
    if answer is None or not str(answer).strip():
        return 0.0
    return 1.0 if answers_match(extract_final_answer(completion), str(answer), rel_tol=rel_tol) else 0.0


# ----------------------------------------------------------------------------- penalties


def length_penalty(completion: str, answer: str | None = None, messages: list | None = None, *,
                   max_chars: int = 512) -> float:
    """0 up to `max_chars` characters, then linearly down to -1 at twice that length (and below)."""
    n = len(completion.strip())
    return -min(1.0, max(0, n - max_chars) / max_chars)


# Units of repetition: an ASCII word/number, or any other single visible character (so Chinese,
# written without spaces, is counted character by character).
_TOKEN_RE = re.compile(r"[A-Za-z0-9_]+|\S")


def repetition_penalty(completion: str, answer: str | None = None, messages: list | None = None, *,
                       n: int = 3) -> float:
    """Minus the fraction of n-grams that repeat an earlier one: 0 for fresh text, -> -1 for loops.

    "a b c a b c" has 4 trigrams, 3 distinct: penalty -(1 - 3/4) = -0.25. Texts with fewer than
    n tokens get 0. Small models under RL love to loop; this term makes looping cost reward.
    """
    text = completion.replace(THINK_START, " ").replace(THINK_END, " ")  # tags are not repetition
    toks = _TOKEN_RE.findall(text)
    grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
    if not grams:
        return 0.0
    return -(1.0 - len(set(grams)) / len(grams))


# ----------------------------------------------------------------------------- reward model hook


def reward_model(scorer: Callable[[list[dict]], float]) -> RewardFn:
    """Wrap a learned reward model as a reward function.

    `scorer` receives the prompt conversation with the completion appended as the assistant
    turn, `messages + [{"role": "assistant", "content": completion}]`, and returns a float (for
    example the scalar head of a classifier). Use it in `WeightedRewards([("rm", reward_model(f),
    1.0), ...])`; it is a Python-API hook, not a CLI name, since the scorer is arbitrary code.
    """

    def fn(completion: str, answer: str | None, messages: list | None) -> float:
        return float(scorer(list(messages or []) + [{"role": "assistant", "content": completion}]))

    return fn


# ----------------------------------------------------------------------------- combining


@dataclass
class WeightedRewards:
    """A weighted sum of named reward terms: total = sum_i w_i * r_i(completion, answer, messages)."""

    terms: Sequence[tuple[str, RewardFn, float]]

    def __call__(self, completion: str, answer: str | None, messages: list | None) -> float:
        return sum(w * fn(completion, answer, messages) for _, fn, w in self.terms)

    def score(self, completions: Sequence[str], answers: Sequence[str | None],
              messages: Sequence[list | None]) -> tuple[list[float], dict[str, list[float]]]:
        """Totals for a batch, and each term's unweighted values (for logging reward curves)."""
        if not len(completions) == len(answers) == len(messages):
            raise ValueError("completions, answers and messages must have the same length")
        parts = {name: [float(fn(c, a, m)) for c, a, m in zip(completions, answers, messages)]
                 for name, fn, _ in self.terms}
        totals = [sum(w * parts[name][i] for name, _, w in self.terms) for i in range(len(completions))]
        return totals, parts


def _builtin(name: str, param: str | None) -> RewardFn:
    """A built-in reward by CLI name, with its optional single parameter."""
    try:
        if name == "format":
            return partial(format_reward, require_reasoning=bool(int(param))) if param else format_reward
        if name in ("correct", "correctness", "accuracy"):
            return partial(correctness_reward, rel_tol=float(param)) if param else correctness_reward
        if name == "length":
            return partial(length_penalty, max_chars=int(param)) if param else length_penalty
        if name == "repetition":
            return partial(repetition_penalty, n=int(param)) if param else repetition_penalty
    except ValueError:
        raise UserError(f"reward {name!r}: bad parameter {param!r}") from None
    raise UserError(f"unknown reward {name!r}; choose from format, correct, length, repetition")


def build_rewards(spec: str) -> WeightedRewards:
    """Parse "name[:weight][@param],..." into a WeightedRewards (weight defaults to 1)."""
    terms = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        head, _, param = item.partition("@")
        name, _, weight = head.partition(":")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise UserError(f"reward {item!r}: weight {weight!r} is not a number") from None
        terms.append((name.strip(), _builtin(name.strip(), param.strip() or None), w))
    if not terms:
        raise UserError(f"no reward terms in {spec!r}; e.g. 'format:0.5,correct:1'")
    return WeightedRewards(terms)


# ----------------------------------------------------------------------------- agent rollouts
# Agent RL scores a whole multi-turn rollout (transcript + why it ended), not one completion.

AGENT_REWARD_NAMES = ("correct", "wellformed", "valid", "unfinished", "repetition")


def agent_reward_terms(messages: list[dict], finish: str | None, generated: Sequence[str],
                       references: Sequence[str], registry: ToolRegistry, *, n: int = 3) -> dict[str, float]:
    """The unweighted reward terms of one agent rollout.

    correct     1 when it ended with an answer whose final answer matches any reference
                (`answers_match`, the evaluation's rule), else 0;
    wellformed  1 unless a reply had tool-call markup that does not parse ("malformed"), else 0;
    valid       the fraction of its tool calls that name a registered tool with arguments its
                schema accepts (0 without calls: with weight > 0 this rewards using the tools);
    unfinished  -1 when it hit the turn limit or the context, else 0;
    repetition  `repetition_penalty` of all its generated text joined (0 down to -1).
    """
    correct = 0.0
    if finish == "answer" and messages and messages[-1].get("role") == "assistant":
        final = extract_final_answer(str(messages[-1].get("content") or ""))
        correct = float(any(answers_match(final, str(r)) for r in references if str(r).strip()))
    calls = [c.get("function", c) for m in messages if m.get("role") == "assistant"
             for c in (m.get("tool_calls") or []) if isinstance(c, dict)]
    ok = 0
    for call in calls:
        tool = registry.tools.get(call.get("name"))
        try:
            ok += tool is not None and bool(validate_arguments(tool, call.get("arguments")) is not None)
        except ToolError:
            pass
    return {"correct": correct, "wellformed": 0.0 if finish == "malformed" else 1.0,
            "valid": ok / len(calls) if calls else 0.0,
            "unfinished": -1.0 if finish in ("turn_limit", "context") else 0.0,
            "repetition": repetition_penalty("\n".join(generated), n=n)}


@dataclass
class AgentRewards:
    """Weighted agent reward terms: total = sum of weight * `agent_reward_terms(...)[name]`."""

    weights: dict[str, float]
    ngram: int = 3

    def score(self, rollouts: Sequence[tuple[list[dict], str | None, Sequence[str]]],
              references: Sequence[Sequence[str]], registry) -> tuple[list[float], dict[str, list[float]]]:
        """Totals for (messages, finish, generated texts) rollouts, and each used term's values."""
        terms = [agent_reward_terms(m, f, g, refs, registry, n=self.ngram)
                 for (m, f, g), refs in zip(rollouts, references, strict=True)]
        parts = {name: [t[name] for t in terms] for name in self.weights}
        totals = [sum(w * t[name] for name, w in self.weights.items()) for t in terms]
        return totals, parts


def build_agent_rewards(spec: str) -> AgentRewards:
    """Parse "name[:weight],..." over AGENT_REWARD_NAMES ("repetition@N" sets the n-gram size)."""
    weights: dict[str, float] = {}
    ngram = 3
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        head, _, param = item.partition("@")
        name, _, weight = (x.strip() for x in head.partition(":"))
        if name not in AGENT_REWARD_NAMES:
            raise UserError(f"unknown agent reward {name!r}; choose from {', '.join(AGENT_REWARD_NAMES)}")
        try:
            weights[name] = float(weight) if weight else 1.0
            ngram = int(param) if param and name == "repetition" else ngram
        except ValueError:
            raise UserError(f"agent reward {item!r}: bad weight or parameter") from None
    if not weights:
        raise UserError(f"no reward terms in {spec!r}; e.g. 'correct:1,valid:0.2,unfinished:0.5'")
    return AgentRewards(weights, ngram)
