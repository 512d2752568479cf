"""Random access to tokenised documents: a prepared directory (memory-mapped) or raw files.

Contract:
- `DocStore` holds the docs of one kind (what a doc is per kind: see `minimind.data.prepare`):
  `len(store)`, `store.lengths` (int64 [docs]), `store.ids(d)` / `store.mask(d)` (numpy views,
  mask None for pretrain/rl), `store.record(d)` (rl: the normalised record dict).
- `DocStore.open(dir, tok)` memory-maps a prepared directory; it checks the kind and that the
  tokenizer is the one the directory was made with (same files, same hash). A damaged directory
  (a shard missing or of the wrong size, meta.json fields missing) is a `UserError` naming it.
- `open_store(kind, data, tok, skip_bad)` takes what `make_loader` takes: a prepared directory,
  or raw data files. Raw files up to `IN_MEMORY_LIMIT` bytes in total are tokenised in this
  process into RAM (quick for demo-sized data, nothing written to disk). Bigger ones are prepared
  once into a cache directory, `$MINIMIND_CACHE/prepared/<kind>-<hash>` (default cache
  `~/.cache/minimind`), and memory-mapped from there: the hash covers the files' paths, sizes and
  mtimes and the tokenizer, so the next run reuses it and a changed file is re-prepared.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .cache import cache_root, cached_chunks
from .formats import ReadStats, check_kind
from .reading import check_files
from .prepare import (Encoded, config_hash, prepare, read_meta, source_info,
                      token_dtype, tokenizer_hash)

IN_MEMORY_LIMIT = 64 << 20  # bytes of raw input tokenised in RAM; above this, prepare into the cache


@dataclass
class Shard:
    tokens: np.ndarray                # [tokens] uint16/uint32
    offsets: np.ndarray               # [docs + 1] int64
    mask: np.ndarray | None = None    # [tokens] uint8
    records: bytes | np.ndarray | None = None   # rl: the JSONL bytes (memory-mapped or in RAM)
    record_offsets: np.ndarray | None = None    # rl: [docs + 1] int64


def _map(path: Path, dtype) -> np.ndarray:
    # np.memmap refuses empty files (a source whose records were all skipped)
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


class DocStore:
    """Docs of one kind across shards; indices are global (shard after shard)."""

    def __init__(self, kind: str, shards: list[Shard], eos_id: int, pad_id: int,
                 skipped: int = 0, source: str = ""):
        self.kind, self.shards = kind, shards
        self.eos_id, self.pad_id = eos_id, pad_id
        self.skipped, self.source = skipped, source
        docs = [len(s.offsets) - 1 for s in shards]
        self.shard_start = np.concatenate([[0], np.cumsum(docs)]).astype(np.int64)
        self.lengths = (np.concatenate([np.diff(s.offsets) for s in shards]) if shards
                        else np.zeros(0, np.int64)).astype(np.int64)

    def __len__(self) -> int:
        return int(self.shard_start[-1])

    def _locate(self, d: int) -> tuple[Shard, int]:
        s = int(np.searchsorted(self.shard_start, d, side="right")) - 1
        return self.shards[s], d - int(self.shard_start[s])

    def ids(self, d: int) -> np.ndarray:
        sh, i = self._locate(d)
        return sh.tokens[sh.offsets[i]:sh.offsets[i + 1]]

    def mask(self, d: int) -> np.ndarray | None:
        sh, i = self._locate(d)
        return None if sh.mask is None else sh.mask[sh.offsets[i]:sh.offsets[i + 1]]

    def record(self, d: int) -> dict:
        sh, i = self._locate(d)
        if sh.records is None:
            raise ValueError(f"{self.kind} data has no records (only rl does)")
        raw = bytes(sh.records[sh.record_offsets[i]:sh.record_offsets[i + 1]])
        return json.loads(raw.decode("utf-8"))

    @classmethod
    def open(cls, path: str | Path, tok=None, kind: str | None = None) -> "DocStore":
        """Memory-map a prepared directory (checking kind and tokenizer when given)."""
        root = Path(path)
        meta = read_meta(root)
        if meta is None:
            raise UserError(f"{root}: not a prepared data directory (no valid meta.json); "
                            f"make one with `minimind data prepare`")
        if kind is not None and meta.get("kind") != kind:
            raise UserError(f"{root}: prepared as {meta.get('kind')!r} data, but {kind!r} data is needed")
        if tok is not None and meta.get("tokenizer_hash") != tokenizer_hash(tok):
            raise UserError(f"{root}: prepared with a different tokenizer ({meta.get('tokenizer_path')}) "
                            f"than {tok.path}; re-run `minimind data prepare` with --tokenizer {tok.path}")
        try:
            shards = cls._open_shards(root, meta)
            return cls(meta["kind"], shards, meta["eos_id"], meta["pad_id"], meta.get("skipped", 0), str(root))
        except (KeyError, TypeError, ValueError, OSError) as err:  # a hand-edited or half-copied folder
            what = f"meta.json lacks {err}" if isinstance(err, KeyError) else f"{type(err).__name__}: {err}"
            raise UserError(f"{root}: damaged prepared data directory ({what}); delete it and prepare "
                            f"again") from None

    @staticmethod
    def _open_shards(root: Path, meta: dict) -> list[Shard]:
        dtype = np.dtype(meta["dtype"])
        shards = []
        for s in meta["shards"]:
            p = root / s["name"]
            sh = Shard(_map(Path(f"{p}.tokens.bin"), dtype), _map(Path(f"{p}.offsets.bin"), np.int64))
            if meta["kind"] in ("sft", "dpo"):
                sh.mask = _map(Path(f"{p}.mask.bin"), np.uint8)
            if meta["kind"] == "rl":
                sh.records = _map(Path(f"{p}.records.jsonl"), np.uint8)
                sh.record_offsets = _map(Path(f"{p}.records.offsets.bin"), np.int64)
            if len(sh.offsets) != s["docs"] + 1 or len(sh.tokens) != s["tokens"]:
                raise ValueError(f"shard {s['name']} does not match meta.json")
            shards.append(sh)
        return shards

    @classmethod
    def from_chunks(cls, kind: str, chunks, dtype: np.dtype, eos_id: int, pad_id: int,
                    skipped: int = 0, source: str = "") -> "DocStore":
        """One in-memory shard from Encoded chunks (the same bytes a prepared shard would hold)."""
        chunks: list[Encoded] = list(chunks)
        tokens = np.concatenate([c.tokens for c in chunks] or [np.zeros(0, np.uint32)]).astype(dtype)
        lengths = np.concatenate([c.lengths for c in chunks] or [np.zeros(0, np.int64)])
        sh = Shard(tokens, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        if kind in ("sft", "dpo"):
            sh.mask = np.concatenate([c.mask for c in chunks] or [np.zeros(0, np.uint8)])
        if kind == "rl":
            lines = [r for c in chunks for r in c.records]
            sh.records = b"".join(lines)
            sh.record_offsets = np.concatenate([[0], np.cumsum([len(x) for x in lines])]).astype(np.int64)
        return cls(kind, [sh], eos_id, pad_id, skipped, source)


def open_store(kind: str, data, tok, skip_bad: bool = False) -> DocStore:
    """A DocStore from a prepared directory or raw files (see the module docstring)."""
    check_kind(kind)
    items = [data] if isinstance(data, (str, Path)) else list(data)
    if not items:
        raise UserError("no data given")
    dirs = [Path(p) for p in items if Path(p).is_dir()]
    if dirs:
        if len(items) != 1:
            raise UserError("give either one prepared directory or raw data files, not a mix or several directories")
        return DocStore.open(dirs[0], tok, kind)
    files = check_files(items)
    sources = source_info(files)
    total = sum(s["size"] for s in sources)
    if total > IN_MEMORY_LIMIT:
        out = cache_root() / "prepared" / f"{kind}-{config_hash(kind, tokenizer_hash(tok), sources, skip_bad)[:16]}"
        print(f"data: {total / 1e6:.0f} MB of raw {kind} data; preparing it once into {out} "
              f"(next runs reuse it)", file=sys.stderr)
        res = prepare(kind, files, out, tok, skip_bad=skip_bad)
        _report_skipped(res.meta.get("skipped", 0), res.meta.get("skipped_examples", []))
        return DocStore.open(res.path, tok, kind)
    stats = ReadStats()
    chunks = cached_chunks(kind, files, tok, skip_bad, stats)
    _report_skipped(stats.skipped, stats.examples)
    return DocStore.from_chunks(kind, chunks, token_dtype(tok.vocab_size), tok.eos_id, tok.pad_id,
                                stats.skipped, ", ".join(str(f) for f in files))


def _report_skipped(n: int, examples: list[str]) -> None:
    # --skip-bad must never hide data loss: say how much was skipped and show why.
    if n:
        print(f"data: skipped {n} bad record(s), e.g. {examples[0]}", file=sys.stderr)
