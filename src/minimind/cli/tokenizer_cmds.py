"""`minimind tokenizer train|encode`: train a byte-level BPE tokenizer, or look at how text tokenises."""

from __future__ import annotations

import argparse
import sys

from ..tokenizer import load_tokenizer
from ..tokenizer_train import MAX_WORDS
from ..tokenizer_train import train as train_tokenizer


def register(sub: argparse._SubParsersAction) -> None:
    tok = sub.add_parser("tokenizer", help="train or inspect a tokenizer")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    tok_sub.required = True
    train = tok_sub.add_parser("train", help="train a byte-level BPE tokenizer (Hugging Face format)")
    train.add_argument("--data", nargs="+", required=True, metavar="FILE",
                       help="text files: .txt, or .jsonl(.gz) with text / conversations / chosen+rejected")
    train.add_argument("--vocab-size", type=int, default=6400,
                       help="vocabulary size incl. special tokens, e.g. 32000 or 151936 (default 6400)")
    train.add_argument("--out", required=True, help="output folder (tokenizer.json + tokenizer_config.json)")
    train.add_argument("--max-words", type=int, default=MAX_WORDS,
                       help="distinct words counted at most; bounds memory on GBs of text by forgetting "
                            f"the rarest words (default {MAX_WORDS:,}: up to ~2 GB on Chinese text)")
    train.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    train.set_defaults(func=cmd_train)

    enc = tok_sub.add_parser("encode", help="print the tokens of a text")
    enc.add_argument("text", help="text to encode (special tokens written in it are recognised)")
    enc.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the shipped one)")
    enc.set_defaults(func=cmd_encode)


def cmd_train(args: argparse.Namespace) -> int:
    res = train_tokenizer(args.data, args.vocab_size, args.out, max_words=args.max_words, progress=args.progress)
    tok = res.tokenizer
    print(f"wrote {tok.path} ({tok.vocab_size} tokens, learned from {res.words:,} distinct words)")
    if res.dropped:
        print(f"note: the word count was bounded at --max-words {args.max_words:,}: {res.dropped:,} occurrences "
              "of rare words were left out of the statistics", file=sys.stderr)
    if res.short_by:
        print(f"warning: --vocab-size {args.vocab_size} not reached: the corpus gave only {tok.vocab_size} "
              f"tokens (no pair left that occurs twice); a model trained with this tokenizer gets "
              f"vocab_size {tok.vocab_size}; use more text for a larger vocabulary", file=sys.stderr)
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    tok = load_tokenizer(args.tokenizer)
    ids = tok.encode(args.text)
    print(f"{len(ids)} tokens, {len(args.text.encode('utf-8')) / max(len(ids), 1):.2f} bytes/token")
    print(" ".join(f"{i}:{tok.decode([i])!r}" for i in ids))
    return 0
