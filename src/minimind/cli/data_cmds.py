"""`minimind data demo | prepare | clean`: thin wrappers over `minimind.data`.

Contract: an `--out` under a path that is a file, or a file where a folder goes (or the
reverse), is a `UserError` before any work (OS errors such as a full disk are reported in one
line by `minimind.cli.main`). `data demo` never overwrites a file it did not write: an existing
file with other content than the demo file of the same name is refused.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import tempfile
import time
from pathlib import Path

from ..data.clean import CleanConfig, clean
from ..data.demo import write_demo
from ..data.prepare import prepare
from ..errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="demo data, tokenised shards and cleaning")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    data_sub.required = True

    demo = data_sub.add_parser("demo", help="write the embedded demo data set (pretrain/sft/dpo/rl JSONL)")
    demo.add_argument("--out", required=True, help="output folder")
    demo.set_defaults(func=cmd_demo)

    prep = data_sub.add_parser("prepare", help="tokenise data files into memory-mapped shards (streaming, parallel)")
    prep.add_argument("--kind", required=True, choices=["pretrain", "sft", "dpo", "rl"], help="record shape")
    prep.add_argument("--data", required=True, nargs="+", metavar="FILE", help=".jsonl, .jsonl.gz or .parquet files")
    prep.add_argument("--out", required=True, help="output folder (reused when its inputs are unchanged)")
    prep.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the shipped one)")
    prep.add_argument("--skip-bad", action="store_true", help="skip malformed records (and count them) instead of failing")
    prep.add_argument("--workers", type=int, default=None, help="tokeniser processes (default: all cores)")
    prep.set_defaults(func=cmd_prepare)

    cl = data_sub.add_parser("clean", help="normalise, filter, deduplicate and mix text data into one JSONL")
    cl.add_argument("--data", required=True, nargs="+", metavar="FILE", help="input files, one source each")
    cl.add_argument("--out", required=True, help="output .jsonl file")
    cl.add_argument("--weights", default=None, help="comma-separated share of each source in the output, e.g. 3,1")
    cl.add_argument("--minhash-threshold", type=float, default=0.8,
                    help="estimated Jaccard similarity at which a document is a near duplicate (0 = off)")
    cl.add_argument("--min-chars", type=int, default=20, help="drop documents shorter than this (default 20)")
    cl.add_argument("--max-chars", type=int, default=0, help="drop documents longer than this (0 = no limit)")
    cl.add_argument("--max-repetition", type=float, default=0.5,
                    help="drop documents whose share of repeated character 10-grams exceeds this")
    cl.add_argument("--min-letter-ratio", type=float, default=0.5,
                    help="drop documents with fewer letters (any script) per non-space character")
    cl.add_argument("--unicode", choices=["NFKC", "NFKC-strict", "NFC", "none"], default="NFKC",
                    help="Unicode normalisation (NFKC keeps Chinese full-width punctuation; NFKC-strict folds it too)")
    cl.add_argument("--skip-bad", action="store_true", help="skip malformed records (and count them) instead of failing")
    cl.set_defaults(func=cmd_clean)


def _check_out(out: str, folder: bool) -> Path:
    """--out must not lie under a file, nor be a file where a folder goes (or the reverse)."""
    path = Path(out)
    for parent in path.parents:  # nearest first: the first one that exists must be a folder
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"--out {out}: {parent} is a file, not a folder")
            break
    if path.exists() and path.is_dir() != folder:
        raise UserError(f"--out {out}: is a {'file' if folder else 'folder'}; give a "
                        f"{'folder' if folder else 'file path'}")
    return path


def cmd_demo(args: argparse.Namespace) -> int:
    out = _check_out(args.out, folder=True)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=out))
    try:
        # Written aside first: a user's file that happens to share a demo file's name must
        # survive; one identical to ours (an earlier `data demo`) may be replaced.
        fresh = write_demo(tmp)
        files = sorted(f.relative_to(tmp) for f in tmp.rglob("*") if f.is_file())
        clash = [str(rel) for rel in files if (out / rel).exists()
                 and not ((out / rel).is_file() and filecmp.cmp(tmp / rel, out / rel, shallow=False))]
        if clash:
            raise UserError(f"{out}: {', '.join(clash)} already exist(s) with other content; refusing "
                            f"to overwrite (move them, or choose another --out)")
        for rel in files:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, out / rel)
        for name, path in fresh.items():
            print(f"{name:<10} {out / path.relative_to(tmp)}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 1:
        raise UserError("--workers must be at least 1")
    _check_out(args.out, folder=True)
    t0 = time.time()
    res = prepare(args.kind, args.data, args.out, args.tokenizer, skip_bad=args.skip_bad,
                  workers=args.workers, log=print)
    m = res.meta
    size = sum(s["size"] for s in m["sources"])
    if not res.reused:
        secs = time.time() - t0
        print(f"tokenised {size / 1e6:.1f} MB in {secs:.1f} s ({size / 1e6 / max(secs, 1e-9):.1f} MB/s, "
              f"{m['workers']} worker(s))")
    print(f"{m['kind']}: {m['records']} records, {m['docs']} docs, {m['tokens']} tokens ({m['dtype']}) in {res.path}")
    if m["skipped"]:
        print(f"skipped {m['skipped']} bad record(s); first: " + "; ".join(m["skipped_examples"]))
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    weights = None
    if args.weights:
        try:
            weights = [float(w) for w in args.weights.split(",")]
        except ValueError:
            raise UserError(f"--weights must be comma-separated numbers, got {args.weights!r}") from None
    cfg = CleanConfig(unicode_form=args.unicode, min_chars=args.min_chars, max_chars=args.max_chars,
                      max_repetition=args.max_repetition, min_letter_ratio=args.min_letter_ratio,
                      minhash_threshold=args.minhash_threshold, skip_bad=args.skip_bad)
    _check_out(args.out, folder=False)
    report = clean(args.data, args.out, cfg, weights)
    print(report.table())
    if sum(report.removed["bad"]):
        print(f"skipped {sum(report.removed['bad'])} bad record(s)")
    print(f"wrote {sum(report.written)} documents to {args.out}")
    return 0
