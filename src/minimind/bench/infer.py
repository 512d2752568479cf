"""`minimind bench infer`: generation latency and throughput, side by side with transformers.

Contract: `add_arguments(parser)` and `run(args) -> int` (wired by cli/bench_cmds.py). One run:
1. builds a randomly initialised model of `--preset` (speed does not depend on the weights),
2. measures our engine and `transformers.generate` on the *same* weights (exported with
   `minimind.interop.export_hf`), greedy, at each batch size: time to first token (a 1-token
   generation: prefill + one sample) and decode tokens/s = B * (N - 1) / (T(N) - T(1)),
3. starts `minimind serve` in a subprocess and streams from `--clients` concurrent clients,
   reporting aggregate completion tokens/s and the clients' mean / p90 time to first token.
With `--compile` it also times the compiled decode step and says whether its greedy tokens equal
the eager engine's.
Each timing is the best of `--repeats` runs, interleaved across engines (the CPU may be shared); the
last column gives the ratio to transformers repeat by repeat (median and range), a measure of the
noise. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..checkpoint import save_model
from ..config import get_preset
from ..infer import Engine, SamplingParams
from ..interop import export_hf
from ..model import MiniMindLM
from ..tokenizer import default_tokenizer_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="small", help="model preset (default small)")
    p.add_argument("--prompt-len", type=int, default=128, help="prompt tokens per row (default 128)")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per row (default 64)")
    p.add_argument("--batch-sizes", default="1,16", help="comma-separated batch sizes (default 1,16)")
    p.add_argument("--repeats", type=int, default=3, help="best of this many runs per timing (default 3)")
    p.add_argument("--clients", type=int, default=32, help="concurrent streaming clients for the server test")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="time engines by wall clock (default) or by this process's CPU time: on a shared machine "
                        "with --threads 1, CPU time is barely disturbed by other processes")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers baseline")
    p.add_argument("--no-server", action="store_true", help="skip the server throughput test")
    p.add_argument("--compile", action="store_true",
                   help="also time our engine with its compiled decode step (infer/static_decode.py)")


def _timed(fn, clock=time.perf_counter) -> float:
    t = clock()
    fn()
    return clock() - t


def _ours(model, compile: bool = False):
    """make(prompts, n) for our engine; one Engine per batch size, reused like the HF model is
    (a server keeps its engine: weight packing and allocations happen once, not per request)."""
    engines = {}

    def make(prompts, n: int):
        if len(prompts) not in engines:
            engines[len(prompts)] = Engine(model, max_batch_size=len(prompts), compile=compile)
        params = SamplingParams(max_new_tokens=n, temperature=0, stop_token_ids=[])
        return lambda: engines[len(prompts)].generate(prompts, params)
    return make


def _same_greedy(engines: dict, prompts, n: int) -> str:
    """Whether the compiled decode step generated the eager engine's greedy tokens, row by row."""
    eager, compiled = (engines[k](prompts, n)() for k in ("minimind", "minimind, compiled decode"))
    same = sum(a.output_ids == b.output_ids for a, b in zip(eager, compiled))
    verdict = "identical" if same == len(prompts) else "DIFFERENT in some rows"
    return f"compiled decode, batch {len(prompts)}: greedy tokens {verdict} to eager ({same}/{len(prompts)} rows)"


def _hf(hf_model):
    def make(prompts, n: int):
        ids = torch.tensor(prompts, device=hf_model.device)
        mask = torch.ones_like(ids)

        def go():
            with torch.inference_mode():
                hf_model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                                  eos_token_id=None, pad_token_id=0)
        return go
    return make


def _measure(engines: dict, prompts, n: int, repeats: int, clock=time.perf_counter) -> dict[str, tuple]:
    """{name: make(prompts, n) -> run} -> {name: (TTFT s, decode tokens/s, [decode tokens/s per repeat])}.

    Runs are interleaved (A1 B1 A1 B1 ..., then AN BN ...), so a burst of load from other processes
    hits every engine alike. TTFT and the headline rate use the best of `repeats` (approximating an
    unloaded machine); each repeat's own rate, B * (N - 1) / (T(N) - T(1)) from that repeat, is kept
    too, so that ratios can be taken repeat by repeat (`run` prints their median and range).
    `clock` may be `time.process_time` (CPU seconds of this process), which other processes barely disturb.
    """
    for make in engines.values():
        make(prompts, 2)()  # warm-up (allocator, kernels, weight packing, compilation)
    t1 = {k: [] for k in engines}
    tn = {k: [] for k in engines}
    for _ in range(repeats):
        for k, make in engines.items():
            t1[k].append(_timed(make(prompts, 1), clock))
        for k, make in engines.items():
            tn[k].append(_timed(make(prompts, n), clock))

    def rate(a: float, b: float) -> float:
        return len(prompts) * (n - 1) / max(b - a, 1e-9)
    return {k: (min(t1[k]), rate(min(t1[k]), min(tn[k])), [rate(a, b) for a, b in zip(t1[k], tn[k])])
            for k in engines}


