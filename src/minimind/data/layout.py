"""The on-disk layout of a prepared data directory, and how one is replaced without losing anything.

Contract:
- Layout of a prepared directory (one shard per input file, `NNNNN` = its position):
    meta.json                 kind, format version, tokenizer hash, vocab size, dtype, counts,
                              sources (path, size, mtime) and `config_hash`; written last
    NNNNN.tokens.bin          all token ids of the shard, back to back (uint16 if the vocabulary
                              has <= 65536 ids, else uint32)
    NNNNN.offsets.bin         int64, docs+1 entries: doc d is tokens[offsets[d]:offsets[d+1]]
    NNNNN.mask.bin            uint8 loss mask aligned with tokens (sft, dpo)
    NNNNN.records.jsonl       rl only: the normalised record (messages, answer, gt, tools) per doc
    NNNNN.records.offsets.bin rl only: int64 byte offsets of those lines
    tokenizer/                copy of the tokenizer files it was made with
  A "doc" is: pretrain one text (no EOS; the loader adds separators when packing); sft one
  conversation; dpo two docs per pair, chosen at 2i and rejected at 2i+1; rl one prompt
  (`chat.render_prompt` ids, thinking on).
- Atomic: everything is written into `.NAME.tmp-PID` beside the target and renamed into place,
  so a killed run never leaves a directory with a meta.json that is incomplete.
- Ours only: a run deletes nothing it did not write. It replaces an existing target only if
  every entry there has one of the names above (`foreign_entries` lists the others); anything
  else (a run directory, notes) is refused with a `UserError` naming it, before any work and
  again just before the swap. The old directory is emptied name by name, never with rmtree, so
  a file that slips in meanwhile survives. Dirs of killed runs are swept the same way.
"""

from __future__ import annotations

import json
import os
import re
import sys
from itertools import chain
from pathlib import Path

from ..errors import UserError
from ..fsutil import pid_alive
from ..tokenizer import TOKENIZER_FILES

# Every top-level name a prepared directory may hold (plus "tokenizer/" with TOKENIZER_FILES).
_OUR_NAME = re.compile(r"meta\.json|\d{5}\.(tokens\.bin|offsets\.bin|mask\.bin|records\.jsonl|records\.offsets\.bin)")


def read_meta(path: str | Path) -> dict | None:
    """meta.json of a prepared directory, or None if `path` is not one."""
    f = Path(path) / "meta.json"
    if not f.is_file():
        return None
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return meta if meta.get("format") == "minimind-prepared" else None


def foreign_entries(root: Path) -> list[str]:
    """Names inside `root` that `prepare` never writes (sorted; "tokenizer/x" for nested ones)."""
    out = []
    for p in sorted(root.iterdir()):
        if p.name == "tokenizer" and p.is_dir() and not p.is_symlink():
            out += [f"tokenizer/{q.name}" for q in sorted(p.iterdir()) if q.name not in TOKENIZER_FILES]
        elif not (_OUR_NAME.fullmatch(p.name) and p.is_file() and not p.is_symlink()):
            out.append(p.name + ("/" if p.is_dir() else ""))
    return out


def check_target(out: Path, meta: dict | None) -> None:
    """UserError unless `out` (with its meta.json `meta`) is absent, empty or only our files."""
    if out.exists() and (not out.is_dir() or (meta is None and any(out.iterdir()))):
        raise UserError(f"{out}: exists and is not a prepared data directory; refusing to overwrite it")
    foreign = foreign_entries(out) if out.is_dir() else []
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise UserError(f"{out}: holds {', '.join(foreign[:3])}{more}, which `data prepare` did not write; "
                        f"refusing to replace it (move those out, or choose another --out)")


def swap_in(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`. The old `out` is moved aside first, so at every instant `out` is the
    complete old result, absent, or the complete new one; then only our files in it are deleted."""
    trash = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        check_target(out, read_meta(out))  # again: files may have appeared during the run
        os.replace(out, trash)
    os.replace(tmp, out)
    if trash.exists() and (left := remove_ours(trash)):
        print(f"warning: kept {trash}: {', '.join(left)} appeared in {out} during the swap", file=sys.stderr)


def remove_ours(root: Path) -> list[str]:
    """Delete our files in `root` and then `root` itself if empty; return what was left (foreign)."""
    for p in root.iterdir():
        if _OUR_NAME.fullmatch(p.name) and p.is_file() and not p.is_symlink():
            p.unlink()
    tok_dir = root / "tokenizer"
    if tok_dir.is_dir() and not tok_dir.is_symlink():
        for name in TOKENIZER_FILES:
            (tok_dir / name).unlink(missing_ok=True)
        if not any(tok_dir.iterdir()):
            tok_dir.rmdir()
    left = foreign_entries(root)
    if not left:
        root.rmdir()
    return left


def remove_stale_temps(out: Path) -> None:
    """Temp and replaced dirs of killed runs (their PID is gone): remove our files in them."""
    for tmp in chain(out.parent.glob(f".{out.name}.tmp-*"), out.parent.glob(f".{out.name}.old-*")):
        pid = tmp.name.rsplit("-", 1)[1]
        if pid.isdigit() and not pid_alive(int(pid)) and tmp.is_dir() and not tmp.is_symlink():
            remove_ours(tmp)
