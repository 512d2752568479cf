"""Training a byte-level BPE tokenizer in our layout (`minimind tokenizer train`).

Contract: `train(files, vocab_size, out_dir, max_words=MAX_WORDS, progress=False)` trains
on plain-text or JSONL files with our special tokens first and our split pattern (tokenizer.py owns
both), writes a Hugging Face folder (tokenizer.json, tokenizer_config.json with the ChatML template
that chat.py owns, special_tokens_map.json) and returns a `TrainResult` (the loaded tokenizer, the
words counted and what the bounded count dropped); `train_tokenizer` returns just the tokenizer.

Memory is bounded whatever the input size (GBs of text train in the same RAM as MBs):
- the files are streamed a line at a time (`iter_texts`; a plain-text line is read in pieces of
  at most `MAX_LINE` characters), never held whole;
- BPE statistics need only how often each pre-tokenised *word* occurs (a word: one piece of the
  split pattern, e.g. " hello", "7" or a run of Chinese characters). `count_words` keeps that
  table and bounds it at `max_words` entries: past the bound it forgets the rarest words (lossy
  counting: words seen once are dropped first, then twice, ...). Chinese text makes the table
  grow with the input (every run of characters up to punctuation is one word), and the trainer
  needs ~4 KB per such word: unbounded, 200 MB of mixed Chinese/English text took 2.9 GB of RSS,
  with `max_words=100_000` 0.15 GB, as 20 MB did (0.17 GB);
- the `tokenizers` BPE trainer then learns the merges from the counted table, fed back to it as
  text (`_replay`), so its memory is that of at most `max_words` words.
Below the bound nothing is dropped and the merges equal those of `tokenizers` trained on the raw
files (tests/test_large_vocab.py). Progress: a bar over the input bytes while counting, then the
trainer's own bars (they draw only on a terminal), all on stderr.
A small corpus may run out of pairs seen twice before `vocab_size`: the result is smaller, and
`TrainResult.short_by` says by how much (the CLI prints it as a warning).
"""

from __future__ import annotations

import gzip
import io
import json
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Callable

import regex
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as _HFTokenizer

from .chat import CHAT_TEMPLATE
from .errors import UserError
from .tokenizer import (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, SPECIAL_TOKENS, SPLIT_PATTERN, TOKENIZER_JSON, Tokenizer,
                        load_tokenizer)

MAX_WORDS = 500_000     # distinct words kept: the trainer needs ~4 KB per 12-character Chinese word
MAX_LINE = 1 << 20      # characters per piece of a plain-text line (a file without newlines streams too)
REPLAY_CHARS = 1 << 16  # characters per string handed to the trainer by `_replay`


@dataclass
class TrainResult:
    tokenizer: Tokenizer
    words: int          # distinct words the merges were learned from
    dropped: int        # word occurrences forgotten by the bounded count (0: exact)
    short_by: int       # ids asked for but not learned (the corpus ran out of pairs seen twice)


def iter_texts(files: Iterable[str | Path], on_bytes: Callable[[int], None] | None = None) -> Iterator[str]:
    """Stream the text of each file: plain text by line, or JSONL records (optionally gzipped).

    From JSONL it takes `text` (pretraining), every message's `content` / `reasoning_content`
    (`conversations`, `chosen`, `rejected`), so SFT and DPO files can feed the tokenizer too.
    `on_bytes(n)` is told how many bytes of the file (compressed, for .gz) were read.
    """
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        name = path.name.removesuffix(".gz")
        with open(path, "rb") as raw:  # raw.tell(): the bytes the text layer has read so far
            fh = gzip.open(raw, "rt", encoding="utf-8") if path.name.endswith(".gz") else \
                io.TextIOWrapper(raw, encoding="utf-8")
            texts = _plain_lines(fh) if not name.endswith((".jsonl", ".json")) else _jsonl_texts(fh, path)
            done = 0
            for i, text in enumerate(texts):
                yield text
                if on_bytes is not None and i % 256 == 255:  # tell() is a system call: not per line
                    pos = raw.tell()
                    on_bytes(pos - done)
                    done = pos
            if on_bytes is not None:
                on_bytes(path.stat().st_size - done)


def _plain_lines(fh) -> Iterator[str]:
    while line := fh.readline(MAX_LINE):
        yield line


