"""Rule-based rewards on hand-written completions."""

from fractions import Fraction

import pytest

from minimind.errors import UserError
from minimind.train.rewards import (
    WeightedRewards,
    answers_match,
    build_rewards,
    correctness_reward,
    extract_final_answer,
    format_reward,
    length_penalty,
    parse_number,
    repetition_penalty,
    reward_model,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>\n3+4=7\n</think>\n\n7", 1.0),
        ("  <think>r</think>The answer is 7.\n", 1.0),
        ("<think>\n\n</think>\n\n7", 1.0),  # thinking-off form is well formed
        ("<think>r</think>\n\n   ", 0.0),  # empty answer
        ("<think>r</think>7</think>", 0.0),  # two closing tags
        ("<think>a</think><think>b</think>7", 0.0),  # two blocks
        ("7 <think>r</think> 7", 0.0),  # block does not open the message
        ("<think>never closed 7", 0.0),
        ("7", 0.0),
    ],
)
def test_format_reward(text, expected):
    assert format_reward(text, None, []) == expected


def test_format_reward_can_require_reasoning():
    assert format_reward("<think>\n\n</think>7", None, [], require_reasoning=True) == 0.0
    assert format_reward("<think>7 = 3+4</think>7", None, [], require_reasoning=True) == 1.0


def test_parse_number():
    assert parse_number("1,200") == 1200
    assert parse_number("-0.5") == Fraction(-1, 2)
    assert parse_number("3/4") == Fraction(3, 4)
    assert parse_number("\u22127") == -7  # Unicode minus
    assert parse_number("１２") == 12  # full-width digits
    assert parse_number("1/0") is None
    assert parse_number("abc") is None


def test_extract_final_answer():
    assert extract_final_answer("<think>2+2 is 5? no</think>\n\n4") == "4"
    assert extract_final_answer("no tags, 4") == "no tags, 4"
    assert extract_final_answer("<think>x</think>so \\boxed{12} km, check 13") == "12"


@pytest.mark.parametrize(
    ("pred", "ref", "ok"),
    [
        ("7", "7", True),
        ("3 + 4 = 7", "7", True),  # last number wins
        ("7 apples, not 8", "7", False),
        ("The result is 7.0", "7", True),
        ("0.75", "3/4", True),  # fraction vs decimal, exact
        ("3/4", "0.75", True),
        ("1,200", "1200", True),
        ("-3", "-3", True),
        ("5 - 3", "-3", False),  # a minus between numbers is an operator, not a sign
        ("12 km", "12", True),  # unit the reference lacks is ignored
        ("12", "12 km", True),  # missing unit accepted
        ("12 KM", "12 km", True),
        ("12 m", "12 km", False),  # different unit fails
        ("答案是42", "42", True),  # number right after CJK text
        ("共12千米", "12千米", True),
        ("0.3333333", "1/3", True),  # within relative tolerance 1e-6
        ("0.333", "1/3", False),
        ("no number here", "7", False),
        ("The capital is Paris.", "paris", True),
        ("Comparis", "paris", False),  # not a whole word
        ("首都是北京。", "北京", True),
        ("Paris", "Route 66", False),  # reference with a number inside text is a text answer
        ("route   66", "Route 66", True),
    ],
)
def test_answers_match(pred, ref, ok):
    assert answers_match(pred, ref) is ok


def test_correctness_reward_uses_the_answer_after_think():
    good = "<think>\n15 minus 8 is 7, or is it 6?\n</think>\n\n7"
    assert correctness_reward(good, "7", []) == 1.0
    # The number in the reasoning does not count: only the answer part is read.
    assert correctness_reward("<think>it is 7</think>\n\nI am not sure", "7", []) == 0.0
    assert correctness_reward(good, None, []) == 0.0  # nothing to verify against
    assert correctness_reward(good, "  ", []) == 0.0


def test_length_penalty():
    assert length_penalty("x" * 100, None, [], max_chars=100) == 0.0
    assert length_penalty("x" * 150, None, [], max_chars=100) == pytest.approx(-0.5)
    assert length_penalty("x" * 999, None, [], max_chars=100) == -1.0
    assert length_penalty("  short  ", None, []) == 0.0


def test_repetition_penalty():
    assert repetition_penalty("the cat sat on the mat", None, []) == 0.0
    # 4 trigrams, 3 distinct -> -(1 - 3/4)
    assert repetition_penalty("a b c a b c", None, []) == pytest.approx(-0.25)
    # a 1-token loop: 8 bigrams of "ha ha", 1 distinct -> -(1 - 1/8)
    assert repetition_penalty("ha " * 9, None, [], n=2) == pytest.approx(-7 / 8)
    # Chinese counts per character: 好好好好 has 2 trigrams, 1 distinct
    assert repetition_penalty("好好好好", None, []) == pytest.approx(-0.5)
    assert repetition_penalty("a b", None, []) == 0.0


def test_reward_model_hook_sees_the_conversation_with_the_reply():
    seen = []

    def scorer(msgs):
        seen.append(msgs)
        return len(msgs[-1]["content"])

    fn = reward_model(scorer)
    prompt = [{"role": "user", "content": "hi"}]
    assert fn("hello", None, prompt) == 5.0
    assert seen[0] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert prompt == [{"role": "user", "content": "hi"}]  # the prompt is not mutated


def test_weighted_rewards_and_spec():
    rewards = build_rewards("format:0.5, correct:2, length:1@10, repetition:1@2")
    assert [t[0] for t in rewards.terms] == ["format", "correct", "length", "repetition"]
    good = "<think>1</think>7"  # 17 chars: length -0.7
    bad = "7 7 7 7"  # no format, correct, 7 chars, bigram repeats 2/3 of the time
    totals, parts = rewards.score([good, bad], ["7", "7"], [[], []])
    assert parts["format"] == [1.0, 0.0]
    assert parts["correct"] == [1.0, 1.0]
    assert parts["length"] == pytest.approx([-0.7, 0.0])
    assert parts["repetition"] == pytest.approx([0.0, -2 / 3])
    assert totals == pytest.approx([0.5 + 2 - 0.7, 2 - 2 / 3])
    assert rewards(good, "7", []) == pytest.approx(totals[0])
    custom = WeightedRewards([("len", lambda c, a, m: len(c), 0.5)])
    assert custom("abcd", None, []) == 2.0


@pytest.mark.parametrize(
    ("spec", "match"),
    [("fromat:1", "unknown reward 'fromat'"), ("format:x", "weight 'x'"), ("length@ten", "bad parameter"), (" , ", "no reward")],
)
def test_build_rewards_errors(spec, match):
    with pytest.raises(UserError, match=match):
        build_rewards(spec)


def test_one_answer_matcher_shared_with_evaluation_and_torch_free():
    """The GRPO reward and the evaluation score use the same matcher object, and importing it
    pulls in neither torch, nor the evaluation runner, nor the training package."""
    import subprocess
    import sys

    import minimind.eval.answers as answers
    import minimind.train.rewards as rewards

    for name in ("parse_number", "normalize_text", "extract_final_answer", "answers_match"):
        assert getattr(rewards, name) is getattr(answers, name)
    code = ("import sys, minimind.eval.answers; "
            "print('torch' in sys.modules, 'minimind.eval.run' in sys.modules, 'minimind.train' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "False"]
