"""The embedded demo data set: what the quick start trains on, in Chinese and English.

Contract: `write_demo(out_dir)` writes these JSONL files and returns {name: path}:

  pretrain.jsonl / pretrain_eval.jsonl   {"text"}: real prose (classical Chinese, Python/NumPy
                                         documentation) plus generated practice text, ~8 MB
  sft.jsonl / sft_eval.jsonl             {"conversations": [...]}: identity, real dialogues,
                                         reasoning (reasoning_content), tool calls, reading tasks,
                                         translation, multiple-choice practice, multi-turn
  dpo.jsonl / dpo_eval.jsonl             {"chosen": [...], "rejected": [...]}
  rl.jsonl / rl_eval.jsonl               {"conversations": [user, assistant], "answer", "kind"}:
                                         verifiable tasks; the assistant turn is the reference reply
  agent_rl.jsonl                         {"conversations": [system with "tools" (JSON string), user],
                                         "gt": [answer], "kind"}: agent-RL prompts that need a
                                         built-in tool (the held-out ones: eval/toolcall.jsonl's "gt")
  eval/                                  the demo eval suites (`write_demo_eval`, evalsets.py):
                                         ppl.jsonl, mcq/ (C-Eval layout), gen.jsonl, toolcall.jsonl

The `*_eval` files and `eval/` are held out: no held-out document, dialogue, question or tool
request appears in the training files (write_demo removes any training item that asks one), and
the shipped tokenizer never saw them, so later stages can measure gains. Tool-use conversations
come in both wire shapes, alternating: upstream's (`tools` / `tool_calls` as JSON strings, calls
as {"name", "arguments"}) and OpenAI's (objects, call ids, arguments as a JSON string). The output is a pure
function of the shipped sources and fixed seeds: the same bytes every run. Real text comes from
`sources/` (extracted once by scripts/build_demo_sources.py; provenance and licences in README.md);
everything else from the seeded generators in tasks.py, conversations.py and mcq.py.
"""

from __future__ import annotations

import random
from pathlib import Path

from . import conversations as C
from . import mcq as Q
from .evalsets import (build_suites, held_out_documents, held_out_prompts, normalise, suite_paths, write_demo_eval,
                       write_jsonl, write_suites)
from .sources import source_dialogues, source_documents
from .tasks import rl_records

__all__ = ["write_demo", "write_demo_eval", "suite_paths", "source_documents", "source_dialogues"]

SEED = 1234
LANGS = ("zh", "en")
# Conversations per language (SFT) or in total (RL, DPO). A few thousand: enough for a tiny model
# to pick up the chat format, its identity and the task formats, small enough to write in seconds.
SFT_COUNTS = {"identity": 300, "reasoning": 800, "multi_turn": 250, "tool_use": 600, "translation": 250, "mcq": 200}
READING_COUNT = 300      # poem titles and classical sources (zh), documentation summaries (en), each
PRACTICE_DOCS = 150      # pretraining documents of answered multiple-choice questions, per subject
PRACTICE_PER_DOC = 5
RL_COUNT = 2000
AGENT_RL_COUNT = 2000
DPO_COUNT, DPO_EVAL_COUNT = 2000, 100
POEM_SOURCES = ("chinese-poetry/tangshisanbaishou", "chinese-poetry/quantangshi/tang")
PROSE_SOURCES = tuple(f"chinese-poetry/{s}" for s in ("lunyu", "mengzi", "daxue", "zhongyong", "guwenguanzhi",
                                                        "youmengying", "youxueqionglin", "zengguangxianwen"))


def _poems(docs: list[dict]) -> list[str]:
    """Tang poems "title\\nauthor\\nlines" out of the grouped documents."""
    return [p for d in docs if d["src"] in POEM_SOURCES for p in d["text"].split("\n\n") if p.count("\n") >= 2]


def _passages(docs: list[dict]) -> list[tuple[str, str]]:
    """(passage, work) from the prose documents, whose first line is "work·chapter"."""
    out = []
    for d in docs:
        if d["src"] in PROSE_SOURCES:
            head, _, body = d["text"].partition("\n")
            out.append((body, head.split("·")[0]))
    return out


def _asks_held_out(conv: list[dict], held: set[str]) -> bool:
    return any(m["role"] == "user" and normalise(m["content"]) in held for m in conv)


def _practice(rng: random.Random, n: int, held: set[str]) -> dict[str, list[Q.Mcq]]:
    """n training multiple-choice items per subject, none with a held-out stem."""
    out: dict[str, list[Q.Mcq]] = {s: [] for s in Q.SUBJECTS}
    for subject, items in out.items():
        while len(items) < n:
            item = Q.make_mcq(rng, subject, "train")
            if normalise(item.question) not in held:
                items.append(item)
    return out


def _tool_use(rng: random.Random, lang: str) -> list[dict]:
    """A tool-use conversation in one of the two wire shapes (upstream's JSON strings or OpenAI's)."""
    conv = C.tool_use(rng, lang)
    return C.upstream_shape(conv) if rng.random() < 0.5 else C.openai_shape(conv)


