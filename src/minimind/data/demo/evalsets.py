"""The embedded demo evaluation suites, held out from every demo training file.

Contract: `write_demo_eval(out_dir)` writes, deterministically and in about a second, and returns
{"ppl": file, "mcq": folder, "gen": file, "toolcall": file}:

  ppl.jsonl       {"text"}: the held-out real documents (Chinese and English, alternating), which
                  share no 13-gram with any training document
  mcq/            C-Eval layout: dev/{subject}_dev.csv (5 few-shot rows) and val/{subject}_val.csv,
                  header id,question,A,B,C,D,answer,explanation; subjects in `mcq.SUBJECTS`
  gen.jsonl       {"conversations": [user], "answer", "kind"}: verifiable tasks (the first
                  GEN_COUNT records of rl_eval)
  toolcall.jsonl  {"conversations": [system (tools: JSON string), user, (..., user,) assistant
                  (tool_calls: JSON string of {"name", "arguments"})], "kind", "gt"?}: the last turn's
                  calls are the reference (the first tool-using reply to the last user turn); "gt"
                  (when the built-in tools can answer it) is the final answer the agent loop must
                  reach; multi-digit arithmetic, units, dates, capitals, text length, two calls at
                  once, chains, a second user turn after a finished round trip, and weather in
                  cities the training data never names

`build_suites()` makes the held-out items and `held_out_prompts()` their normalised question texts,
which `write_demo` removes from every training file. `ngrams()` is the 13-gram rule the held-out
text obeys (one token per CJK character or ASCII word).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from . import conversations as C
from .mcq import SUBJECTS, Mcq, make_mcq
from .sources import source_documents
from .tasks import rl_records

SEED = 1234
NGRAM = 13
TOKEN_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[A-Za-z0-9_]+")
DEV_SHOTS = 5
MCQ_COUNTS = {"arithmetic": 100, "units": 80, "vocabulary": 100, "identity": 40}  # val questions
RL_EVAL_COUNT, GEN_COUNT, TOOLCALL_COUNT = 300, 100, 120
EVAL_CITIES = (("杭州", "Hangzhou"), ("西安", "Xi'an"), ("武汉", "Wuhan"), ("南京", "Nanjing"),
               ("Berlin", "Berlin"), ("Sydney", "Sydney"), ("Madrid", "Madrid"), ("Toronto", "Toronto"))
CSV_HEADER = ("id", "question", "A", "B", "C", "D", "answer", "explanation")


def ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    """Word n-grams with each CJK character a word (punctuation and spacing ignored)."""
    toks = [t.lower() for t in TOKEN_RE.findall(text)]
    return {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}


def normalise(text: str) -> str:
    """Case and whitespace folded: the form in which held-out questions are compared."""
    return " ".join(text.lower().split())


@dataclass
class Suites:
    mcq: dict[str, dict[str, list[Mcq]]]   # subject -> {"dev": [...], "val": [...]}
    rl_eval: list[dict]                    # RL format; the gen suite is its first GEN_COUNT records
    toolcall: list[dict]


def _mcq_suite(rng: random.Random) -> dict[str, dict[str, list[Mcq]]]:
    out = {}
    for subject, n_val in MCQ_COUNTS.items():
        items: list[Mcq] = []
        seen: set[str] = set()
        while len(items) < DEV_SHOTS + n_val:
            item = make_mcq(rng, subject, "eval", ("zh", "en")[len(items) % 2])
            if normalise(item.question) not in seen:
                seen.add(normalise(item.question))
                items.append(item)
        out[subject] = {"dev": items[:DEV_SHOTS], "val": items[DEV_SHOTS:]}
    return out


# Each kind of tool case in turn (calc twice: the core skill); languages alternate within a kind.
TOOLCALL_KINDS = ("calc", "unit", "add_days", "days_between", "weekday", "capital", "length", "calc2", "chain",
                  "multi_turn", "weather", "calc")


def _toolcall_case(rng: random.Random, lang: str, kind: str) -> dict:
    """A conversation cut after the first tool-using reply to its last user turn (the reference)."""
    conv, task = C.tool_conversation(rng, lang, cities=EVAL_CITIES, kind=kind)
    last_user = max(i for i, m in enumerate(conv) if m["role"] == "user")
    call = {"role": "assistant", "content": "", "tool_calls": conv[last_user + 1]["tool_calls"]}
    case = {"conversations": C.upstream_shape(conv[:last_user + 1] + [call]), "kind": kind}
    if task is not None and task.answer is not None:
        case["gt"] = [task.answer]
    return case


def _toolcall_suite(rng: random.Random) -> list[dict]:
    cases, seen = [], set()
    while len(cases) < TOOLCALL_COUNT:
        case = _toolcall_case(rng, ("zh", "en")[len(cases) % 2], TOOLCALL_KINDS[len(cases) // 2 % len(TOOLCALL_KINDS)])
        key = json.dumps(case["conversations"][:-1], ensure_ascii=False)
        if key not in seen:
            seen.add(key)
            cases.append(case)
    return cases


def build_suites() -> Suites:
    """The held-out items; separate seeds so each suite's bytes are independent of the others."""
    return Suites(mcq=_mcq_suite(random.Random(SEED + 10)),
                  rl_eval=rl_records(random.Random(SEED + 4), RL_EVAL_COUNT),
                  toolcall=_toolcall_suite(random.Random(SEED + 11)))