def _jsonl_texts(fh, path: Path) -> Iterator[str]:
    for lineno, line in enumerate(fh, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object")
        if isinstance(record.get("text"), str):
            yield record["text"]
        for key in ("conversations", "chosen", "rejected"):
            for msg in record.get(key) or []:
                if isinstance(msg, dict):
                    for field in ("reasoning_content", "content"):
                        if isinstance(msg.get(field), str) and msg[field]:
                            yield msg[field]


def count_words(texts: Iterable[str], max_words: int = MAX_WORDS) -> tuple[Counter, int]:
    """How often each word of the split pattern occurs, in at most `max_words` entries.

    Returns (counts, dropped occurrences). When the table passes `max_words` it keeps only the
    words seen more than k times, for the smallest k that halves it (lossy counting: a word
    dropped early can come back, undercounted by at most the occurrences dropped with it).
    """
    split = regex.compile(SPLIT_PATTERN).findall  # the same pieces as the trainer's Rust regex
    counts: Counter = Counter()
    dropped = 0
    for text in texts:
        counts.update(split(text))
        if len(counts) > max_words:
            kept, k = counts, 0
            while len(kept) > max_words // 2:
                k += 1
                kept = Counter({w: n for w, n in kept.items() if n > k})
            dropped += counts.total() - kept.total()
            counts = kept
    return counts, dropped


def _replay(counts: Counter) -> Iterator[str]:
    """Text whose split-pattern words are exactly `counts`: each word n times, cut by a digit.

    A digit is always a word of its own (the pattern reads numbers digit by digit) and splits
    nothing around it, so "w0w0w0" is w, 0, w, 0, w, 0; the digit words are single symbols,
    which add no pair to the BPE statistics. Whitespace words are the exception (" " + "0" would
    regroup the spaces) and go one per string.
    """
    for word, n in counts.items():
        if word.isspace():
            yield from repeat(word, n)
            continue
        unit = word + "0"
        per = max(1, REPLAY_CHARS // len(unit))
        while n > 0:
            k = min(n, per)
            yield unit * k
            n -= k


def _replay_length(counts: Counter) -> int:
    """How many strings `_replay` yields (the trainer's progress bar counts them)."""
    return sum(n if w.isspace() else -(-n // max(1, REPLAY_CHARS // (len(w) + 1))) for w, n in counts.items())


def train_tokenizer(files, vocab_size: int, out_dir, max_words: int = MAX_WORDS) -> Tokenizer:
    """Train a byte-level BPE tokenizer of at most `vocab_size` ids (specials included) on `files`.

    Writes tokenizer.json, tokenizer_config.json (with our ChatML chat_template) and
    special_tokens_map.json into `out_dir` and returns it loaded (`train` also says what it did).
    """
    return train(files, vocab_size, out_dir, max_words).tokenizer


def train(files, vocab_size: int, out_dir, max_words: int = MAX_WORDS, progress: bool = False) -> TrainResult:
    """`train_tokenizer`, returning a `TrainResult`; `progress` draws bars on stderr."""
    files = [Path(f) for f in ([files] if isinstance(files, (str, Path)) else files)]
    if not files:
        raise UserError("no training files given")
    for f in files:
        if not f.is_file():
            raise UserError(f"{f}: no such file")
    min_vocab = len(SPECIAL_TOKENS) + 256  # specials + the 256 byte symbols
    if vocab_size < min_vocab:
        raise UserError(f"--vocab-size {vocab_size} is too small: need at least {min_vocab} "
                        f"({len(SPECIAL_TOKENS)} special tokens + 256 bytes)")
    if max_words < 2:
        raise UserError(f"--max-words must be at least 2, got {max_words}")
    counts, dropped = _count_files(files, max_words, progress)

    tok = _HFTokenizer(models.BPE())
    # Split by the regex first, then map every byte to a printable symbol (GPT-2's byte table);
    # the ByteLevel step must not split again (use_regex=False) or it would undo our pattern.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[AddedToken(t, special=s, normalized=False) for t, s in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=progress,
    )
    tok.train_from_iterator(_replay(counts), trainer=trainer, length=_replay_length(counts))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # The trainer registers every special token as special=True; mark the think/tool markers
    # as ordinary added tokens (see SPECIAL_TOKENS) by editing the serialised form.
    data = json.loads(tok.to_str())
    flags = dict(SPECIAL_TOKENS)
    for entry in data["added_tokens"]:
        entry["special"] = flags.get(entry["content"], entry["special"])
    (out / TOKENIZER_JSON).write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    write_tokenizer_config(out)
    loaded = load_tokenizer(out)
    return TrainResult(loaded, len(counts), dropped, max(0, vocab_size - loaded.vocab_size))


def _count_files(files: list[Path], max_words: int, progress: bool) -> tuple[Counter, int]:
    """`count_words` over the files, with a bar over their bytes on stderr when `progress`."""
    from tqdm import tqdm  # only the CLI shows it

    total = sum(f.stat().st_size for f in files)
    with tqdm(total=total, unit="B", unit_scale=True, desc="counting words", file=sys.stderr,
              disable=not progress, mininterval=1.0) as bar:
        return count_words(iter_texts(files, bar.update), max_words)


def write_tokenizer_config(out_dir: str | Path) -> None:
    """Write tokenizer_config.json + special_tokens_map.json for our special-token layout."""
    out = Path(out_dir)
    added = {
        str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                 "single_word": False, "special": s}
        for i, (t, s) in enumerate(SPECIAL_TOKENS)
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": PAD_TOKEN,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 32768,
        "added_tokens_decoder": added,
        "additional_special_tokens": [t for t, s in SPECIAL_TOKENS[3:] if s],
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n",
                                               encoding="utf-8")
    specials = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN, "unk_token": PAD_TOKEN}
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n", encoding="utf-8")
