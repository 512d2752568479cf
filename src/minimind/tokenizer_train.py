"""Training a byte-level BPE tokenizer in our layout (`minimind tokenizer train`).

Contract: `train_tokenizer(files, vocab_size, out_dir)` trains on plain-text or JSONL files
(`iter_texts` streams them line by line: they are never held whole in memory) with our special
tokens first and our split pattern (tokenizer.py owns both), writes a Hugging Face folder
(tokenizer.json, tokenizer_config.json with the ChatML template that chat.py owns,
special_tokens_map.json) and returns it loaded.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as _HFTokenizer

from .chat import CHAT_TEMPLATE
from .errors import UserError
from .tokenizer import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, SPECIAL_TOKENS, SPLIT_PATTERN, Tokenizer, load_tokenizer


def iter_texts(files: Iterable[str | Path]) -> Iterator[str]:
    """Stream the text of each file: plain text by line, or JSONL records (optionally gzipped).

    From JSONL it takes `text` (pretraining), every message's `content` / `reasoning_content`
    (`conversations`, `chosen`, `rejected`), so SFT and DPO files can feed the tokenizer too.
    """
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        name = path.name.removesuffix(".gz")
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as fh:
            if not name.endswith((".jsonl", ".json")):
                yield from fh  # plain text: one line at a time
                continue
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


def train_tokenizer(files, vocab_size: int, out_dir) -> Tokenizer:
    """Train a byte-level BPE tokenizer of at most `vocab_size` ids (specials included) on `files`.

    Merges need a pair seen at least twice, so a small corpus may stop short of `vocab_size`.

    Writes tokenizer.json, tokenizer_config.json (with our ChatML chat_template) and
    special_tokens_map.json into `out_dir` and returns the loaded tokenizer.
    """
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
        show_progress=False,
    )
    tok.train_from_iterator(iter_texts(files), trainer=trainer)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # The trainer registers every special token as special=True; mark the think/tool markers
    # as ordinary added tokens (see SPECIAL_TOKENS) by editing the serialised form.
    data = json.loads(tok.to_str())
    flags = dict(SPECIAL_TOKENS)
    for entry in data["added_tokens"]:
        entry["special"] = flags.get(entry["content"], entry["special"])
    (out / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    write_tokenizer_config(out)
    return load_tokenizer(out)


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
