"""Reading data files as raw records, streaming: the layer under `formats.py`'s validation.

Contract:
- Files are JSONL (`.jsonl`, `.json`), gzip-compressed JSONL (`.jsonl.gz`, `.json.gz`) or Parquet
  (`.parquet`, needs the optional `pyarrow`); `file_format` tells them apart by name and
  `check_files` refuses anything else (a folder, a missing file) with a `UserError`.
- `iter_raw(path)` yields (line number, payload) for every non-blank line or row: a JSON line as
  bytes, a Parquet row as a dict. Nothing is ever held whole: a line over `MAX_RECORD_BYTES` comes
  out as `Oversized(size)`, read past in 1 MiB pieces. A UTF-8 byte order mark opening a file is
  ignored. A file that cannot be read (not gzip, not Parquet, corrupt, unreadable) is a
  `UserError` naming it.
"""

from __future__ import annotations

import codecs
import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import UserError

# Largest record (one JSONL line, or the text of one Parquet row) we read. Tokenising takes ~180
# bytes of RAM per byte of text (the Rust encoding's per-token data plus Python int lists), so a
# 4 MiB record costs ~0.75 GB in one worker while a 50 MB line would cost ~9 GB. Real documents
# are far smaller; a bigger one is almost always a whole corpus on one line, or should be split.
MAX_RECORD_BYTES = 4 << 20


@dataclass(frozen=True)
class Oversized:
    """The payload of a record over MAX_RECORD_BYTES: only its size is kept, never its bytes."""

    size: int


# ----------------------------------------------------------------------------------------------
# Raw records: (line number, payload) where payload is a JSON line (bytes) or an already-parsed dict


def file_format(path: str | Path) -> str:
    """'jsonl', 'jsonl.gz' or 'parquet', from the file name."""
    name = Path(path).name.lower()
    if name.endswith((".jsonl.gz", ".json.gz")):
        return "jsonl.gz"
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    raise UserError(f"{path}: unknown data file type (expected .jsonl, .jsonl.gz or .parquet)")


def check_files(paths: list[str | Path]) -> list[Path]:
    """Existing data files with a known format, or a UserError naming the first one that is not."""
    if not paths:
        raise UserError("no data files given")
    out = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            what = ("a prepared data directory (train on it directly)" if (p / "meta.json").is_file()
                    else "a directory (give the data files inside it)")
            raise UserError(f"{p}: is {what}, not a data file")
        if not p.is_file():
            raise UserError(f"{p}: no such data file")
        file_format(p)
        out.append(p)
    return out


def iter_raw(path: str | Path, batch_rows: int = 1024) -> Iterator[tuple[int, bytes | dict | Oversized]]:
    """Yield (line number, payload) for every non-blank line (JSONL) or row (Parquet), streaming.

    A line longer than MAX_RECORD_BYTES comes out as `Oversized` (parse_payload rejects it)."""
    fmt = file_format(path)
    if fmt == "parquet":
        yield from _iter_parquet(path, batch_rows)
        return
    opener = gzip.open if fmt == "jsonl.gz" else open
    try:
        with opener(path, "rb") as f:
            for lineno, line in _bounded_lines(f, MAX_RECORD_BYTES):
                if lineno == 1 and isinstance(line, bytes) and line.startswith(codecs.BOM_UTF8):
                    line = line[len(codecs.BOM_UTF8):]  # Windows editors start UTF-8 files with one
                if isinstance(line, Oversized) or line.strip():
                    yield lineno, line
    except gzip.BadGzipFile as err:
        raise UserError(f"{path}: not a valid gzip file ({err})") from None
    except (EOFError, zlib.error) as err:
        raise UserError(f"{path}: gzip file is truncated or corrupt ({err or 'unexpected end'})") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror or err})") from None


def _bounded_lines(f, limit: int) -> Iterator[tuple[int, bytes | Oversized]]:
    """(line number, line) pairs, never holding more than `limit` + 1 bytes of one line in RAM."""
    lineno = 0
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        lineno += 1
        if len(line) <= limit or line.endswith(b"\n") and len(line) == limit + 1:
            yield lineno, line
            continue
        size = len(line)
        while not line.endswith(b"\n"):  # read past the rest of the line in 1 MiB pieces
            line = f.readline(1 << 20)
            if not line:
                break
            size += len(line)
        yield lineno, Oversized(size)


def _iter_parquet(path: str | Path, batch_rows: int) -> Iterator[tuple[int, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{path}: reading Parquet needs pyarrow: pip install 'minimind[parquet]'") from None
    try:
        pf = pq.ParquetFile(str(path))
    except Exception as err:  # pyarrow raises its own ArrowInvalid etc.
        raise UserError(f"{path}: not a readable Parquet file ({err})") from None
    row = 0
    # iter_batches reads one row group slice at a time: memory is bounded by batch_rows.
    batches = pf.iter_batches(batch_size=batch_rows)
    while True:
        try:
            batch = next(batches, None)
        except Exception as err:  # a corrupt page surfaces only when its batch is read
            raise UserError(f"{path}: Parquet file is corrupt after row {row} ({err})") from None
        if batch is None:
            return
        for rec in batch.to_pylist():
            row += 1
            yield row, rec
