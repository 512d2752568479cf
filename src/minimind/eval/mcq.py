"""Multiple choice scored by log-likelihood, with the prompts of lm-eval's `ceval-valid` and `cmmlu`.

Contract:
- `build_prompt(question, shots, family)` is byte for byte the context lm-evaluation-harness 0.4.13
  builds for those tasks (`_default_ceval_yaml`, cmmlu `_default_template_yaml`, plain text, no
  chat template):
      description                      "以下是中国关于{科目}的单项选择题，请选出其中的正确答案。\\n\\n" (C-Eval)
                                       "以下是关于{科目}的单项选择题，请直接给出正确答案的选项。\\n\\n" (CMMLU)
      k times: doc_to_text + " " + gold letter + "\\n\\n"      (the first k rows of dev/{subject})
      doc_to_text = question.strip() + "\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\n答案："
  and each choice is the continuation " A", " B", ...: the choice with the highest log-likelihood
  is the prediction (ties: the first). `accuracy_norm` divides by the choice's length in characters
  (lm-eval's acc_norm; for letters it equals accuracy).
- The generic JSONL layout (`family="mcq"`) uses the same doc_to_text with as many lettered lines as
  choices and no description (`style="letters"`), or with `style="text"` the prompt
  question.strip() + "\\n答案：" and each full choice text as the continuation " {choice}", where
  `accuracy_norm` (length-normalised) is the figure to read. Its k-shot examples are its first k
  questions, which are then not scored.
- `limit`: for C-Eval/CMMLU the first `limit` questions *of each subject* (lm-eval's `--limit`, which
  applies per task, and each subject is a task there); for generic JSONL the first `limit` scored
  questions of the file.
- `evaluate_mcq(scorer, suite, shots, style, progress, limit)` returns the result dict: task, n, accuracy
  (micro: all questions equal; what lm-eval reports for the group), accuracy_macro (subjects
  equal), accuracy_norm, per_subject, predictions [{id, subject, pred, gold, logprobs}] in file order.
"""

from __future__ import annotations

from typing import Callable

from ..errors import UserError
from .mcq_data import LETTERS, Question, Suite
from .scorer import Scorer
from .subjects import description

TARGET_DELIMITER = " "  # lm-eval's default target_delimiter
FEWSHOT_DELIMITER = "\n\n"  # lm-eval's default fewshot_delimiter
ANSWER_CUE = "\n答案："
STYLES = ("letters", "text")


def doc_to_text(q: Question) -> str:
    return q.question.strip() + "".join(f"\n{LETTERS[i]}. {c}" for i, c in enumerate(q.choices)) + ANSWER_CUE


def choice_strings(q: Question, style: str = "letters") -> list[str]:
    """lm-eval's doc_to_choice: the strings the continuations are made of."""
    return list(LETTERS[:len(q.choices)]) if style == "letters" else list(q.choices)


def build_prompt(q: Question, shots: list[Question], family: str, style: str = "letters") -> str:
    """The full context for `q` after the k-shot examples `shots` (see the module docstring)."""
    if style == "text":
        def text(x: Question) -> str:
            return x.question.strip() + ANSWER_CUE
    else:
        text = doc_to_text
    examples = "".join(text(s) + TARGET_DELIMITER + choice_strings(s, style)[s.answer] + FEWSHOT_DELIMITER
                       for s in shots)
    return description(family, q.subject) + examples + text(q)


def _plan(suite: Suite, shots: int) -> list[tuple[Question, list[Question]]]:
    """(question to score, its few-shot examples) in file order."""
    if shots < 0:
        raise UserError(f"--shots must be >= 0, got {shots}")
    if suite.family == "mcq":
        if shots >= len(suite.questions):
            raise UserError(f"--shots {shots} leaves no question to score ({len(suite.questions)} in the file)")
        return [(q, suite.questions[:shots]) for q in suite.questions[shots:]]
    plan = []
    for q in suite.questions:
        pool = suite.fewshot.get(q.subject, [])
        if len(pool) < shots:
            raise UserError(f"subject {q.subject!r}: --shots {shots} needs {shots} dev questions, "
                            f"the dev/ folder has {len(pool)}")
        plan.append((q, pool[:shots]))
    return plan


def limited(plan: list, family: str, limit: int | None) -> list:
    """The first `limit` items of the plan (generic JSONL), or of each subject (C-Eval, CMMLU)."""
    if limit is None:
        return plan
    if family == "mcq":
        return plan[:limit]
    seen: dict[str, int] = {}
    kept = []
    for item in plan:
        subject = item[0].subject if isinstance(item, tuple) else item.subject
        seen[subject] = seen.get(subject, 0) + 1
        if seen[subject] <= limit:
            kept.append(item)
    return kept


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # first of equal maxima, as np.argmax


def evaluate_mcq(scorer: Scorer, suite: Suite, shots: int = 0, style: str = "letters",
                 progress: Callable[[int], None] | None = None, limit: int | None = None) -> dict:
    """Score every question of `suite` and return the result dict (see the module docstring)."""
    if style not in STYLES:
        raise UserError(f"unknown choice style {style!r}; expected one of {', '.join(STYLES)}")
    plan = limited(_plan(suite, shots), suite.family, limit)
    pairs, spans = [], []
    for q, examples in plan:
        conts = [TARGET_DELIMITER + c for c in choice_strings(q, style)]
        spans.append((len(pairs), len(conts)))
        pairs += scorer.encode_pairs(build_prompt(q, examples, suite.family, style), conts)
    lls = [ll for ll, _ in scorer.loglikelihood(pairs, progress)]
    predictions, norm_hits = [], 0
    for (q, _), (start, n) in zip(plan, spans):
        scores = lls[start:start + n]
        lengths = [float(len(c)) for c in choice_strings(q, style)]
        pred = _argmax(scores)
        norm_hits += _argmax([s / max(L, 1.0) for s, L in zip(scores, lengths)]) == q.answer
        predictions.append({"id": q.id, "subject": q.subject, "pred": LETTERS[pred], "gold": LETTERS[q.answer],
                            "logprobs": [round(s, 6) for s in scores]})
    return summarise(suite.family, predictions, norm_hits, shots)


def summarise(task: str, predictions: list[dict], norm_hits: int, shots: int) -> dict:
    per_subject: dict[str, list[int]] = {}
    for p in predictions:
        per_subject.setdefault(p["subject"], []).append(int(p["pred"] == p["gold"]))
    n = len(predictions)
    hits = sum(sum(v) for v in per_subject.values())
    subj_acc = {s: sum(v) / len(v) for s, v in sorted(per_subject.items())}
    return {"task": task, "n": n, "accuracy": hits / n if n else 0.0,
            "accuracy_macro": sum(subj_acc.values()) / len(subj_acc) if subj_acc else 0.0,
            "accuracy_norm": norm_hits / n if n else 0.0, "shots": shots,
            "per_subject": subj_acc, "predictions": predictions}