def held_out_prompts(suites: Suites) -> set[str]:
    """Normalised question texts that must never appear in training: MCQ stems, RL/gen questions
    and tool-call requests."""
    held = {normalise(m.question) for split in suites.mcq.values() for items in split.values() for m in items}
    held |= {normalise(r["conversations"][0]["content"]) for r in suites.rl_eval}
    held |= {normalise(m["content"]) for c in suites.toolcall for m in c["conversations"] if m["role"] == "user"}
    return held


def _csv_text(items: list[Mcq]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for i, m in enumerate(items):
        writer.writerow([i, m.question, *m.choices, m.answer, m.explanation])
    return buf.getvalue()


def write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def suite_paths(folder: str | Path) -> dict[str, Path]:
    """Where the suites are (or will be) in a folder written by `write_demo_eval` (`write_demo`: its `eval/`)."""
    out = Path(folder)
    return {"ppl": out / "ppl.jsonl", "mcq": out / "mcq", "gen": out / "gen.jsonl", "toolcall": out / "toolcall.jsonl"}


def write_suites(out_dir: str | Path, suites: Suites, ppl_docs: list[dict]) -> dict[str, Path]:
    """Write built suites and the held-out documents (`write_demo` passes the ones it already has)."""
    out = Path(out_dir)
    for split in ("dev", "val"):
        (out / "mcq" / split).mkdir(parents=True, exist_ok=True)
    paths = suite_paths(out)
    write_jsonl(paths["ppl"], [{"text": d["text"]} for d in ppl_docs])
    for subject in SUBJECTS:
        for split, items in suites.mcq[subject].items():
            (out / "mcq" / split / f"{subject}_{split}.csv").write_text(_csv_text(items), encoding="utf-8", newline="")
    gen = [{"conversations": r["conversations"][:1], "answer": r["answer"], "kind": r["kind"]}
           for r in suites.rl_eval[:GEN_COUNT]]
    write_jsonl(paths["gen"], gen)
    write_jsonl(paths["toolcall"], suites.toolcall)
    return paths


def held_out_documents(docs: list[dict]) -> list[dict]:
    """The held-out source documents, languages alternating (zh, en, zh, ...; the rest of the longer
    one at the end), so that the first N (`minimind eval --limit N`) cover both languages."""
    held = [d for d in docs if d["split"] == "eval"]
    by_lang = [[d for d in held if d["lang"] == lang] for lang in sorted({d["lang"] for d in held}, reverse=True)]
    return [d for group in itertools.zip_longest(*by_lang) for d in group if d is not None]


def write_demo_eval(out_dir: str | Path) -> dict[str, Path]:
    """Write the demo eval suites into `out_dir` (created if needed); see the module docstring."""
    return write_suites(out_dir, build_suites(), held_out_documents(source_documents()))
