"""The embedded demo data set: what the quick start trains on, in Chinese and English.

Contract: `write_demo(out_dir)` writes these JSONL files and returns {name: path}:

  pretrain.jsonl / pretrain_eval.jsonl   {"text"}: real prose (news, reviews, documentation), ~8 MB
  sft.jsonl / sft_eval.jsonl             {"conversations": [...]}: identity, real dialogues,
                                         reasoning (reasoning_content), tool calls, reading tasks,
                                         multi-turn with system prompts
  dpo.jsonl / dpo_eval.jsonl             {"chosen": [...], "rejected": [...]}
  rl.jsonl / rl_eval.jsonl               {"conversations": [user, assistant], "answer", "kind"}:
                                         verifiable tasks; the assistant turn is the reference reply

The `*_eval` files are held out: no eval document, dialogue or RL question appears in the
training files, and the shipped tokenizer never saw them, so later stages can measure gains.
The output is a pure function of the shipped sources and fixed seeds: the same bytes every run.
Real text comes from `sources/` (extracted once by build_sources.py; provenance and licences in
README.md); everything else from the seeded generators in tasks.py and conversations.py.
"""

from __future__ import annotations

import gzip
import json
import random
from importlib import resources
from pathlib import Path

from . import conversations as C
from .tasks import Task, make_task

SEED = 1234
EVAL_EVERY = 50          # every 50th source document is held out (2%)
DIALOGUE_EVAL_EVERY = 20
LANGS = ("zh", "en")
# Conversations per language (SFT) or in total (RL, DPO). A few thousand: enough for a tiny model
# to pick up the chat format, its identity and the task formats, small enough to write in seconds.
SFT_COUNTS = {"identity": 300, "reasoning": 800, "multi_turn": 250, "tool_use": 250}
READING_COUNT = 300      # headline / sentiment (zh) and documentation summaries (en) each
RL_COUNT, RL_EVAL_COUNT = 2000, 300
DPO_COUNT, DPO_EVAL_COUNT = 2000, 100


def _read_source(name: str) -> list[dict]:
    path = resources.files(__name__) / "sources" / name
    with gzip.open(path.open("rb"), "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def source_documents() -> list[dict]:
    """The real-text documents {"src", "lang", "text", "split": "train"|"eval"} in a fixed order."""
    docs = _read_source("pretrain_text.jsonl.gz")
    for i, d in enumerate(docs):
        d["split"] = "eval" if i % EVAL_EVERY == 0 else "train"
    return docs


def source_dialogues() -> list[dict]:
    """chatterbot-corpus dialogues {"src", "lang", "turns", "split"}."""
    dialogues = _read_source("dialogues.jsonl.gz")
    for i, d in enumerate(dialogues):
        d["split"] = "eval" if i % DIALOGUE_EVAL_EVERY == 0 else "train"
    return dialogues


def _sft(rng: random.Random, docs: list[dict], dialogues: list[dict], scale: float) -> list[dict]:
    convs: list[list[dict]] = []
    for lang in LANGS:
        for name, build in (("identity", C.identity), ("reasoning", C.reasoning_task),
                            ("multi_turn", C.multi_turn), ("tool_use", C.tool_use)):
            convs += [build(rng, lang) for _ in range(max(1, int(SFT_COUNTS[name] * scale)))]
    convs += [C.dialogue(rng, d["turns"], d["lang"]) for d in dialogues]
    k = max(1, int(READING_COUNT * scale))
    news = [d["text"] for d in docs if d["src"].endswith("peoples-daily-1998-01") and "\n" in d["text"]]
    reviews = [d for d in docs if "/reviews-" in d["src"]]
    en_docs = [d["text"] for d in docs if d["lang"] == "en" and len(d["text"]) > 200]
    convs += [C.headline_task(rng, t) for t in rng.sample(news, min(k, len(news)))]
    convs += [C.sentiment_task(rng, d["text"], d["src"][-3:]) for d in rng.sample(reviews, min(k, len(reviews)))]
    convs += [C.summary_task(rng, t) for t in rng.sample(en_docs, min(k, len(en_docs)))]
    rng.shuffle(convs)
    return [{"conversations": c} for c in convs]


def _rl_record(task: Task) -> dict:
    return {"conversations": [{"role": "user", "content": task.question},
                              {"role": "assistant", "content": task.reply()}],
            "answer": task.answer, "kind": task.kind}


def _rl(rng: random.Random, n: int, exclude: set[str]) -> list[dict]:
    out, seen = [], set(exclude)
    while len(out) < n:
        task = make_task(rng, LANGS[len(out) % 2])
        if task.question not in seen:  # no duplicates, nothing from the held-out set
            seen.add(task.question)
            out.append(_rl_record(task))
    return out


def _dpo(rng: random.Random, n: int, docs: list[dict], dialogues: list[dict]) -> list[dict]:
    reviews = [(d["text"][:300], d["src"][-3:]) for d in docs if "/reviews-" in d["src"]]
    by_lang = {lang: [d for d in dialogues if d["lang"] == lang] for lang in LANGS}
    return [C.dpo_pair(rng, LANGS[i % 2], by_lang[LANGS[i % 2]], reviews) for i in range(n)]


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_demo(out_dir: str | Path) -> dict[str, Path]:
    """Write the demo JSONL files into `out_dir` (created if needed); return {name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs, dialogues = source_documents(), source_dialogues()
    train_docs = [d for d in docs if d["split"] == "train"]
    eval_docs = [d for d in docs if d["split"] == "eval"]
    # Separate generators per file: changing one file's recipe leaves the others' bytes alone.
    rl_eval = _rl(random.Random(SEED + 4), RL_EVAL_COUNT, set())
    eval_questions = {r["conversations"][0]["content"] for r in rl_eval}
    files = {
        "pretrain": [{"text": d["text"]} for d in train_docs],
        "pretrain_eval": [{"text": d["text"]} for d in eval_docs],
        "sft": _sft(random.Random(SEED + 1), train_docs, [d for d in dialogues if d["split"] == "train"], 1.0),
        "sft_eval": _sft(random.Random(SEED + 2), eval_docs, [d for d in dialogues if d["split"] == "eval"], 0.05),
        "dpo": _dpo(random.Random(SEED + 5), DPO_COUNT, train_docs, dialogues),
        "dpo_eval": _dpo(random.Random(SEED + 6), DPO_EVAL_COUNT, eval_docs, dialogues),
        "rl": _rl(random.Random(SEED + 3), RL_COUNT, eval_questions),
        "rl_eval": rl_eval,
    }
    paths = {}
    for name, records in files.items():
        paths[name] = out / f"{name}.jsonl"
        _write_jsonl(paths[name], records)
    return paths
