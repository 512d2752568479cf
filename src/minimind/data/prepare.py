"""`data prepare`: tokenise data files into memory-mapped shards, streaming, with several processes.

Contract:
- `prepare(kind, paths, out_dir, tokenizer=None, skip_bad=False, workers=None)` writes a
  *prepared directory* and returns a `PrepareResult`. Memory stays bounded however large the
  input: files are read line by line, cut into chunks of ~1 MB, and at most 2 chunks per worker
  are in flight (an ordered window over `Pool.apply_async`, i.e. `imap` with back-pressure).
  Results are written in input order, so the output does not depend on the number of workers.
- Speed: the time goes into BPE. Pretraining text is encoded a chunk at a time by
  `Tokenizer.encode_flat` (tiktoken's BPE where it provably gives the same ids, see
  `minimind.fast_bpe`; ids go straight into numpy arrays, never a Python int per token), and the
  workers inherit the tokenizer built once by the parent (fork).
- Layout, atomic replacement and the rule that a run deletes nothing it did not write: see
  `data/layout.py`.
- Reuse: if the target holds a meta.json whose `config_hash` (format version, kind, tokenizer
  hash, skip_bad, and every source's resolved path, size and mtime) equals this run's, nothing
  is redone (`PrepareResult.reused` is True). Any change rebuilds and replaces it.
- Bad records raise `UserError("file:line: why")`; with skip_bad they are counted in meta.json
  ("skipped", and the first few reasons in "skipped_examples"). A record the tokenizer or the
  chat renderer cannot take is a bad record too. Input without a single good record is an error.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..chat import render_conversation, render_prompt
from ..errors import UserError
from ..tokenizer import Tokenizer, load_tokenizer
from .layout import TOKENIZER_FILES, check_target, read_meta, remove_ours, remove_stale_temps, swap_in
from .formats import ReadStats, RecordError, check_kind, check_payload
from .reading import check_files, iter_raw

# 2: chat markers inside message text are plain text (earlier shards may hold forged control ids),
# so folders prepared by version 1 are never reused.
FORMAT_VERSION = 2
CHUNK_BYTES = 1 << 20   # ~1 MB of input per task: big enough to amortise IPC, small for memory
CHUNK_ROWS = 4096


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 holds ids 0..65535, i.e. vocabularies up to 65536; larger ones need uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def available_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's core count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def tokenizer_hash(tok) -> str:
    """SHA-256 over the tokenizer files that decide ids and the chat template."""
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        f = Path(tok.path) / name
        if f.is_file():
            h.update(name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def source_info(paths: list[Path]) -> list[dict]:
    out = []
    for p in paths:
        st = p.stat()
        out.append({"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def config_hash(kind: str, tok_hash: str, sources: list[dict], skip_bad: bool) -> str:
    blob = json.dumps({"version": FORMAT_VERSION, "kind": kind, "tokenizer": tok_hash,
                       "sources": sources, "skip_bad": skip_bad}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# ----------------------------------------------------------------------------------------------
# Encoding one chunk of raw records (runs in a worker process, or inline)


@dataclass
class Encoded:
    """The tokens of one chunk: docs back to back, their lengths, masks, errors, RL records."""

    tokens: np.ndarray                       # uint32 [sum(lengths)]
    lengths: np.ndarray                      # int64 [docs]
    mask: np.ndarray | None = None           # uint8 [sum(lengths)] for sft/dpo
    records: list[bytes] = field(default_factory=list)   # rl: one JSON line per doc
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line, why) of bad records
    n_records: int = 0
    n_bytes: int = 0


def encode_items(kind: str, tok, items: list[tuple[int, Any]]) -> Encoded:
    """Validate and tokenise (line, payload) items; bad ones go to `errors` (never dropped)."""
    ids_list: list[list[int]] = []
    masks: list[list[int]] = []
    records: list[bytes] = []
    errors: list[tuple[int, str]] = []
    texts: list[tuple[int, str]] = []
    n_records = 0
    n_bytes = sum(len(p) for _, p in items if isinstance(p, (bytes, str)))
    for lineno, payload in items:
        try:
            ex = check_payload(kind, payload)
            if kind == "sft":
                ids, m = render_conversation(tok, ex["messages"], tools=ex["tools"])
                ids_list.append(ids)
                masks.append(m)
            elif kind == "dpo":
                for side in ("chosen", "rejected"):
                    ids, m = render_conversation(tok, ex[side], tools=ex["tools"])
                    ids_list.append(ids)
                    masks.append(m)
            elif kind == "rl":
                ids_list.append(render_prompt(tok, ex["messages"], tools=ex["tools"]))
                records.append(json.dumps(ex, ensure_ascii=False).encode("utf-8") + b"\n")
            else:
                texts.append((lineno, ex))
        except (RecordError, UserError) as err:  # UserError: the renderer rejected a message
            errors.append((lineno, str(err)))
            continue
        except (TypeError, ValueError) as err:  # the tokenizer refused the text: this record's fault
            errors.append((lineno, f"cannot be tokenised ({type(err).__name__}: {err})"))
            continue
        n_records += 1
    if kind == "pretrain":
        flat, lengths = _encode_texts(tok, texts, errors)
        return Encoded(flat, lengths, None, records, errors, n_records - (len(texts) - len(lengths)), n_bytes)
    lengths = np.fromiter((len(x) for x in ids_list), dtype=np.int64, count=len(ids_list))
    flat = np.fromiter(chain.from_iterable(ids_list), dtype=np.uint32, count=int(lengths.sum()))
    mask = None
    if kind in ("sft", "dpo"):
        mask = np.fromiter(chain.from_iterable(masks), dtype=np.uint8, count=len(flat))
    return Encoded(flat, lengths, mask, records, errors, n_records, n_bytes)


def _encode_texts(tok, texts: list[tuple[int, str]], errors: list[tuple[int, str]]) -> tuple[np.ndarray, np.ndarray]:
    """(ids back to back, lengths) of each (line, text); one the tokenizer refuses goes to `errors`."""
    try:
        # One call for the whole chunk, straight into numpy: pretraining text is the bulk of all
        # data, and once BPE is fast a Python int per token (then fromiter) is a quarter of the time.
        return tok.encode_flat([t for _, t in texts])
    except (TypeError, ValueError):
        pass  # find the culprit(s) one by one below
    out = []
    for lineno, text in texts:
        try:
            out.append(tok.encode_flat([text])[0])
        except (TypeError, ValueError) as err:
            errors.append((lineno, f"cannot be tokenised ({type(err).__name__}: {err})"))
    errors.sort()
    return (np.concatenate(out) if out else np.zeros(0, np.uint32),
            np.fromiter(map(len, out), dtype=np.int64, count=len(out)))


@lru_cache(maxsize=4)
def _worker_tokenizer(path: str):
    return load_tokenizer(path)


def _encode_task(task: tuple[str, str, list]) -> Encoded:
    kind, tok_path, items = task
    return encode_items(kind, _worker_tokenizer(tok_path), items)


def _chunks(path: Path) -> Iterator[list[tuple[int, Any]]]:
    """Raw items of one file cut into chunks of ~CHUNK_BYTES (or CHUNK_ROWS rows)."""
    items: list = []
    size = 0
    for lineno, payload in iter_raw(path):
        items.append((lineno, payload))
        size += len(payload) if isinstance(payload, bytes) else 256
        if size >= CHUNK_BYTES or len(items) >= CHUNK_ROWS:
            yield items
            items, size = [], 0
    if items:
        yield items


@contextmanager
def _quiet_tokenizers_fork():
    # A forked child of a process that already used the Rust thread pool prints a warning and
    # turns its parallelism off; say so up front (workers are one process = one core anyway).
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old


def encode_files(kind: str, files: list[Path], tok, workers: int = 1) -> Iterator[tuple[int, Encoded]]:
    """Yield (file index, Encoded chunk) in input order, encoding with `workers` processes."""
    tasks = ((fi, items) for fi, path in enumerate(files) for items in _chunks(path))
    if workers <= 1:
        for fi, items in tasks:
            yield fi, encode_items(kind, tok, items)
        return
    with _quiet_tokenizers_fork():
        # Load the workers' tokenizer and build its BPE engine here, once: forked workers inherit
        # it from this cache instead of each spending a fraction of a second on it.
        _worker_tokenizer(str(tok.path)).bulk_engine
        pool = mp.get_context().Pool(workers)
    with pool:
        # An ordered window of in-flight tasks. Plain Pool.imap would read the whole input ahead
        # of the workers (its feeder thread never waits), so memory would grow with the file.
        pending: deque = deque()
        for fi, items in tasks:
            pending.append((fi, pool.apply_async(_encode_task, ((kind, str(tok.path), items),))))
            if len(pending) >= 2 * workers:
                fi0, res = pending.popleft()
                yield fi0, res.get()
        while pending:
            fi0, res = pending.popleft()
            yield fi0, res.get()


def checked_chunks(kind: str, files: list[Path], tok, workers: int, skip_bad: bool,
                   stats: ReadStats) -> Iterator[tuple[int, Encoded]]:
    """encode_files, turning each chunk's errors into a `file:line:` UserError or skip counts.

    After the last chunk, no good record at all is a UserError (an empty prepared set only
    fails later, further from its cause)."""
    for fi, enc in encode_files(kind, files, tok, workers):
        for lineno, why in enc.errors:
            if not skip_bad:
                raise UserError(f"{files[fi]}:{lineno}: {why}")
            stats.skip(f"{files[fi]}:{lineno}", why)
        stats.records += enc.n_records
        yield fi, enc
    if stats.records == 0:
        names = ", ".join(str(f) for f in files)
        if stats.skipped:
            raise UserError(f"{names}: all {stats.skipped} {kind} record(s) are bad; first: {stats.examples[0]}")
        raise UserError(f"{names}: no {kind} records (the input is empty)")


# ----------------------------------------------------------------------------------------------
# Writing shards


class ShardWriter:
    """Appends Encoded chunks of one input file to its shard files."""

    def __init__(self, root: Path, index: int, kind: str, dtype: np.dtype):
        self.name = f"{index:05d}"
        self.dtype, self.kind = dtype, kind
        self.f_tokens = open(root / f"{self.name}.tokens.bin", "wb")
        self.f_offsets = open(root / f"{self.name}.offsets.bin", "wb")
        self.f_mask = open(root / f"{self.name}.mask.bin", "wb") if kind in ("sft", "dpo") else None
        self.f_rec = open(root / f"{self.name}.records.jsonl", "wb") if kind == "rl" else None
        self.f_rec_off = open(root / f"{self.name}.records.offsets.bin", "wb") if kind == "rl" else None
        self.docs = self.tokens = self.rec_bytes = 0
        np.zeros(1, np.int64).tofile(self.f_offsets)  # offsets start with 0
        if self.f_rec_off:
            np.zeros(1, np.int64).tofile(self.f_rec_off)

    def add(self, enc: Encoded) -> None:
        enc.tokens.astype(self.dtype).tofile(self.f_tokens)
        (self.tokens + np.cumsum(enc.lengths)).astype(np.int64).tofile(self.f_offsets)
        self.tokens += int(enc.lengths.sum())
        self.docs += len(enc.lengths)
        if self.f_mask is not None:
            enc.mask.tofile(self.f_mask)
        if self.f_rec is not None:
            ends = []
            for line in enc.records:
                self.f_rec.write(line)
                self.rec_bytes += len(line)
                ends.append(self.rec_bytes)
            np.asarray(ends, np.int64).tofile(self.f_rec_off)

    def close(self) -> dict:
        for f in (self.f_tokens, self.f_offsets, self.f_mask, self.f_rec, self.f_rec_off):
            if f is not None:
                f.close()
        return {"name": self.name, "docs": self.docs, "tokens": self.tokens}


@dataclass
class PrepareResult:
    path: Path
    meta: dict
    reused: bool


def prepare(kind: str, paths: list[str | Path], out_dir: str | Path, tokenizer=None, *,
            skip_bad: bool = False, workers: int | None = None,
            log: Callable[[str], None] | None = None) -> PrepareResult:
    """Tokenise `paths` into the prepared directory `out_dir` (see the module docstring)."""
    log = log or (lambda msg: None)
    check_kind(kind)
    files = check_files(paths)
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
    workers = max(1, workers if workers is not None else available_cores())
    out = Path(out_dir)
    out = out.resolve() if out.is_symlink() else out  # replace the real directory, not the link
    sources = source_info(files)
    tok_hash = tokenizer_hash(tok)
    chash = config_hash(kind, tok_hash, sources, skip_bad)
    old = read_meta(out)
    if old is not None and old.get("config_hash") == chash:
        log(f"{out}: up to date with its inputs, reusing it (delete it to force a rebuild)")
        return PrepareResult(out, old, True)
    check_target(out, old)  # before hours of work, and again before the swap
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.is_dir():
        remove_ours(tmp)  # of a dead process that had our PID
    tmp.mkdir()
    t0 = time.time()
    try:
        dtype = token_dtype(tok.vocab_size)
        stats = ReadStats()
        shards = _write_shards(tmp, kind, files, sources, tok, dtype, workers, skip_bad, stats, log)
        (tmp / "tokenizer").mkdir()
        for name in TOKENIZER_FILES:
            if (Path(tok.path) / name).is_file():
                shutil.copyfile(Path(tok.path) / name, tmp / "tokenizer" / name)
        meta = {
            "format": "minimind-prepared", "version": FORMAT_VERSION, "kind": kind,
            "dtype": dtype.name, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id, "pad_id": tok.pad_id,
            "tokenizer_hash": tok_hash, "tokenizer_path": str(Path(tok.path).resolve()),
            "records": stats.records, "docs": sum(s["docs"] for s in shards),
            "tokens": sum(s["tokens"] for s in shards), "skipped": stats.skipped,
            "skipped_examples": stats.examples, "skip_bad": skip_bad, "sources": sources,
            "shards": shards, "config_hash": chash, "seconds": round(time.time() - t0, 3),
            "workers": workers,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        now = read_meta(out)
        if now is not None and now.get("config_hash") == chash:
            return PrepareResult(out, now, True)  # a concurrent run (another rank) finished first
        swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # made by this run: only our files
    return PrepareResult(out, meta, False)


def _write_shards(tmp: Path, kind: str, files: list[Path], sources: list[dict], tok, dtype, workers: int,
                  skip_bad: bool, stats: ReadStats, log: Callable[[str], None]) -> list[dict]:
    """Tokenise every file into its own shard under `tmp` (in parallel, streaming); the shards' summaries."""
    writers = [ShardWriter(tmp, i, kind, dtype) for i in range(len(files))]
    progress, done = _progress(sum(s["size"] for s in sources), log), 0
    for fi, enc in checked_chunks(kind, files, tok, workers, skip_bad, stats):
        writers[fi].add(enc)
        done += enc.n_bytes
        progress(done)
    shards = [w.close() for w in writers]
    for shard, source in zip(shards, sources):
        shard["source"] = source["path"]
    return shards


def _progress(total: int, log: Callable[[str], None]) -> Callable[[int], None]:
    """A throttled progress line on stderr when it is a terminal (log gets nothing per chunk)."""
    state = {"t": 0.0}
    if not sys.stderr.isatty():
        return lambda done: None

    def update(done: int) -> None:
        now = time.time()
        if now - state["t"] > 0.5 or done >= total:
            state["t"] = now
            pct = 100.0 * done / max(total, 1)
            print(f"\rprepare: {done / 1e6:8.1f} / {total / 1e6:.1f} MB ({pct:5.1f}%)", end="",
                  file=sys.stderr, flush=True)
            if done >= total:
                print(file=sys.stderr)

    return update