def _ratio_spread(ours: list[float], theirs: list[float]) -> str:
    """Median (min-max) over repeats of our decode rate / theirs in the same repeat."""
    r = sorted(a / b for a, b in zip(ours, theirs))
    return f"{statistics.median(r):.2f}x ({r[0]:.2f}-{r[-1]:.2f})"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _clients(url: str, count: int, prompt: str, n: int) -> tuple[float, list[float], int]:
    import httpx  # the benchmark client only

    async def one(i: int, client) -> tuple[float, int]:
        body = {"messages": [{"role": "user", "content": f"{prompt} {i}"}], "max_tokens": n, "temperature": 0.8,
                "seed": i, "stream": True, "stream_options": {"include_usage": True}}
        t0, ttft, tokens = time.perf_counter(), None, 0
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                delta = chunk["choices"][0]["delta"] if chunk["choices"] else {}
                if ttft is None and (delta.get("content") or delta.get("reasoning_content")):
                    ttft = time.perf_counter() - t0  # first generated text, reasoning or answer
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        return ttft if ttft is not None else time.perf_counter() - t0, tokens

    limits = httpx.Limits(max_connections=count + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        t = time.perf_counter()
        results = await asyncio.gather(*(one(i, client) for i in range(count)))
        wall = time.perf_counter() - t
    return wall, [r[0] for r in results], sum(r[1] for r in results)


def _server(model, args) -> dict:
    """Serve the model from a subprocess and hit it with `--clients` streaming clients."""
    import httpx  # the benchmark client only

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_model(model, Path(tmp) / "ckpt", tokenizer_dir=default_tokenizer_dir())
        port = _free_port()
        env = dict(os.environ)
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        cmd = [sys.executable, "-m", "minimind", "serve", "--ckpt", str(ckpt), "--port", str(port),
               "--max-batch-size", str(args.clients), "--max-len", "1024", "--device", args.device]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 120
            while True:
                try:
                    httpx.get(url + "/health", timeout=2)
                    break
                except httpx.TransportError:
                    if time.time() > deadline or proc.poll() is not None:
                        raise RuntimeError("the benchmark server did not start")
                    time.sleep(0.2)
            prompt = "Tell me a story about a small language model."
            asyncio.run(_clients(url, 2, prompt, 4))  # warm-up
            out = {}
            for count in (1, args.clients):
                wall, ttfts, tokens = asyncio.run(_clients(url, count, prompt, args.new_tokens))
                ttfts.sort()
                out[count] = {"tokens_per_s": tokens / wall, "ttft_mean": statistics.mean(ttfts),
                              "ttft_p90": ttfts[int(0.9 * (len(ttfts) - 1))], "tokens": tokens, "wall": wall}
            return out
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = get_preset(args.preset)
    cfg.max_seq_len = max(args.prompt_len + args.new_tokens, 1024)
    model = MiniMindLM(cfg).eval().to(args.device)
    sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]  # "" -> server test only
    g = torch.Generator().manual_seed(1)
    print(f"# minimind bench infer: preset {args.preset}, prompt {args.prompt_len} tokens, {args.new_tokens} new, "
          f"greedy, device {args.device}, torch threads {torch.get_num_threads()}, best of {args.repeats}, "
          f"{args.clock} clock, load average {os.getloadavg()[0]:.1f}, "
          f"GOMP_SPINCOUNT {os.environ.get('GOMP_SPINCOUNT', 'unset')}")
    hf_model = None
    if not args.no_hf and sizes:
        import transformers  # optional: the baseline

        with tempfile.TemporaryDirectory() as tmp:
            hf_model = transformers.AutoModelForCausalLM.from_pretrained(export_hf(model, tmp), dtype=torch.float32)
        hf_model = hf_model.eval().to(args.device)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if sizes:
        print("\n| engine | batch | TTFT (ms) | decode tokens/s | decode vs transformers | same, per repeat: median (range) |"
              "\n|---|---|---|---|---|---|")
    engines = {"minimind": _ours(model)}
    if args.compile:
        engines["minimind, compiled decode"] = _ours(model, compile=True)
    hf_name = None
    if hf_model is not None:
        hf_name = f"transformers {transformers.__version__}"
        engines[hf_name] = _hf(hf_model)
    checks = []  # compiled vs eager greedy tokens, printed after the table
    for b in sizes:
        prompts = torch.randint(16, cfg.vocab_size, (b, args.prompt_len), generator=g).tolist()
        res = _measure(engines, prompts, args.new_tokens, args.repeats, clock)
        for name, (ttft, rate, rates) in res.items():
            ratio = f"{rate / res[hf_name][1]:.2f}x" if hf_name else "-"
            spread = _ratio_spread(rates, res[hf_name][2]) if hf_name else "-"
            print(f"| {name} | {b} | {ttft * 1000:.1f} | {rate:.1f} | {ratio} | {spread} |", flush=True)
        if args.compile:
            checks.append(_same_greedy(engines, prompts, args.new_tokens))
    for line in checks:
        print(line)
    if not args.no_server:
        res = _server(model, args)
        print("\n| server clients | completion tokens/s (all clients) | mean TTFT (ms) | p90 TTFT (ms) | tokens | wall (s) |")
        print("|---|---|---|---|---|---|")
        for count, r in res.items():
            print(f"| {count} | {r['tokens_per_s']:.1f} | {r['ttft_mean'] * 1000:.0f} | {r['ttft_p90'] * 1000:.0f} | "
                  f"{r['tokens']} | {r['wall']:.1f} |", flush=True)
    return 0
