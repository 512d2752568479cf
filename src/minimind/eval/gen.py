"""Generation tasks with verifiable answers: greedy accuracy and sampled pass@k, thinking on and off.

Contract:
- `read_prompts(path, skip_bad, limit)` reads the RL prompt format (`minimind.data.formats`, kind
  "rl"): {"prompt", "answer"} or {"conversations": [...], "answer"} (a final assistant turn is the
  reference when "answer" is absent). A record without any reference answer is a bad record
  (`file:line: ...`, or counted with --skip-bad).
- `evaluate_gen(engine, prompts, think, pass_k, ...)` renders each prompt with the chat template
  (`chat.render_prompt`, thinking on = an open `<think>`, off = the empty think block), generates
  through the inference engine (batched, KV cache), and judges the text after `</think>` with
  `answers.answers_match`. Result keys: task, n, accuracy (greedy, first mode), and per mode
  `accuracy_think_{on,off}`; with pass_k = k > 0 also `pass@k_think_*` (a prompt passes when any of
  k samples is right) and `sampled_accuracy_think_*` (mean over all samples, an estimate of pass@1);
  `predictions` (greedy, first mode) [{index, answer, output, correct}].
- `generate_texts(engine, prompt_ids, params, progress)` is the shared batched-generation helper.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..chat import render_prompt
from ..data.formats import RecordError, check_payload
from ..data.reading import iter_raw
from ..errors import UserError
from ..infer import SamplingParams
from ..tokenizer import THINK_START
from .answers import answers_match, extract_final_answer

THINK_MODES = {"off": [False], "on": [True], "both": [False, True]}


@dataclass
class Prompts:
    records: list[dict]  # normalised rl records: messages, answer, tools
    files: list[Path] = field(default_factory=list)
    skipped: int = 0


def read_records(path: str | Path, kind: str, skip_bad: bool, limit: int | None,
                 check: Callable[[dict], None]) -> Prompts:
    """Normalised records of `kind` from one data file, each passed through `check` (RecordError)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    out = Prompts([], [path])
    for lineno, payload in iter_raw(path):
        try:
            rec = check_payload(kind, payload)
            rec = check(rec) or rec
        except RecordError as err:
            if not skip_bad:
                raise UserError(f"{path}:{lineno}: {err}") from None
            out.skipped += 1
            continue
        out.records.append(rec)
        if limit is not None and len(out.records) >= limit:
            break
    if not out.records:
        raise UserError(f"{path}: no usable records")
    return out


def _needs_answer(rec: dict) -> None:
    if rec.get("answer") is None or not str(rec["answer"]).strip():
        raise RecordError("no reference answer (give 'answer', or end 'conversations' with an assistant turn)")


def read_prompts(path: str | Path, skip_bad: bool = False, limit: int | None = None) -> Prompts:
    return read_records(path, "rl", skip_bad, limit, _needs_answer)


def generate_texts(engine, prompt_ids: list[list[int]], params: list[SamplingParams],
                   progress: Callable[[int], None] | None = None) -> list[str]:
    """Generated text for each prompt, batched through the engine (finished rows leave at once)."""
    seqs = [engine.new_sequence(p, sp) for p, sp in zip(prompt_ids, params, strict=True)]
    for ev in engine.run(seqs):
        if ev.finished and progress is not None:
            progress(1)
    return [s.text for s in seqs]


def _render(engine, rec: dict, thinking: bool) -> list[int]:
    return render_prompt(engine.tokenizer, rec["messages"], tools=rec.get("tools"), thinking=thinking)


def _judge(text: str, answer: str, thinking: bool) -> bool:
    # With thinking on the prompt supplied "<think>\n"; put it back so the split finds the block.
    completion = THINK_START + "\n" + text if thinking else text
    return answers_match(extract_final_answer(completion), str(answer))


def evaluate_gen(engine, prompts: Prompts, think: str = "off", pass_k: int = 0, max_new_tokens: int = 256,
                 temperature: float = 0.7, top_p: float = 0.9, seed: int = 0,
                 progress: Callable[[int], None] | None = None) -> dict:
    if think not in THINK_MODES:
        raise UserError(f"--think must be one of {', '.join(THINK_MODES)}, got {think!r}")
    if pass_k < 0:
        raise UserError(f"--pass-k must be >= 0, got {pass_k}")
    recs = prompts.records
    result: dict = {"task": "gen", "n": len(recs)}
    for i, thinking in enumerate(THINK_MODES[think]):
        mode = "on" if thinking else "off"
        ids = [_render(engine, r, thinking) for r in recs]
        greedy = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
        texts = generate_texts(engine, ids, [greedy] * len(ids), progress)
        hits = [_judge(t, r["answer"], thinking) for t, r in zip(texts, recs)]
        result[f"accuracy_think_{mode}"] = sum(hits) / len(recs)
        if i == 0:
            result["accuracy"] = result[f"accuracy_think_{mode}"]
            result["predictions"] = [{"index": j, "answer": r["answer"], "output": t, "correct": h}
                                     for j, (r, t, h) in enumerate(zip(recs, texts, hits))]
        if pass_k:
            params = [SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                     seed=seed + j * pass_k + s) for j in range(len(recs)) for s in range(pass_k)]
            samples = generate_texts(engine, [p for p in ids for _ in range(pass_k)], params, progress)
            right = [_judge(t, recs[j // pass_k]["answer"], thinking) for j, t in enumerate(samples)]
            per_prompt = [right[j * pass_k:(j + 1) * pass_k] for j in range(len(recs))]
            result[f"pass@{pass_k}_think_{mode}"] = sum(any(r) for r in per_prompt) / len(recs)
            result[f"sampled_accuracy_think_{mode}"] = sum(right) / len(right)
    result.update(think=think, pass_k=pass_k, max_new_tokens=max_new_tokens)
    return result
