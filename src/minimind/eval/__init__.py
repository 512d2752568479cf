"""Evaluation: perplexity, multiple choice (C-Eval / CMMLU / JSONL), generation and tool-call tasks.

One file per task family over one shared scorer, on top of the model and the inference engine;
nothing here imports training or HTTP code.

    scorer.py    log P(continuation | context), batched, lm-eval's tokenisation rules
    ppl.py       loss, perplexity, bits per byte (sliding window, EOS before each document)
    mcq_data.py  reading C-Eval / CMMLU folders and generic JSONL questions
    mcq.py       lm-eval's exact prompts, accuracy (micro, macro, length-normalised, per subject)
    gen.py       greedy accuracy and pass@k on verifiable prompts, thinking on and off
    toolcall.py  well-formed call, right function, right arguments
    passkey.py   passkey retrieval (a key hidden in filler), generated on the fly: accuracy by length and depth
    answers.py   matching a generated answer against the reference
    report.py    tables, --json reports, side-by-side comparison, a run's eval.jsonl
    run.py       loading a checkpoint and running a task or the embedded demo suites

    from minimind.eval import Settings, evaluate
    report = evaluate("runs/quickstart/sft", "ceval", "ceval-exam/", Settings(shots=5))
    report = evaluate("runs/ctx/pretrain", "passkey", None, Settings(passkey_lengths=(256, 1024)))

See docs/evaluation.md.

The names below are imported on first use (PEP 562), so that `minimind.eval.answers`, which the
GRPO rewards import, stays pure Python: importing it does not pull in torch or the data package.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"Scorer": ".scorer", "Settings": ".run", "TASKS": ".run", "evaluate": ".run", "run_demo": ".run",
            "run_passkey": ".run", "run_task": ".run"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
