"""`minimind tokenizer train|encode`: train a byte-level BPE tokenizer, or look at how text tokenises."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    tok = sub.add_parser("tokenizer", help="train or inspect a tokenizer")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    tok_sub.required = True
    train = tok_sub.add_parser("train", help="train a byte-level BPE tokenizer (Hugging Face format)")
    train.add_argument("--data", nargs="+", required=True, metavar="FILE",
                       help="text files: .txt, or .jsonl(.gz) with text / conversations / chosen+rejected")
    train.add_argument("--vocab-size", type=int, default=6400, help="vocabulary size incl. special tokens (default 6400)")
    train.add_argument("--out", required=True, help="output folder (tokenizer.json + tokenizer_config.json)")
    train.set_defaults(func=cmd_train)

    enc = tok_sub.add_parser("encode", help="print the tokens of a text")
    enc.add_argument("text", help="text to encode (special tokens written in it are recognised)")
    enc.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the shipped one)")
    enc.set_defaults(func=cmd_encode)


def cmd_train(args: argparse.Namespace) -> int:
    from ..tokenizer_train import train_tokenizer

    tok = train_tokenizer(args.data, args.vocab_size, args.out)
    print(f"wrote {tok.path} ({tok.vocab_size} tokens)")
    if tok.vocab_size < args.vocab_size:
        print(f"note: the corpus gave only {tok.vocab_size} of the {args.vocab_size} tokens asked for "
              "(no pair left that occurs twice)")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from ..tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    ids = tok.encode(args.text)
    print(f"{len(ids)} tokens, {len(args.text.encode('utf-8')) / max(len(ids), 1):.2f} bytes/token")
    print(" ".join(f"{i}:{tok.decode([i])!r}" for i in ids))
    return 0
