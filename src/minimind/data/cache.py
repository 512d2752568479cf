"""A disk cache of tokenised raw data files, so a second run on the same JSONL does not re-tokenise it.

Contract:
- `cached_chunks(kind, files, tok, skip_bad, stats)` returns what
  `[enc for _, enc in prepare.checked_chunks(kind, files, tok, 1, skip_bad, stats)]` returns (as one
  `Encoded` on a cache hit: the same tokens, document lengths, masks and RL records, concatenated)
  and fills `stats` the same way (records, skipped, the first skip reasons). Bad input raises the
  same `UserError` as before and writes nothing.
- Where: `$MINIMIND_CACHE/tokens/<kind>-<key>.npz` (`cache_root()`: default `~/.cache/minimind`, the
  folder `data.store` also prepares big raw inputs into; this module owns that convention). A user cache, not the run directory, because
  the same data file feeds many runs (quickstart, recipe phases, the held-out split of every run).
  Deleting the folder is always safe. The newest `KEEP` entries are kept; older ones are removed.
- Key: SHA-256 over the cache format, `prepare.FORMAT_VERSION`, the kind, `skip_bad`, the tokenizer
  hash (its files' bytes) and, for every input file in order, its resolved path and the SHA-256 of
  its *content*. So a changed file or tokenizer misses (and is re-tokenised), while a rewritten file
  with the same bytes still hits. Hashing costs one read of the input (well under a second for the
  sizes `data.store` tokenises in RAM).
- Safety: an entry is written to a temporary file in the same folder and renamed into place
  (`os.replace`), so readers see a whole entry or none, and concurrent writers of the same key each
  install a complete one. An unreadable or damaged entry is a miss (re-tokenised, replaced); a cache
  folder that cannot be written is a one-line note on stderr, and the run goes on uncached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..tokenizer import Tokenizer
from .formats import ReadStats
from .prepare import FORMAT_VERSION, Encoded, checked_chunks, token_dtype, tokenizer_hash

CACHE_VERSION = 1   # bump when the entry layout below changes
KEEP = 32           # entries kept; the least recently used beyond this are deleted
_HASH_BLOCK = 1 << 20


def cache_root() -> Path:
    """minimind's cache folder: $MINIMIND_CACHE, default ~/.cache/minimind (`data.store` prepares big raw inputs
    under it too)."""
    env = os.environ.get("MINIMIND_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "minimind"


def cache_dir() -> Path:
    return cache_root() / "tokens"


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def cache_key(kind: str, files: list[Path], tok: Tokenizer, skip_bad: bool) -> str:
    """The entry's name: changes whenever the files' bytes, their paths or the tokenizer change."""
    blob = json.dumps({"cache": CACHE_VERSION, "format": FORMAT_VERSION, "kind": kind, "skip_bad": skip_bad,
                       "tokenizer": tokenizer_hash(tok),
                       "files": [[str(Path(f).resolve()), _file_digest(Path(f))] for f in files]}, sort_keys=True)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:32]}"


def _pack(chunks: list[Encoded], stats: ReadStats, dtype: np.dtype) -> dict[str, np.ndarray]:
    """One entry's arrays: the chunks concatenated (tokens in the vocabulary's narrowest dtype, as a prepared
    shard stores them), plus the stats as a JSON byte string."""
    tokens = np.concatenate([c.tokens for c in chunks] or [np.zeros(0, np.uint32)])
    arrays = {"tokens": tokens.astype(dtype, copy=False),
              "lengths": np.concatenate([c.lengths for c in chunks] or [np.zeros(0, np.int64)]).astype(np.int64)}
    if chunks and chunks[0].mask is not None:
        arrays["mask"] = np.concatenate([c.mask for c in chunks])
    records = [r for c in chunks for r in c.records]
    if records:
        arrays["records"] = np.frombuffer(b"".join(records), dtype=np.uint8)
        arrays["record_lengths"] = np.array([len(r) for r in records], dtype=np.int64)
    meta = {"records": stats.records, "skipped": stats.skipped, "examples": stats.examples}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return arrays


def _unpack(entry: dict[str, np.ndarray], stats: ReadStats) -> list[Encoded]:
    enc = Encoded(tokens=entry["tokens"].astype(np.uint32), lengths=entry["lengths"], mask=entry.get("mask"))
    if "records" in entry:
        data = entry["records"].tobytes()
        ends = np.cumsum(entry["record_lengths"]).tolist()
        enc.records = [data[a:b] for a, b in zip([0, *ends[:-1]], ends)]
    meta = json.loads(entry["meta"].tobytes().decode())
    stats.records, stats.skipped, stats.examples = meta["records"], meta["skipped"], list(meta["examples"])
    enc.n_records = meta["records"]
    return [enc]


def _load(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            entry = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # missing or damaged: a miss
    with contextlib.suppress(OSError):  # a read-only cache still serves hits
        os.utime(path)  # mark as recently used (pruning keeps the newest)
    return entry if {"tokens", "lengths", "meta"} <= entry.keys() else None


def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write beside the target, then rename: readers never see half an entry."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        print(f"note: the tokenised data was not cached ({err}); the next run tokenises it again", file=sys.stderr)
        return
    _prune(path.parent)


def _prune(folder: Path) -> None:
    with contextlib.suppress(OSError):  # another process may be pruning too: a vanished entry is fine
        entries = sorted(folder.glob("*.npz"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for old in entries[KEEP:]:
            old.unlink(missing_ok=True)


def cached_chunks(kind: str, files: list[Path], tok: Tokenizer, skip_bad: bool, stats: ReadStats) -> list[Encoded]:
    """The Encoded chunks of `files`, from the cache when an entry for exactly these bytes exists."""
    path = cache_dir() / f"{cache_key(kind, files, tok, skip_bad)}.npz"
    entry = _load(path)
    if entry is not None:
        return _unpack(entry, stats)
    chunks = [enc for _, enc in checked_chunks(kind, files, tok, 1, skip_bad, stats)]
    _save(path, _pack(chunks, stats, token_dtype(tok.vocab_size)))
    return chunks
