"""Write a Zipf-distributed mixed English/Chinese corpus of about N MB (plain text, or JSONL by suffix).

Used by the tokenizer-training memory figures in docs/benchmarks.md: 40k random Latin "words" and
3,000 Han characters drawn with Zipf weights, so the number of distinct pre-tokenised words keeps
growing with the input size, as it does for real Chinese text (runs of Han characters are words).

    python benchmarks/zipf_corpus.py 200 /tmp/c200.txt
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def write_corpus(megabytes: float, out: str, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, rng.integers(2, 10))) for _ in range(40000)]
    han = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
    p_word = 1 / np.arange(1, 40001) ** 1.05
    p_word /= p_word.sum()
    p_han = 1 / np.arange(1, 3001) ** 1.0
    p_han /= p_han.sum()
    target, size = int(megabytes * 1e6), 0
    with open(out, "w", encoding="utf-8") as fh:
        while size < target:
            w = rng.choice(40000, 2000, p=p_word)
            h = rng.choice(3000, 600, p=p_han)
            for i in range(0, 2000, 40):  # a line: 40 words, a number, a 12-character Han run
                run = "".join(han[k] for k in h[(i // 40) * 12:(i // 40) * 12 + 12])
                line = " ".join(words[j] for j in w[i:i + 40]) + f" {rng.integers(0, 10**6)}. " + run
                record = json.dumps({"text": line}, ensure_ascii=False) if out.endswith(".jsonl") else line
                fh.write(record + "\n")
                size += len(record.encode()) + 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("megabytes", type=float)
    ap.add_argument("out")
    args = ap.parse_args()
    write_corpus(args.megabytes, args.out)


if __name__ == "__main__":
    main()
