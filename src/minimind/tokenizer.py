"""Byte-level BPE tokenizer: load one, and the default one shipped with MiniMind (training one: tokenizer_train.py).

Contract (see docs/architecture.md):
- A tokenizer lives in a Hugging Face folder: `tokenizer.json` (the `tokenizers` model) and
  `tokenizer_config.json` (special tokens + the Jinja `chat_template`). `transformers.AutoTokenizer`
  loads the folders we write, and `load_tokenizer` loads any such folder (a 6k or a 150k vocabulary).
- Our own tokenizers put the special tokens first: id 0 `<|endoftext|>` (padding / unknown),
  1 `<|im_start|>` (beginning of a turn, our BOS), 2 `<|im_end|>` (end of a turn, our EOS), then
  `<think>`, `</think>`, `<tool_call>`, `</tool_call>`, `<tool_response>`, `</tool_response>` and
  spare `<|reserved_N|>` tokens a later version can give a meaning without resizing the model.
- Text is never trusted to carry control tokens. `encode(text)` treats every added token written in
  the text (`<|im_end|>`, `<think>`, `<tool_call>`, ...) as plain characters: the ids never contain
  an added-token id (checked on every call), and `decode` is the exact inverse (byte-level BPE). Only
  `encode(text, allow_special=True)` turns written markers into their ids; it is for text we wrote
  ourselves (a whole prompt typed by the person who owns it, tests). Chat control ids come from the
  renderer (chat.py), which encodes message text through the plain path.
- `check_model_fit(tok, vocab_size, eos_token_id)` is the one check between a tokenizer and a model: every id fits
  the embedding, and the model's eos id is the tokenizer's (a 150k tokenizer such as Qwen3's
  and a 6400-row model fail here in one line, not in an index error mid-training).
- `encode_flat(texts)` is the bulk plain path of data preparation: the same ids as `encode_batch`,
  as one uint32 array plus lengths. For a tokenizer made by `tokenizer_train.train_tokenizer` (our split pattern,
  byte-level BPE) it runs tiktoken's BPE when tiktoken is installed, 4-5x faster than `tokenizers`
  here; `fast_bpe.tiktoken_encoding` only accepts a tokenizer for which both give the same ids.

Why byte-level BPE: every string (any script, emoji, binary junk) maps to bytes first, so there is
no unknown token and decode(encode(s)) == s always. Chinese characters are 3 bytes in UTF-8; BPE
learns merges for the frequent ones, rarer ones stay as 2-3 byte tokens.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from itertools import chain
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as _HFTokenizer

from .errors import UserError
from .fast_bpe import tiktoken_encoding

PAD_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
THINK_START, THINK_END = "<think>", "</think>"
TOOL_CALL_START, TOOL_CALL_END = "<tool_call>", "</tool_call>"
TOOL_RESPONSE_START, TOOL_RESPONSE_END = "<tool_response>", "</tool_response>"
# The files of a tokenizer folder in Hugging Face format: what is copied beside weights and shards.
TOKENIZER_JSON = "tokenizer.json"  # the file that makes a folder a tokenizer folder
TOKENIZER_FILES = (TOKENIZER_JSON, "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
NUM_RESERVED = 7  # spare tokens: 9 named + 7 reserved = 16 ids set aside before the learned vocabulary

# "special=True" tokens are control tokens: skip_special_tokens removes them when decoding.
# The think/tool markers are part of what the model *says*, so like Qwen3 we keep them as
# added (always-atomic) tokens that decoding never drops: split_reasoning needs to see them.
SPECIAL_TOKENS: tuple[tuple[str, bool], ...] = (
    (PAD_TOKEN, True), (BOS_TOKEN, True), (EOS_TOKEN, True),
    (THINK_START, False), (THINK_END, False),
    (TOOL_CALL_START, False), (TOOL_CALL_END, False),
    (TOOL_RESPONSE_START, False), (TOOL_RESPONSE_END, False),
) + tuple((f"<|reserved_{i}|>", True) for i in range(NUM_RESERVED))

# Pre-tokenisation regex (the widely used GPT-4/Qwen-style split): words with one leading
# non-letter, *single digits* (so numbers are read digit by digit, which makes arithmetic
# learnable for a small model), punctuation runs, newlines, and spaces. Written as a Rust-regex
# string for `tokenizers`.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass
class Tokenizer:
    """A `tokenizers.Tokenizer` plus the facts the rest of MiniMind needs about it.

    Two backends share one vocabulary: `backend` matches added tokens written in the text (the
    `allow_special=True` path), `plain` never does (see `_plain_backend`).
    """

    path: Path
    backend: _HFTokenizer
    pad_id: int
    bos_id: int
    eos_id: int
    chat_template: str
    plain: _HFTokenizer = field(init=False, repr=False)
    added_ids: frozenset[int] = field(init=False, repr=False)
    _added_re: re.Pattern | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        added = self.backend.get_added_tokens_decoder()
        self.added_ids = frozenset(added)
        self.plain = _plain_backend(self.backend)
        # Longest first, so "<tool_response>" is not cut as a shorter marker that prefixes it.
        names = sorted((t.content for t in added.values()), key=len, reverse=True)
        self._added_re = re.compile("|".join(map(re.escape, names))) if names else None

    @cached_property
    def vocab_size(self) -> int:
        """Rows a model's embedding needs: the largest id + 1 (the count of ids, unless ids skip some)."""
        ids = self.backend.get_vocab(with_added_tokens=True).values()
        return max(self.backend.get_vocab_size(with_added_tokens=True), max(ids, default=-1) + 1)

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids of `text`. Markers written in it stay text unless `allow_special` (trusted text only)."""
        try:
            ids = (self.backend if allow_special else self.plain).encode(text, add_special_tokens=False).ids
        except TypeError:
            raise _not_unicode([text]) from None
        return ids if allow_special else self._checked(ids)

    def encode_batch(self, texts: list[str], allow_special: bool = False) -> list[list[int]]:
        """Encode many texts at once (the Rust side uses all cores); `allow_special` as in `encode`."""
        try:
            out = (self.backend if allow_special else self.plain).encode_batch(texts, add_special_tokens=False)
        except TypeError:
            raise _not_unicode(texts) from None
        return [e.ids if allow_special else self._checked(e.ids) for e in out]

    def encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Plain ids of `texts` back to back (uint32) and each text's token count (int64).

        Exactly `encode_batch(texts)` flattened (tests/test_prepare_speed.py compares them), without
        a Python int per token: data preparation stores these arrays as they are.
        """
        fast = self._fast_bpe
        if fast is None:
            ids = self.encode_batch(texts)
            lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
            return np.fromiter(chain.from_iterable(ids), dtype=np.uint32, count=int(lengths.sum())), lengths
        try:
            # allowed_special=() and no disallowed check: markers written in the text stay text
            parts = [fast.encode_to_numpy(t, allowed_special=set(), disallowed_special=()) for t in texts]
        except (TypeError, ValueError):  # UnicodeEncodeError: a lone surrogate; or not a str
            raise _not_unicode(texts) from None
        flat = np.concatenate(parts) if parts else np.zeros(0, np.uint32)
        if self._added_mask[flat].any():  # cannot happen (no added id is a rank); kept as the guard
            raise UserError(f"{self.path}: plain text encodes to added-token ids; this tokenizer cannot "
                            "keep text apart from control tokens")
        return flat, np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))

    @property
    def bulk_engine(self) -> str:
        """What runs the BPE of `encode_flat`: "tiktoken" or "tokenizers" (built on first use)."""
        return "tokenizers" if self._fast_bpe is None else "tiktoken"

    @cached_property
    def _fast_bpe(self):
        return tiktoken_encoding(json.loads(self.backend.to_str()), SPLIT_PATTERN)

    @cached_property
    def _added_mask(self) -> np.ndarray:
        mask = np.zeros(max(self.vocab_size, max(self.added_ids, default=0) + 1), dtype=bool)
        mask[list(self.added_ids)] = True
        return mask

    def _checked(self, ids: list[int]) -> list[int]:
        # Plain ids must hold no added-token id. The plain backend cannot produce one for a
        # tokenizer whose merges never build a marker's string (ours: the split pattern cuts
        # "<", "|", letters apart); this C-speed scan makes that a guarantee for any folder.
        if not self.added_ids.isdisjoint(ids):
            bad = sorted(self.added_ids.intersection(ids))
            raise UserError(f"{self.path}: plain text encodes to added-token ids {bad}; this "
                            "tokenizer cannot keep text apart from control tokens")
        return ids

    def split_special(self, text: str) -> list[str | int]:
        """Cut trusted text at the added tokens written in it: "a<|im_end|>b" -> ["a", 2, "b"].

        The renderer uses it on its own template text, so that the markers there become ids
        while message text beside them is encoded through the plain path.
        """
        if self._added_re is None:
            return [text] if text else []
        out: list[str | int] = []
        pos = 0
        for m in self._added_re.finditer(text):
            if m.start() > pos:
                out.append(text[pos:m.start()])
            out.append(self.backend.token_to_id(m.group()))
            pos = m.end()
        if pos < len(text):
            out.append(text[pos:])
        return out

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.backend.id_to_token(i)

    def __len__(self) -> int:
        return self.vocab_size


