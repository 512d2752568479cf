"""Benchmark `minimind data prepare`: tokenisation throughput and peak memory vs input size.

Generates a synthetic but realistic JSONL pretraining corpus (Chinese and English documents
re-assembled from the shuffled paragraphs and sentences of the embedded demo corpus: real prose,
not templates) in a temporary directory, runs `minimind data prepare` on it as a subprocess and
samples the memory of the whole process tree (the parent and its worker processes) every 50 ms.

Memory is reported two ways: the sum of RSS over the tree (counts pages shared between the forked
workers once per process, so it overstates) and the sum of PSS (proportional set size: shared
pages split among their sharers, so the tree total is honest). Bounded memory means the peak
stays flat when the input grows 4x.

    .venv/bin/python benchmarks/data_prepare.py --sizes 50,200 --workers 2

The generated files are deleted afterwards (use --keep DIR to keep them in DIR).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def corpus_pieces() -> tuple[list[str], list[str]]:
    """Paragraphs and sentences of the demo corpus (Chinese news/reviews, English prose/docs)."""
    from minimind.data.demo import source_documents

    paragraphs, sentences = [], []
    for doc in source_documents():
        for para in doc["text"].split("\n"):
            para = para.strip()
            if len(para) > 20:
                paragraphs.append(para)
                sentences += [s for s in re.split(r"(?<=[。！？.!?])\s*", para) if len(s) > 5]
    return paragraphs, sentences


def generate(path: Path, target_mb: float, seed: int = 0) -> int:
    """Write ~target_mb of JSONL documents; returns the number of documents."""
    rng = random.Random(seed)
    paragraphs, sentences = corpus_pieces()
    target = int(target_mb * 1e6)
    n = size = 0
    with open(path, "w", encoding="utf-8") as f:
        while size < target:
            # a document = a few real paragraphs plus one paragraph of shuffled real sentences,
            # so documents differ (no accidental duplicates) but read like the source text
            parts = rng.sample(paragraphs, rng.randint(1, 6))
            parts.insert(rng.randint(0, len(parts)), "".join(rng.sample(sentences, rng.randint(2, 8))))
            line = json.dumps({"text": "\n".join(parts)}, ensure_ascii=False) + "\n"
            f.write(line)
            size += len(line.encode("utf-8"))
            n += 1
    return n


def tree_memory(root: int) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) in bytes over `root` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    rss = pss = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return rss, pss


def run_prepare(data: Path, out: Path, workers: int) -> dict:
    cmd = [sys.executable, "-m", "minimind", "data", "prepare", "--kind", "pretrain", "--data", str(data),
           "--out", str(out), "--workers", str(workers)]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_rss = peak_pss = 0
    while proc.poll() is None:
        rss, pss = tree_memory(proc.pid)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.05)
    secs = time.time() - t0
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed ({proc.returncode}):\n{stdout}\n{stderr}")
    meta = json.loads((out / "meta.json").read_text())
    # RUSAGE_CHILDREN: the largest max-RSS of any single waited-for descendant (a cross-check)
    max_single = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {"seconds": secs, "tokens": meta["tokens"], "docs": meta["docs"], "peak_rss": peak_rss,
            "peak_pss": peak_pss, "max_single_rss": max_single}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="50,200", help="input sizes in MB, comma-separated")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--keep", default=None, help="keep the generated data in this folder")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mm-bench-prepare-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for mb in [float(s) for s in args.sizes.split(",")]:
            data = work / f"synthetic_{mb:g}mb.jsonl"
            t0 = time.time()
            n_docs = generate(data, mb)
            size = data.stat().st_size
            print(f"generated {size / 1e6:.1f} MB ({n_docs} docs) in {time.time() - t0:.1f} s", flush=True)
            r = run_prepare(data, work / f"prepared_{mb:g}", args.workers)
            r.update(mb=size / 1e6, mbps=size / 1e6 / r["seconds"])
            rows.append(r)
            print(f"  {r['mb']:.1f} MB: {r['seconds']:.1f} s, {r['mbps']:.2f} MB/s, "
                  f"{r['tokens'] / r['seconds'] / 1e6:.2f} M tokens/s, {r['mb'] * 1e6 / r['tokens']:.2f} bytes/token, "
                  f"peak tree RSS {r['peak_rss'] / 2**20:.0f} MiB, PSS {r['peak_pss'] / 2**20:.0f} MiB", flush=True)
            shutil.rmtree(work / f"prepared_{mb:g}", ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n| input | workers | time | MB/s | Mtokens/s | peak RSS (tree sum) | peak PSS (tree sum) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mb']:.0f} MB | {args.workers} | {r['seconds']:.1f} s | {r['mbps']:.2f} | "
              f"{r['tokens'] / r['seconds'] / 1e6:.2f} | {r['peak_rss'] / 2**20:.0f} MiB | {r['peak_pss'] / 2**20:.0f} MiB |")


if __name__ == "__main__":
    main()
