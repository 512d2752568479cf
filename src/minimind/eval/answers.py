"""Matching a generated answer against a reference: numbers by value, short texts by normal form.

Contract: `extract_final_answer(completion)` takes the answer `chat.split_reasoning` finds (the
text after the first `</think>`; a `\\boxed{...}` wins if present); `answers_match(prediction,
reference)` compares numbers by value (with units) and texts case-, width- and
whitespace-insensitively (see its docstring).

This is the one answer matcher of the project: the GRPO correctness reward
(`minimind.train.rewards`) imports it from here, so a model is rewarded in training by exactly the
rule it is scored by in evaluation. It lives on the evaluation side because training may import
evaluation but evaluation never imports training. Pure Python (no torch).
"""

from __future__ import annotations

import re
import unicodedata
from fractions import Fraction

from ..chat import split_reasoning


# A number: optional sign (ASCII or Unicode minus), thousands groups or plain digits, optional
# decimals, optional "/denominator". The lookbehind keeps "x2" or "1.2.3" from yielding numbers,
# while still allowing a number right after a CJK character ("答案是42").
_NUM = r"(?<![0-9A-Za-z.])[-+\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?"
_NUM_RE = re.compile(_NUM)
# A unit right after a number: letters, %, degree/currency signs or CJK characters.
_UNIT_RE = re.compile(r"\s*([A-Za-z%°\u4e00-\u9fff]+)")
_BOXED_RE = re.compile(r"\\boxed\{([^{}]*)\}")
_EDGE_PUNCT = " \t\n\"'`“”‘’.,;:!?。，；：！？()[]{}（）【】*_$"


def parse_number(text: str) -> Fraction | None:
    """Exact value of a number written as an integer, decimal or fraction ("1,200", "-0.5", "3/4")."""
    s = unicodedata.normalize("NFKC", text).strip().replace("\u2212", "-").replace(",", "").replace(" ", "")
    try:
        if "/" in s:
            num, den = s.split("/")
            return Fraction(num) / Fraction(den)  # Fraction("0.5") is exact
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def _number_and_unit(text: str, last: bool) -> tuple[Fraction, str] | None:
    """The first (or last) number in `text` and the unit written right after it ("" if none)."""
    matches = list(_NUM_RE.finditer(text))
    if not matches:
        return None
    m = matches[-1] if last else matches[0]
    value = parse_number(m.group())
    if value is None:
        return None
    unit = _UNIT_RE.match(text, m.end())
    return value, (unit.group(1).lower() if unit else "")


def normalize_text(text: str) -> str:
    """Case-, width- and whitespace-insensitive form of a short answer; edge punctuation dropped."""
    s = unicodedata.normalize("NFKC", text).lower()
    return " ".join(s.split()).strip(_EDGE_PUNCT)


def extract_final_answer(completion: str) -> str:
    """The answer part of a completion: after the first </think>; a \\boxed{...} wins if present."""
    _, answer = split_reasoning(completion)
    boxed = _BOXED_RE.findall(answer)
    return boxed[-1] if boxed else answer.strip()


def answers_match(prediction: str, reference: str, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> bool:
    """Compare an extracted answer with a reference answer.

    Numeric reference (optionally with a unit, "12 km"): the *last* number of the prediction must
    equal it within tolerance (exactly for integers/fractions written exactly). Units: a unit
    the reference lacks is ignored ("12 km" matches "12"); when the reference has one, a
    different unit in the prediction fails ("12 m" vs "12 km") and a missing unit is accepted.
    Text reference: the normalised prediction equals it, or ends with it as a whole word
    ("The capital is Paris." matches "paris").
    """
    ref_text = normalize_text(reference)
    ref_num = _number_and_unit(ref_text, last=False)
    if ref_num is not None and _NUM_RE.fullmatch(ref_text[: len(ref_text) - len(ref_num[1])].strip()):
        pred = _number_and_unit(unicodedata.normalize("NFKC", prediction).lower(), last=True)
        if pred is None:
            return False
        (ref_value, ref_unit), (value, unit) = ref_num, pred
        if ref_unit and unit and unit != ref_unit:
            return False
        if value == ref_value:
            return True
        return abs(float(value) - float(ref_value)) <= max(abs_tol, rel_tol * abs(float(ref_value)))
    pred_text = normalize_text(prediction)
    if not ref_text:
        return False
    if pred_text == ref_text:
        return True
    if pred_text.endswith(ref_text):
        before = pred_text[-len(ref_text) - 1]
        # Whole-word rule for ASCII words; CJK text has no spaces between words, so no rule there.
        return not (before.isascii() and before.isalnum()) or not ref_text[0].isascii()
    return False
