"""Data cleaning: normalise, filter, deduplicate (exact and MinHash) and mix several sources.

Contract:
- `clean(paths, out, config, weights=None) -> CleanReport` streams every record of every source
  through the steps below, in this order, and writes the survivors as one JSONL file (atomically):
    1. normalise  Unicode NFKC (full-width letters/digits -> ASCII, ligatures split, ...) except
                  that the full-width punctuation of Chinese prose (，！？：；（）～…) is kept:
                  strict NFKC would turn 你好，世界 into 你好,世界 and teach a model Latin commas
                  in Chinese (`unicode_form="NFKC-strict"` does exactly that). Whitespace: CRLF
                  -> LF, control and zero-width characters removed, runs of spaces/tabs -> one
                  space, trailing spaces and 3+ blank lines trimmed. Changes text, removes nothing.
    2. too_short / too_long   fewer than `min_chars` (or more than `max_chars`) characters.
    3. repetitive the share of repeated character 10-grams exceeds `max_repetition`.
    4. low_letters letters (any script: `str.isalpha`, so CJK counts) are under `min_letter_ratio`
                  of the non-space characters.
    5. exact_dup  the normalised text was already seen (a 16-byte BLAKE2 digest per document).
    6. near_dup   MinHash over character n-gram shingles (works for Chinese, which has no spaces)
                  finds an earlier document with estimated Jaccard >= `minhash_threshold`
                  (datasketch MinHashLSH proposes candidates, their signatures confirm).
                  Dedup is global across sources, first one wins. Memory: the digest set and
                  ~2.5 KB of LSH index + signature per kept document.
    7. mix        with `weights`, source i gets share w_i / sum(w) of the output, whose size is the
                  number of surviving documents; a source below its share is repeated, one above
                  it is subsampled evenly. Sources are interleaved deterministically (each next
                  document comes from the source furthest behind its share), so every prefix of
                  the output is already mixed in the right proportions. No randomness.
- Records may be in any shape of `minimind.data.formats` ({"text"}, conversations, DPO pairs, RL
  prompts): the strings inside (text, message contents, reasoning) are normalised in place and
  their concatenation is what the filters and dedup look at. Fields we do not know are kept
  (a value JSON cannot hold, such as a Parquet timestamp, as its text).
- A record without any text, or a line that is not JSON (or over `reading.MAX_RECORD_BYTES`, or
  with a lone surrogate), is an error naming `file:line`, or with `skip_bad=True` is counted
  under `bad` in the report. The report counts, for each source and step, how many documents the
  step removed.
- Thresholds and weights are checked before any work (`check_config`). `out` may not be a
  directory or one of the inputs (cleaning a file onto itself would destroy the raw data).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import unicodedata
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import UserError
from .formats import RecordError, parse_payload
from .reading import check_files, iter_raw

UNICODE_FORMS = ("NFKC", "NFKC-strict", "NFC", "none")
STEPS = ("bad", "too_short", "too_long", "repetitive", "low_letters", "exact_dup", "near_dup")


@dataclass
class CleanConfig:
    """Thresholds of the cleaning steps (see the module docstring for what each does)."""

    unicode_form: str = "NFKC"        # "NFKC" (keeps CJK punctuation), "NFKC-strict", "NFC" or "none"
    min_chars: int = 20
    max_chars: int = 0                # 0 = no upper limit
    max_repetition: float = 0.5       # share of repeated char 10-grams above which a doc is dropped
    min_letter_ratio: float = 0.5
    minhash_threshold: float = 0.8    # 0 or >= 1 turns near-dup removal off
    num_perm: int = 128
    shingle_chars: int = 5
    skip_bad: bool = False


@dataclass
class CleanReport:
    sources: list[str]
    read: list[int]
    removed: dict[str, list[int]]      # step -> per-source count
    kept: list[int]
    written: list[int]                 # after mixing, per source
    normalised_changed: list[int] = field(default_factory=list)

    def table(self) -> str:
        """A per-step table: one column per source and a total."""
        names = [Path(s).name for s in self.sources]
        w = max([10] + [len(n) for n in names])
        head = f"{'step':<14}" + "".join(f"{n:>{w + 2}}" for n in names) + f"{'total':>{w + 2}}"
        lines = [head, "-" * len(head)]

        def row(label: str, vals: list[int]) -> str:
            return f"{label:<14}" + "".join(f"{v:>{w + 2}}" for v in vals) + f"{sum(vals):>{w + 2}}"

        lines.append(row("read", self.read))
        lines.append(row("(normalised)", self.normalised_changed))
        for step in STEPS:
            lines.append(row(f"- {step}", self.removed[step]))
        lines.append(row("kept", self.kept))
        lines.append(row("written (mix)", self.written))
        return "\n".join(lines)


def check_config(cfg: CleanConfig) -> None:
    """UserError naming the first threshold that is out of range (NaN included)."""
    if cfg.unicode_form not in UNICODE_FORMS:
        raise UserError(f"unknown Unicode form {cfg.unicode_form!r}; use one of {', '.join(UNICODE_FORMS)}")
    for name in ("min_chars", "max_chars"):
        if getattr(cfg, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    for name in ("max_repetition", "min_letter_ratio", "minhash_threshold"):
        value = getattr(cfg, name)
        if not 0.0 <= value <= 1.0:  # also false for NaN
            raise UserError(f"--{name.replace('_', '-')} must be between 0 and 1, got {value}")
    if cfg.num_perm < 1 or cfg.shingle_chars < 1:
        raise UserError(f"num_perm and shingle_chars must be >= 1, got {cfg.num_perm}, {cfg.shingle_chars}")


# ----------------------------------------------------------------------------------------------
# Step 1: normalisation

CJK_PUNCT = "，！？：；（）～…"
_PUNCT_SPLIT = re.compile(f"([{CJK_PUNCT}])")
_CONTROL = re.compile(r"[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f\u200b-\u200d\u2060\ufeff]")
_HSPACE = re.compile(r"[ \t\u00a0\u3000]+")
_TRAILING = re.compile(r" +\n")
_BLANKS = re.compile(r"\n{3,}")


def normalize_text(text: str, unicode_form: str = "NFKC") -> str:
    """Unicode + whitespace normalisation (step 1). NFKC folds full-width letters and digits to
    ASCII, so look-alike strings compare equal; plain "NFKC" keeps Chinese punctuation as it is."""
    if unicode_form == "NFKC":
        # normalise the text between protected punctuation marks (they are single code points
        # without combining marks, so cutting there does not change the result elsewhere)
        text = "".join(p if p in CJK_PUNCT else unicodedata.normalize("NFKC", p) for p in _PUNCT_SPLIT.split(text))
    elif unicode_form == "NFKC-strict":
        text = unicodedata.normalize("NFKC", text)
    elif unicode_form != "none":
        text = unicodedata.normalize(unicode_form, text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _HSPACE.sub(" ", text)
    text = _TRAILING.sub("\n", text)
    text = _BLANKS.sub("\n\n", text)
    return text.strip()


def _map_strings(rec: dict, fn) -> list[str]:
    """Apply fn to every text string of a record in place; return the new strings in order."""
    out: list[str] = []

    def visit_msgs(msgs: Any) -> None:
        if isinstance(msgs, list):
            for m in msgs:
                if isinstance(m, dict):
                    for k in ("content", "reasoning_content"):
                        if isinstance(m.get(k), str):
                            m[k] = fn(m[k])
                            out.append(m[k])

    for k in ("text", "prompt", "answer"):
        if isinstance(rec.get(k), str):
            rec[k] = fn(rec[k])
            out.append(rec[k])
    for k in ("conversations", "chosen", "rejected"):
        visit_msgs(rec.get(k))
    return out


# ----------------------------------------------------------------------------------------------
# Steps 2-4: quality filters


def repetition_ratio(text: str, n: int = 10) -> float:
    """1 - distinct/total character n-grams: ~0 for prose, -> 1 for 'hahahaha...' or copy-paste loops."""
    total = len(text) - n + 1
    if total <= 1:
        return 0.0
    return 1.0 - len({text[i:i + n] for i in range(total)}) / total


def letter_ratio(text: str) -> float:
    """Letters (Latin, CJK, any script) over non-whitespace characters."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 0.0
    return sum(c.isalpha() for c in chars) / len(chars)


