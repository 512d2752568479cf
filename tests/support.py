"""Small helpers shared by test modules (imported directly: `from support import write_jsonl`)."""

from __future__ import annotations

import json
from pathlib import Path


def write_jsonl(path: Path, records: list) -> Path:
    """One JSON object a line (UTF-8, Chinese kept readable); a str record is written as is."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                            for r in records), encoding="utf-8")
    return path
