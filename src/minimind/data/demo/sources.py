"""The real text shipped in `sources/`, read back: documents for pretraining, dialogues for SFT.

Contract: `source_documents()` returns {"src", "lang", "text", "split": "train"|"eval"} in the
shipped order; the split was chosen when the file was built (scripts/build_demo_sources.py: every
50th document, kept held out only when it shares no 13-gram with any other document).
`source_dialogues()` returns the chatterbot-corpus dialogues {"src", "lang", "turns", "split"},
every 20th held out. Both read only the packaged files, so they are the same on every machine.
"""

from __future__ import annotations

import gzip
import json
from importlib import resources

DIALOGUE_EVAL_EVERY = 20


def _read_source(name: str) -> list[dict]:
    path = resources.files(__package__) / "sources" / name
    with gzip.open(path.open("rb"), "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def source_documents() -> list[dict]:
    """The real-text documents {"src", "lang", "text", "split"} in a fixed order."""
    return _read_source("pretrain_text.jsonl.gz")


def source_dialogues() -> list[dict]:
    """chatterbot-corpus dialogues {"src", "lang", "turns", "split"}."""
    dialogues = _read_source("dialogues.jsonl.gz")
    for i, d in enumerate(dialogues):
        d["split"] = "eval" if i % DIALOGUE_EVAL_EVERY == 0 else "train"
    return dialogues
