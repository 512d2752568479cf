"""Benchmark `minimind data prepare`: tokenisation throughput and peak memory vs input size.

Generates a synthetic but realistic JSONL pretraining corpus (Chinese and English documents
re-assembled from the shuffled paragraphs and sentences of the embedded demo corpus: real prose,
not templates) in a temporary directory, runs `minimind data prepare` on it as a subprocess and
samples the memory of the whole process tree (the parent and its worker processes) every 50 ms.

Memory is reported two ways: the sum of RSS over the tree (counts pages shared between the forked
workers once per process, so it overstates) and the sum of PSS (proportional set size: shared
pages split among their sharers, so the tree total is honest). Bounded memory means the peak
stays flat when the input grows 4x. Besides wall-clock MB/s it reports MB per CPU-second of the
whole tree, which moves much less than MB/s when other processes share the cores.

    .venv/bin/python benchmarks/data_prepare.py --sizes 20 --workers 2 --repeats 3

Before -> after on the same machine in one run: put the older code's `src` folder somewhere
(`git archive COMMIT src | tar -x -C /tmp/base`) and pass `--baseline /tmp/base/src`; each repeat
then runs the baseline and the current code back to back (interleaved, same input) and the last
lines give the medians and their ratio. The generated files are deleted afterwards (use --keep DIR
to keep them in DIR).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from minimind.data.demo import source_documents
from minimind.tokenizer import load_tokenizer


def corpus_pieces() -> tuple[list[str], list[str]]:
    """Paragraphs and sentences of the demo corpus (Chinese news/reviews, English prose/docs)."""
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


def run_prepare(data: Path, out: Path, workers: int, src: str | None = None) -> dict:
    """One `data prepare` run as a subprocess (of the code in `src` when given): time, CPU, memory."""
    cmd = [sys.executable, "-m", "minimind", "data", "prepare", "--kind", "pretrain", "--data", str(data),
           "--out", str(out), "--workers", str(workers)]
    env = dict(os.environ, PYTHONPATH=src) if src else None  # PYTHONPATH wins over the editable install
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
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
    # RUSAGE_CHILDREN: CPU of the whole waited-for tree (the pool workers are waited for by the
    # prepare process), and the largest max-RSS of any single descendant (a cross-check)
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": secs, "cpu": cpu, "tokens": meta["tokens"], "docs": meta["docs"], "peak_rss": peak_rss,
            "peak_pss": peak_pss, "max_single_rss": cpu1.ru_maxrss * 1024}


def report(label: str, mb: float, r: dict) -> None:
    print(f"  {label:>10} {mb:.1f} MB: {r['seconds']:.2f} s, {mb / r['seconds']:.2f} MB/s, "
          f"{mb / max(r['cpu'], 1e-9):.2f} MB/cpu-s, {r['tokens'] / r['seconds'] / 1e6:.2f} M tokens/s, "
          f"{mb * 1e6 / r['tokens']:.2f} bytes/token, peak tree RSS {r['peak_rss'] / 2**20:.0f} MiB, "
          f"PSS {r['peak_pss'] / 2**20:.0f} MiB", flush=True)


def median_row(mb: float, runs: list[dict]) -> dict:
    secs = statistics.median(r["seconds"] for r in runs)
    return {"mb": mb, "seconds": secs, "mbps": mb / secs, "cpu": statistics.median(r["cpu"] for r in runs),
            "tokens": runs[0]["tokens"], "peak_rss": max(r["peak_rss"] for r in runs),
            "peak_pss": max(r["peak_pss"] for r in runs), "n": len(runs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="50,200", help="input sizes in MB, comma-separated")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeats", type=int, default=1, help="runs per size (medians are reported)")
    ap.add_argument("--baseline", action="append", default=[], metavar="[NAME=]SRC",
                    help="a `src` folder of other code to run interleaved (repeatable)")
    ap.add_argument("--keep", default=None, help="keep the generated data in this folder")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mm-bench-prepare-"))
    work.mkdir(parents=True, exist_ok=True)
    codes = [(b.split("=", 1)[0] if "=" in b else f"baseline{i or ''}", b.split("=", 1)[-1])
             for i, b in enumerate(args.baseline)] + [("current", None)]
    print(f"BPE engine of the current code: {load_tokenizer().bulk_engine}", flush=True)
    rows: dict[str, list[dict]] = {name: [] for name, _ in codes}
    load0 = os.getloadavg()
    try:
        for mb in [float(s) for s in args.sizes.split(",")]:
            data = work / f"synthetic_{mb:g}mb.jsonl"
            t0 = time.time()
            n_docs = generate(data, mb)
            size = data.stat().st_size / 1e6
            print(f"generated {size:.1f} MB ({n_docs} docs) in {time.time() - t0:.1f} s", flush=True)
            runs: dict[str, list[dict]] = {name: [] for name, _ in codes}
            for _ in range(args.repeats):
                for name, src in codes:  # interleaved: both see the same machine load
                    runs[name].append(run_prepare(data, work / f"prepared_{mb:g}", args.workers, src))
                    report(name, size, runs[name][-1])
            for name, _ in codes:
                rows[name].append(median_row(size, runs[name]))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    load1 = os.getloadavg()
    print(f"\nload average (1 min) {load0[0]:.1f} at start, {load1[0]:.1f} at end; {os.cpu_count()} CPUs")
    print("| code | input | workers | time (median) | MB/s | MB/cpu-s | Mtokens/s | peak RSS (tree sum) | peak PSS (tree sum) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, _ in codes:
        for r in rows[name]:
            print(f"| {name} | {r['mb']:.0f} MB | {args.workers} | {r['seconds']:.2f} s | {r['mbps']:.2f} | "
                  f"{r['mb'] / max(r['cpu'], 1e-9):.2f} | {r['tokens'] / r['seconds'] / 1e6:.2f} | "
                  f"{r['peak_rss'] / 2**20:.0f} MiB | {r['peak_pss'] / 2**20:.0f} MiB |")
    for i, r in enumerate(rows["current"]):
        line = (f"data prepare: {r['mb']:.1f} MB at {r['mbps']:.2f} MB/s with {args.workers} worker(s) "
                f"(median of {r['n']}), peak tree PSS {r['peak_pss'] / 2**20:.0f} MiB")
        for name, _ in codes[:-1]:
            b = rows[name][i]
            line += f"; {name} {b['mbps']:.2f} MB/s -> {r['mbps'] / b['mbps']:.2f}x"
        print(line)


if __name__ == "__main__":
    main()