def quality_verdict(text: str, cfg: CleanConfig) -> str | None:
    """The name of the first filter that rejects `text`, or None if it passes."""
    if len(text) < cfg.min_chars:
        return "too_short"
    if cfg.max_chars and len(text) > cfg.max_chars:
        return "too_long"
    if repetition_ratio(text) > cfg.max_repetition:
        return "repetitive"
    if letter_ratio(text) < cfg.min_letter_ratio:
        return "low_letters"
    return None


# ----------------------------------------------------------------------------------------------
# Steps 5-6: deduplication


class Deduplicator:
    """Exact (digest set) and near-duplicate (MinHash LSH) detection over a stream of texts."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, shingle_chars: int = 5):
        from datasketch import MinHashLSH

        self.seen: set[bytes] = set()
        self.num_perm, self.k, self.threshold = num_perm, shingle_chars, threshold
        # LSH only proposes candidates. Its banding is tuned for recall (weights: false negatives
        # cost 4x false positives; at threshold 0.8 the default finds only ~40% of pairs with
        # Jaccard 0.8), and each candidate is then checked against the threshold on the stored
        # signatures, which removes the extra false positives.
        self.lsh = (MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.2, 0.8))
                    if 0 < threshold < 1 else None)
        self.signatures: list[np.ndarray] = []   # uint32 [num_perm] per indexed document

    def shingles(self, text: str) -> set[bytes]:
        """Character k-grams of the lower-cased text without whitespace: language independent."""
        t = "".join(text.lower().split())
        if len(t) <= self.k:
            return {t.encode("utf-8")}
        return {t[i:i + self.k].encode("utf-8") for i in range(len(t) - self.k + 1)}

    def minhash(self, text: str):
        from datasketch import MinHash

        # crc32 is a fast, deterministic 32-bit hash (Python's hash() is salted per process).
        m = MinHash(num_perm=self.num_perm, seed=1, hashfunc=zlib.crc32)
        m.update_batch(list(self.shingles(text)))
        return m

    def check(self, text: str) -> str | None:
        """'exact_dup' / 'near_dup' if text repeats an earlier one, else None (and remember it)."""
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        if digest in self.seen:
            return "exact_dup"
        self.seen.add(digest)
        if self.lsh is not None:
            m = self.minhash(text)
            sig = m.hashvalues.astype(np.uint32)   # values are < 2**32: half the memory
            for key in self.lsh.query(m):
                # estimated Jaccard = share of the num_perm minimums that agree
                if np.mean(self.signatures[int(key)] == sig) >= self.threshold:
                    return "near_dup"
            self.lsh.insert(str(len(self.signatures)), m)
            self.signatures.append(sig)
        return None


# ----------------------------------------------------------------------------------------------
# Step 7: mixing


def mix_quotas(counts: list[int], weights: list[float] | None) -> list[int]:
    """How many documents each source contributes: its count, or its share of the total."""
    if weights is None:
        return list(counts)
    if len(weights) != len(counts):
        raise UserError(f"--weights has {len(weights)} values for {len(counts)} data files")
    if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise UserError("--weights must be finite, non-negative and not all zero")
    total, wsum = sum(counts), sum(weights)
    # largest-remainder rounding: the quotas add up to `total` exactly
    exact = [total * w / wsum for w in weights]
    quotas = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - quotas[i]), i))
    for i in by_remainder[:total - sum(quotas)]:
        quotas[i] += 1
    for i, (q, c) in enumerate(zip(quotas, counts)):
        if q > 0 and c == 0:
            raise UserError(f"source {i + 1} has weight {weights[i]} but no documents survived cleaning")
    return quotas


def even_pick(n: int, q: int) -> np.ndarray:
    """q indices into range(n) spread evenly, in order: full passes first, then an even stride.

    e.g. n=4, q=6 -> [0 1 2 3 | 1 3]: one full pass (upsampling), then 2 of 4 evenly.
    """
    full, rem = divmod(q, n) if n else (0, 0)
    # index j is picked in the last pass when floor((j+1)*rem/n) steps past floor(j*rem/n)
    j = np.arange(n)
    part = j[((j + 1) * rem) // n > (j * rem) // n]
    return np.concatenate([np.tile(j, full), part]).astype(np.int64)


def interleave_schedule(quotas: list[int]) -> Iterator[int]:
    """Source index of each output document: always the one furthest behind its share."""
    total = sum(quotas)
    taken = [0] * len(quotas)
    for k in range(total):
        # deficit = where source i should be after k+1 documents minus where it is
        i = max(range(len(quotas)), key=lambda s: (quotas[s] * (k + 1) / total - taken[s], -s))
        taken[i] += 1
        yield i


# ----------------------------------------------------------------------------------------------
# The whole pipeline


def clean(paths: list[str | Path], out: str | Path, cfg: CleanConfig | None = None,
          weights: list[float] | None = None) -> CleanReport:
    """Run steps 1-7 over `paths` and write the cleaned, mixed JSONL to `out`."""
    cfg = cfg or CleanConfig()
    check_config(cfg)
    files = check_files(paths)
    if weights is not None:
        mix_quotas([1] * len(files), weights)  # fail on a bad --weights before doing any work
    out = Path(out)
    if out.is_dir():
        raise UserError(f"{out}: is a directory; --out is the cleaned .jsonl file to write")
    if any(out.exists() and out.samefile(f) for f in files):
        raise UserError(f"{out}: is also an input; write the cleaned data to a new file (the raw data is kept)")
    out.parent.mkdir(parents=True, exist_ok=True)
    n = len(files)
    report = CleanReport([str(p) for p in files], [0] * n, {s: [0] * n for s in STEPS}, [0] * n,
                         [0] * n, [0] * n)
    dedup = Deduplicator(cfg.minhash_threshold, cfg.num_perm, cfg.shingle_chars)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.clean-", dir=out.parent))
    try:
        # Pass 1: each source -> its surviving records in a temp JSONL (streaming, bounded memory).
        kept_files = [work / f"{i}.jsonl" for i in range(n)]
        for i, path in enumerate(files):
            _filter_source(path, i, kept_files[i], cfg, dedup, report)
        # Pass 2: mix the survivors into one stream.
        _mix(kept_files, weights, work / "out.jsonl", report)
        os.replace(work / "out.jsonl", out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _filter_source(path: Path, i: int, kept: Path, cfg: CleanConfig, dedup: Deduplicator,
                   report: CleanReport) -> None:
    """Steps 1-6 on source `i`: its surviving records go to `kept`; the counts to `report`."""
    with open(kept, "w", encoding="utf-8") as f:
        for lineno, payload in iter_raw(path):
            report.read[i] += 1
            try:
                rec = parse_payload(payload)
                before = _map_strings(rec, lambda s: s)  # the original strings
                texts = _map_strings(rec, lambda s: normalize_text(s, cfg.unicode_form))
                if not texts:
                    raise RecordError("no text found (expected 'text', 'conversations', "
                                      "'chosen'/'rejected' or 'prompt')")
            except RecordError as err:
                if not cfg.skip_bad:
                    raise UserError(f"{path}:{lineno}: {err}") from None
                report.removed["bad"][i] += 1
                continue
            report.normalised_changed[i] += texts != before
            text = "\n".join(texts)
            verdict = quality_verdict(text, cfg) or dedup.check(text)
            if verdict:
                report.removed[verdict][i] += 1
                continue
            # default=str: a Parquet column we do not read (a timestamp) is kept as text
            f.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
            report.kept[i] += 1


def _mix(kept_files: list[Path], weights: list[float] | None, out: Path, report: CleanReport) -> None:
    """Step 7: the sources' survivors into one file, concatenated or mixed by `weights`."""
    quotas = mix_quotas(report.kept, weights)
    with open(out, "w", encoding="utf-8") as f:
        if weights is None:
            for i, kept in enumerate(kept_files):  # plain concatenation in source order
                with open(kept, encoding="utf-8") as src:
                    shutil.copyfileobj(src, f)
                report.written[i] = report.kept[i]
            return
        streams = [_picked_lines(kept, report.kept[i], quotas[i]) for i, kept in enumerate(kept_files)]
        for i in interleave_schedule(quotas):
            f.write(next(streams[i]))
            report.written[i] += 1


def _picked_lines(path: Path, n: int, q: int) -> Iterator[str]:
    """The lines of `path` (n of them) selected by even_pick(n, q), re-reading for each pass."""
    picks = even_pick(n, q)
    pos = 0
    while pos < len(picks):
        with open(path, encoding="utf-8") as f:
            for j, line in enumerate(f):
                while pos < len(picks) and picks[pos] == j:
                    yield line
                    pos += 1
                if pos < len(picks) and picks[pos] < j:
                    break  # the next pick starts a new pass over the file