def _plain_backend(backend: _HFTokenizer) -> _HFTokenizer:
    """A copy of `backend` that encodes every added token written in the text as ordinary text.

    `tokenizers` skips the added-token matcher only for tokens flagged special, and only while
    `encode_special_tokens` is set (what transformers' `split_special_tokens=True` sets). Our
    think/tool markers are added but not special (decoding must keep them), so the copy flags
    every added token special. A separate object, not a flag toggled per call: the server
    encodes from several threads at once.
    """
    data = json.loads(backend.to_str())
    for entry in data.get("added_tokens", []):
        entry["special"] = True
    plain = _HFTokenizer.from_str(json.dumps(data))
    plain.encode_special_tokens = True
    return plain


def _not_unicode(texts: list[str]) -> Exception:
    """The error for texts the Rust side refused: lone surrogates (UTF-8 cannot encode them) are the
    user's text, a UserError naming the place; anything else (not a str) is a programming error."""
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            return TypeError(f"can only encode str, got {type(t).__name__}")
        for j, ch in enumerate(t):
            if "\ud800" <= ch <= "\udfff":
                where = f"text {i}, " if len(texts) > 1 else ""
                return UserError(f"{where}character {j}: a lone surrogate (U+{ord(ch):04X}) is not valid Unicode text")
    return TypeError("text the tokenizer cannot encode")


