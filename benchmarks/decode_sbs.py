"""Decoding side by side in one process: our Engine vs transformers' `generate` on the same weights.

    .venv/bin/python benchmarks/decode_sbs.py                       # batch 1 and 16, 1 thread, CPU time
    .venv/bin/python benchmarks/decode_sbs.py --before /tmp/old     # also an older engine (see --before)
    .venv/bin/python benchmarks/decode_sbs.py --profile             # aten ops and ms per decode step

A randomly initialised `small` model (speed does not depend on the weights) is exported with
`export_hf`, so transformers runs the very same weights. Greedy, fixed-length prompts, every row
generates `--new-tokens` tokens (no stop token). Decode tokens/s = B * (N - 1) / (T(N) - T(1)), with
T(1) the time of a 1-token generation (prefill + first sample). The engines run interleaved, one
repeat each in turn, and the median of the repeats is reported: load from other processes then hits
every engine alike. `--clock cpu` (default) times with `time.process_time`, the CPU time of this
process: with `--threads 1` other processes barely change it (they still share caches and memory
bandwidth), which is what makes a comparison on a shared machine meaningful.

`--before DIR`: DIR holds a package `minimind_before`, a frozen copy of an older `src/minimind`, made
with `git archive <rev> src/minimind | tar -x -C DIR && mv DIR/src/minimind DIR/minimind_before`
(its modules import each other relatively, so the copy runs beside the current package). Its model
gets the same weights.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import tempfile
import time

import torch

from minimind.config import get_preset
from minimind.infer import Engine, SamplingParams
from minimind.interop import export_hf
from minimind.model import MiniMindLM


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-sizes", default="1,16")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--before", default=None, help="folder holding a frozen package `minimind_before`")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers")
    ap.add_argument("--profile", action="store_true", help="count aten ops per decode step (torch.profiler)")
    return ap.parse_args(argv)


def build_engines(args, model: MiniMindLM) -> dict:
    """name -> make(prompts, n) -> a zero-argument callable running one generation."""
    engines = {}

    def ours(engine_cls, m, params_cls):
        cache = {}

        def make(prompts, n):
            eng = cache.setdefault(len(prompts), engine_cls(m, max_batch_size=len(prompts)))
            params = params_cls(max_new_tokens=n, temperature=0, stop_token_ids=[])
            return lambda: [s.output_ids for s in eng.generate(prompts, params)]
        return make

    if args.before:
        sys.path.insert(0, args.before)
        old = importlib.import_module("minimind_before")
        old_model_mod = importlib.import_module("minimind_before.model")
        old_cfg = importlib.import_module("minimind_before.config").get_preset(args.preset)
        old_cfg.max_seq_len = model.config.max_seq_len
        old_model = old_model_mod.MiniMindLM(old_cfg).eval()
        old_model.load_state_dict(model.state_dict())
        infer = importlib.import_module("minimind_before.infer")
        engines["before"] = ours(infer.Engine, old_model, infer.SamplingParams)
        print(f"before: {os.path.dirname(old.__file__)}")
    engines["ours"] = ours(Engine, model, SamplingParams)
    if not args.no_hf:
        import transformers  # heavy optional dependency

        with tempfile.TemporaryDirectory() as tmp:
            hf = transformers.AutoModelForCausalLM.from_pretrained(export_hf(model, tmp), dtype=torch.float32).eval()

        def make_hf(prompts, n):
            ids = torch.tensor(prompts)

            def go():
                with torch.inference_mode():
                    out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                                      min_new_tokens=n, eos_token_id=None, pad_token_id=0)
                return out[:, ids.shape[1]:].tolist()
            return go
        engines[f"transformers {transformers.__version__}"] = make_hf
    return engines


def aten_ops(fn) -> tuple[int, int]:
    """aten operator calls while `fn` runs: (all, nested ones included; top-level only, i.e. the
    ones dispatched from Python, each paying the per-call overhead)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    ops = [e for e in prof.events() if e.name.startswith("aten::")]
    top = [e for e in ops if e.cpu_parent is None or "::" not in e.cpu_parent.name]
    return len(ops), len(top)


def run_batch(args, engines: dict, B: int, vocab: int, clock) -> None:
    g = torch.Generator().manual_seed(B)
    prompts = torch.randint(16, vocab, (B, args.prompt_len), generator=g).tolist()
    outs = {k: mk(prompts, 16)() for k, mk in engines.items()}  # also the warm-up (packing, caches)
    ref = outs["ours"]
    print(f"B={B} greedy outputs identical to ours: " + ", ".join(f"{k} {v == ref}" for k, v in outs.items() if k != "ours"))
    steps = args.new_tokens - 1
    if args.profile:
        for k, mk in engines.items():
            (full, full_top), (one, one_top) = aten_ops(mk(prompts, args.new_tokens)), aten_ops(mk(prompts, 1))
            print(f"B={B} {k:24s} aten ops per decode step: {(full - one) / steps:7.1f} "
                  f"(top-level {(full_top - one_top) / steps:7.1f})")
    rates = {k: [] for k in engines}
    ttft = {k: [] for k in engines}
    for _ in range(args.repeats):
        for k, mk in engines.items():
            one, full = mk(prompts, 1), mk(prompts, args.new_tokens)
            t0 = clock(); one(); t1 = clock(); full(); t2 = clock()  # noqa: E702
            rates[k].append(B * steps / ((t2 - t1) - (t1 - t0)))
            ttft[k].append(t1 - t0)
    med = {k: statistics.median(v) for k, v in rates.items()}
    hf = next((k for k in engines if k.startswith("transformers")), None)
    print(f"| engine | batch | decode tok/s (median) | ms per step | TTFT ms | runs | vs transformers |")
    print("|---|---|---|---|---|---|---|")
    for k in engines:
        ratio = f"{med[k] / med[hf]:.2f}x" if hf else "-"
        print(f"| {k} | {B} | {med[k]:.1f} | {1000 * B / med[k]:.2f} | {1000 * statistics.median(ttft[k]):.1f} "
              f"| {[round(x) for x in rates[k]]} | {ratio} |")
    if "before" in med:
        print(f"B={B} ours / before: {med['ours'] / med['before']:.2f}x")
    print(f"load average {os.getloadavg()[0]:.1f}", flush=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = get_preset(args.preset)
    cfg.max_seq_len = max(1024, args.prompt_len + args.new_tokens)
    model = MiniMindLM(cfg).eval()
    engines = build_engines(args, model)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"preset {args.preset}, clock {args.clock}, threads {torch.get_num_threads()}, repeats {args.repeats}, "
          f"prompt {args.prompt_len}, new tokens {args.new_tokens}, torch {torch.__version__}, load {os.getloadavg()}")
    for B in (int(b) for b in args.batch_sizes.split(",") if b):
        run_batch(args, engines, B, cfg.vocab_size, clock)


if __name__ == "__main__":
    main()