def _agent_rl(rng: random.Random, n: int, held: set[str]) -> list[dict]:
    """`n` agent-RL prompts, languages alternating; no repeated and no held-out question."""
    out, seen = [], set()
    while len(out) < n:
        rec = C.agent_record(rng, LANGS[len(out) % 2])
        q = normalise(rec["conversations"][-1]["content"])
        if q not in seen and q not in held:
            seen.add(q)
            out.append(rec)
    return out


def _sft(rng: random.Random, docs: list[dict], dialogues: list[dict], scale: float, held: set[str]) -> list[dict]:
    convs: list[list[dict]] = []
    builders = {"identity": C.identity, "reasoning": C.reasoning_task, "multi_turn": C.multi_turn,
                "tool_use": _tool_use, "translation": Q.translation_conversation}
    for lang in LANGS:
        for name, build in builders.items():
            convs += [build(rng, lang) for _ in range(max(1, int(SFT_COUNTS[name] * scale)))]
    k_mcq = max(1, int(SFT_COUNTS["mcq"] * scale)) * len(LANGS)
    convs += [Q.practice_conversation(m) for items in _practice(rng, k_mcq // 4 + 1, held).values() for m in items]
    convs += [C.dialogue(rng, d["turns"], d["lang"]) for d in dialogues]
    k = max(1, int(READING_COUNT * scale))
    poems, passages = _poems(docs), _passages(docs)
    en_docs = [d["text"] for d in docs if d["lang"] == "en" and len(d["text"]) > 200]
    convs += [C.poem_title_task(rng, p) for p in rng.sample(poems, min(k, len(poems)))]
    convs += [C.source_task(rng, *p) for p in rng.sample(passages, min(k, len(passages)))]
    convs += [C.summary_task(rng, t) for t in rng.sample(en_docs, min(k, len(en_docs)))]
    rng.shuffle(convs)
    return [{"conversations": c} for c in convs if not _asks_held_out(c, held)]


def _pretrain(rng: random.Random, docs: list[dict], held: set[str]) -> list[dict]:
    """Real documents plus a glossary and answered multiple-choice practice, shuffled together."""
    texts = [d["text"] for d in docs] + [Q.glossary_document()]
    practice = _practice(rng, PRACTICE_DOCS * PRACTICE_PER_DOC, held)
    for subject, items in practice.items():
        chunks = [items[i:i + PRACTICE_PER_DOC] for i in range(0, len(items), PRACTICE_PER_DOC)]
        texts += [Q.practice_document(subject, chunk, chinese_name=j % 2 == 0) for j, chunk in enumerate(chunks)]
    rng.shuffle(texts)
    return [{"text": t} for t in texts]


def _dpo(rng: random.Random, n: int, docs: list[dict], dialogues: list[dict], held: set[str]) -> list[dict]:
    passages = [(p[:300], book) for p, book in _passages(docs)]
    by_lang = {lang: [d for d in dialogues if d["lang"] == lang] for lang in LANGS}
    out = []
    while len(out) < n:
        lang = LANGS[len(out) % 2]
        pair = C.dpo_pair(rng, lang, by_lang[lang], passages)
        if not _asks_held_out(pair["chosen"], held):
            out.append(pair)
    return out


def write_demo(out_dir: str | Path) -> dict[str, Path]:
    """Write the demo JSONL files into `out_dir` and the eval suites into `out_dir/eval/`;
    return {name: path} with "eval" naming the suites' folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs, dialogues = source_documents(), source_dialogues()
    train_docs = [d for d in docs if d["split"] == "train"]
    eval_docs = [d for d in docs if d["split"] == "eval"]
    held_docs = held_out_documents(docs)
    suites = build_suites()
    held = held_out_prompts(suites)
    # Separate generators per file: changing one file's recipe leaves the others' bytes alone.
    files = {
        "pretrain": _pretrain(random.Random(SEED + 7), train_docs, held),
        "pretrain_eval": [{"text": d["text"]} for d in held_docs],
        "sft": _sft(random.Random(SEED + 1), train_docs, [d for d in dialogues if d["split"] == "train"], 1.0, held),
        "sft_eval": _sft(random.Random(SEED + 2), eval_docs, [d for d in dialogues if d["split"] == "eval"], 0.05,
                         set()),
        "dpo": _dpo(random.Random(SEED + 5), DPO_COUNT, train_docs, dialogues, held),
        "dpo_eval": _dpo(random.Random(SEED + 6), DPO_EVAL_COUNT, eval_docs, dialogues, set()),
        "rl": rl_records(random.Random(SEED + 3), RL_COUNT, lambda q: normalise(q) in held),
        "rl_eval": suites.rl_eval,
        "agent_rl": _agent_rl(random.Random(SEED + 8), AGENT_RL_COUNT, held),
    }
    paths = {}
    for name, records in files.items():
        paths[name] = out / f"{name}.jsonl"
        write_jsonl(paths[name], records)
    write_suites(out / "eval", suites, held_docs)
    paths["eval"] = out / "eval"
    return paths