def check_model_fit(tok: Tokenizer, vocab_size: int, eos_token_id: int | None = None) -> None:
    """UserError unless a model with `vocab_size` embedding rows (and `eos_token_id`, when it has
    one already) can train on and generate with `tok`'s ids.

    A model may have more embedding rows than the tokenizer has ids (Qwen3 pads 151,669 ids to
    151,936 rows); fewer means some token has no row. The eos id must be the same on both sides:
    packing ends documents with the tokenizer's, generation stops at the model's. (The model's
    pad id is not compared: nothing trains on it, and Hugging Face configs often leave it out.)
    """
    if tok.vocab_size > vocab_size:
        raise UserError(f"the tokenizer {tok.path} has {tok.vocab_size} ids but the model's vocabulary "
                        f"(--vocab-size) is {vocab_size}: use --vocab-size {tok.vocab_size} or more, "
                        f"or the tokenizer the model was trained with (--tokenizer)")
    if eos_token_id is not None and tok.eos_id != eos_token_id:
        raise UserError(f"the tokenizer {tok.path} ends sequences with id {tok.eos_id} "
                        f"({tok.id_to_token(tok.eos_id)}) but the model's eos_token_id is {eos_token_id}: "
                        f"use the tokenizer the model was trained with (--tokenizer)")


def default_tokenizer_dir() -> Path:
    """The folder of the 6400-token tokenizer shipped inside the package."""
    return Path(str(resources.files("minimind") / "assets" / "tokenizer"))


def _token_str(value) -> str | None:
    # tokenizer_config.json stores a token either as "<|x|>" or as {"content": "<|x|>", ...}.
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def load_tokenizer(path: str | Path | None = None) -> Tokenizer:
    """Load a Hugging Face tokenizer folder (or a tokenizer.json file); None -> the shipped default.

    Special ids come from tokenizer_config.json (`eos_token`, `bos_token`, `pad_token`); where
    the config does not name them, ChatML conventions fill in: BOS = <|im_start|>, pad =
    <|endoftext|>. An EOS is required: generation and packing cannot work without one.
    """
    folder = Path(path) if path is not None else default_tokenizer_dir()
    file = folder if folder.is_file() else folder / TOKENIZER_JSON
    if not file.is_file():
        raise UserError(f"{folder}: no tokenizer.json there (expected a Hugging Face tokenizer folder)")
    folder = file.parent
    try:
        backend = _HFTokenizer.from_file(str(file))
    except Exception as err:  # the Rust side raises a bare Exception on malformed JSON
        raise UserError(f"{file}: not a valid tokenizers file ({err})") from None
    config: dict = {}
    config_file = folder / "tokenizer_config.json"
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise UserError(f"{config_file}: invalid JSON ({err})") from None
    chat_template = config.get("chat_template") or ""
    jinja = folder / "chat_template.jinja"  # newer transformers write the template beside the config
    if jinja.is_file():
        chat_template = jinja.read_text(encoding="utf-8")

    def lookup(key: str, fallbacks: tuple[str, ...]) -> int | None:
        for name in (_token_str(config.get(key)), *fallbacks):
            if name is not None and backend.token_to_id(name) is not None:
                return backend.token_to_id(name)
        return None

    eos_id = lookup("eos_token", (EOS_TOKEN,))
    if eos_id is None:
        raise UserError(f"{folder}: no end-of-sequence token: set eos_token in tokenizer_config.json "
                        f"(or add {EOS_TOKEN} to the vocabulary)")
    bos_id = lookup("bos_token", (BOS_TOKEN,))
    pad_id = lookup("pad_token", (PAD_TOKEN,))
    return Tokenizer(path=folder, backend=backend, eos_id=eos_id,
                     bos_id=eos_id if bos_id is None else bos_id,
                     pad_id=eos_id if pad_id is None else pad_id,
                     chat_template=chat_template)
