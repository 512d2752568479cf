"""Benchmark one CPU training step at large vocabularies, with and without the chunked head + CE.

For each (preset, vocabulary, loss path) a fresh subprocess builds the model (fp32, CPU), runs one
warm-up AdamW step (so the optimizer state exists), then times a second step while a thread
samples the process RSS every 2 ms. Reported per row:
- step peak: the highest RSS during the measured step minus the RSS just before it (weights and
  optimizer state are already there, so this is what the step itself adds: gradients,
  activations and, on the plain path, the logits and their float32 copies);
- total peak: the process's peak RSS (`ru_maxrss`), weights and AdamW state included;
- tokens/s of the measured step (B x T / its wall time).
Loss paths: "chunked" is `model(ids, labels=ids).loss` (model/lm_loss.py: the [B*T, V] logits
never exist, chunks of ~8M logits do); "plain" is `model(ids).logits` then
`F.cross_entropy(logits.float())`, what a stage that takes `.logits` does.

    .venv/bin/python benchmarks/large_vocab.py                       # the table of the report
    .venv/bin/python benchmarks/large_vocab.py --runs small:32000:4:512 --paths chunked

Run it alone: RSS is per process, but tokens/s depend on what else shares the cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import threading
import time

import torch
import torch.nn.functional as F

from minimind.config import get_preset
from minimind.model import MiniMindLM

DEFAULT_RUNS = ("small:32000:2:512", "small:151936:2:512", "qwen3-0.6b:151936:1:512")


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def one(preset: str, vocab: int, batch: int, seq: int, path: str) -> dict:
    """Measure one configuration in this process (run by `main` in a fresh subprocess)."""
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    cfg = dataclasses.replace(get_preset(preset), vocab_size=vocab, max_seq_len=max(seq, 512))
    model = MiniMindLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, vocab, (batch, seq))

    def step() -> float:
        if path == "chunked":
            loss = model(ids, labels=ids).loss
        else:
            logits = model(ids).logits
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    step()  # warm-up: AdamW allocates its state here
    base, peak, done = rss_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.perf_counter()
    loss = step()
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    params = sum(p.numel() for p in model.parameters())
    return {"preset": preset, "vocab": vocab, "batch": batch, "seq": seq, "path": path, "params": params,
            "step_peak_gb": (max(peak[0], rss_bytes()) - base) / 1e9,
            "total_peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
            "tokens_per_s": batch * seq / seconds, "loss": loss,
            "logits_gb": batch * seq * vocab * 4 / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), help="PRESET:VOCAB:BATCH:SEQ ...")
    ap.add_argument("--paths", nargs="+", default=["plain", "chunked"], choices=["plain", "chunked"])
    ap.add_argument("--one", nargs=5, metavar=("PRESET", "VOCAB", "BATCH", "SEQ", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        p, v, b, s, path = args.one
        print(json.dumps(one(p, int(v), int(b), int(s), path)))
        return
    print(f"load average before: {os.getloadavg()}", file=sys.stderr)
    print("| preset | vocab | B x T | loss path | params | float32 logits | step peak (RSS) | total peak | tokens/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        preset, vocab, batch, seq = run.split(":")
        for path in args.paths:
            out = subprocess.run([sys.executable, __file__, "--one", preset, vocab, batch, seq, path],
                                 capture_output=True, text=True)
            if out.returncode:
                print(f"| {preset} | {vocab} | {batch} x {seq} | {path} | failed: {out.stderr.strip()[-200:]} |")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {preset} | {r['vocab']:,} | {batch} x {seq} | {path} | {r['params'] / 1e6:.0f}M | "
                  f"{r['logits_gb']:.2f} GB | {r['step_peak_gb']:.2f} GB | {r['total_peak_gb']:.2f} GB | "
                  f"{r['tokens_per_s']:.0f} |", flush=True)
    print(f"load average after: {os.getloadavg()}", file=sys.stderr)


if __name__ == "__main__":
    main()
