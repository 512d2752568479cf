"""Bytes per token of a tokenizer on held-out Chinese and English text.

    .venv/bin/python benchmarks/tokenizer_bpt.py [--tokenizer DIR ...]

The text is the demo corpus's held-out documents (`minimind.data.demo.source_documents()` with
split "eval": every 25th document is a candidate, kept only if it shares no 13-gram with any other
document; neither the demo training files nor the shipped tokenizer saw them), grouped by language. More bytes per token means shorter sequences for the same text, i.e.
more text per training step and per context window. Default: the shipped 6400-token tokenizer.
"""

from __future__ import annotations

import argparse
import time

from minimind.data.demo import source_documents
from minimind.tokenizer import load_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", nargs="*", default=[None], help="tokenizer folders (default: shipped)")
    args = ap.parse_args()
    held_out = [d for d in source_documents() if d["split"] == "eval"]
    texts = {lang: [d["text"] for d in held_out if d["lang"] == lang] for lang in ("zh", "en")}
    print("| tokenizer | vocab | language | documents | MB | chars/token | bytes/token | encode MB/s |")
    print("|---|---|---|---|---|---|---|---|")
    for path in args.tokenizer:
        tok = load_tokenizer(path)
        for lang, docs in texts.items():
            n_bytes = sum(len(t.encode("utf-8")) for t in docs)
            n_chars = sum(len(t) for t in docs)
            start = time.perf_counter()
            n_tokens = sum(len(tok.encode(t)) for t in docs)
            secs = time.perf_counter() - start
            print(f"| {path or 'shipped default'} | {tok.vocab_size} | {lang} | {len(docs)} | {n_bytes / 1e6:.3f} "
                  f"| {n_chars / n_tokens:.2f} | {n_bytes / n_tokens:.2f} | {n_bytes / 1e6 / secs:.1f} |")


if __name__ == "__main__":
    main()
