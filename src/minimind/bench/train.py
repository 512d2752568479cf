"""`minimind bench train`: training-step throughput, MFU and peak memory; packed vs padded batches.

Contract: `add_arguments(parser)` and `run(args) -> int` (wired by cli/bench_cmds.py).

Part 1 times full training steps (forward, backward, fused AdamW) on random tokens of shape
[batch, seq_len] for each combination of eager/compiled x fp32/bf16 asked for, and prints
tokens/s, MFU and peak memory. MFU = tokens/s * training FLOPs per token (`flops_per_token`) /
peak FLOP/s; the peak is the GPU's dense bf16 figure, or on CPU a measured fp32 matmul rate (so
CPU MFU reads "fraction of what this CPU's matmuls reach").

Part 2 (`--data-bench`, on by default) shows what packing buys on the demo data: the same model
and shape, fed (a) packed batches from `minimind.data.make_loader` and (b) one document or
conversation per row, truncated and padded to seq_len (how upstream MiniMind batches). It reports
*real* tokens/s (padding excluded): the step costs the same either way, so the ratio is the
fraction of compute that padding wastes.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch

from ..chat import render_conversation
from ..config import IGNORE_INDEX, flops_per_token, get_preset
from ..data.demo import write_demo
from ..data.loader import make_loader
from ..devices import pick_device
from ..model import MiniMindLM
from ..model.cpu_linear import replaces_mkl, use_onednn_linears
from ..tokenizer import load_tokenizer
from ..train.metrics import measured_matmul_flops, peak_flops


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="small", help="model preset (default: small)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration (after --warmup)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd steps")
    p.add_argument("--dtype", choices=["fp32", "bf16", "both"], default="both")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--cpu-matmul", choices=["onednn", "mkl", "both"], default="both",
                   help="CPU, eager fp32: the linear layers on oneDNN (what the trainer uses), on PyTorch's "
                        "default MKL, or both side by side (default)")
    p.add_argument("--no-data-bench", dest="data_bench", action="store_false",
                   help="skip the packed-vs-padded comparison on the demo data")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def _peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS"


def _make_step(model, optimizer, device, dtype, compiled: bool):
    fwd = torch.compile(model) if compiled else model
    amp = dtype != torch.float32

    def step(input_ids: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            loss = fwd(input_ids.to(device, non_blocking=True), labels=labels.to(device, non_blocking=True)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _kernel_choices(choice: str, device: torch.device, dtype: torch.dtype, compiled: bool) -> list[str | None]:
    """Which matmul kernels to time for one row: a choice only exists for eager fp32 on a CPU whose
    BLAS is MKL (None: the one default path)."""
    if device.type != "cpu" or dtype != torch.float32 or compiled or not replaces_mkl():
        return [None]
    return ["mkl", "onednn"] if choice == "both" else [choice]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_batches(step, batches: list[dict], warmup: int, device: torch.device) -> tuple[float, int, int]:
    """Run warmup + timed steps; return (seconds, total tokens, real tokens) of the timed part."""
    for b in batches[:warmup]:
        step(b["input_ids"], b["labels"])
    _sync(device)
    t0 = time.perf_counter()
    total = real = 0
    for b in batches[warmup:]:
        step(b["input_ids"], b["labels"])
        total += b["input_ids"].numel()
        real += b["real"]
    _sync(device)
    return time.perf_counter() - t0, total, real


def _padded_batches(kind: str, path: Path, tok, seq_len: int, batch_size: int, n: int) -> list[dict]:
    """Upstream-style batches: one example per row, truncated to seq_len, right-padded."""
    rows: list[tuple[list[int], list[int]]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if kind == "pretrain":
                ids = [tok.bos_id, *tok.encode(rec["text"]), tok.eos_id][:seq_len]
                labels = list(ids)
            else:
                ids, mask = render_conversation(tok, rec["conversations"])
                ids, mask = ids[:seq_len], mask[:seq_len]
                labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
            rows.append((ids, labels))
            if len(rows) == n * batch_size:
                break
    batches = []
    for i in range(0, len(rows) - batch_size + 1, batch_size):
        chunk = rows[i:i + batch_size]
        ids = torch.full((batch_size, seq_len), tok.pad_id, dtype=torch.long)
        labels = torch.full((batch_size, seq_len), IGNORE_INDEX, dtype=torch.long)
        for r, (a, b) in enumerate(chunk):
            ids[r, :len(a)] = torch.tensor(a)
            labels[r, :len(b)] = torch.tensor(b)
        batches.append({"input_ids": ids, "labels": labels, "real": sum(len(a) for a, _ in chunk)})
    return batches


def _packed_batches(kind: str, path: Path, tok, seq_len: int, batch_size: int, n: int) -> list[dict]:
    it = iter(make_loader(kind, path, tok, seq_len, batch_size, seed=0))
    out = []
    for _ in range(n):
        b = next(it)
        ids = b["input_ids"]
        # Real tokens: everything except the right padding of each row (trailing pad ids).
        is_pad = (ids == tok.pad_id).flip(-1).cumprod(-1).sum(-1)
        out.append({"input_ids": ids, "labels": b["labels"], "real": int(ids.numel() - is_pad.sum())})
    return out


def run(args: argparse.Namespace) -> int:
    device = pick_device(args.device)
    cfg = get_preset(args.preset)
    B, T = args.batch_size, args.seq_len
    fpt = flops_per_token(cfg, T)
    dtypes = {"fp32": [torch.float32], "bf16": [torch.bfloat16], "both": [torch.float32, torch.bfloat16]}[args.dtype]
    modes = [False, True] if args.compile else [False]
    cpu_peak = measured_matmul_flops(device, torch.float32, n=1024, seconds=1.0) if device.type == "cpu" else None
    print(f"bench train: preset {args.preset}, batch {B} x seq {T}, {args.steps} timed steps, device {device}, "
          f"{fpt / 1e9:.3f} GFLOP/token")
    if cpu_peak:
        print(f"CPU reference: fp32 1024^3 matmul reaches {cpu_peak / 1e9:.1f} GFLOP/s (MFU denominator)")
    results = []
    print(f"{'mode':<13} {'dtype':<6} {'tokens/s':>10} {'MFU':>7} {'step ms':>9}  peak memory")
    for compiled in modes:
        for dtype in dtypes:
            for kernels in _kernel_choices(args.cpu_matmul, device, dtype, compiled):
                torch.manual_seed(0)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                model = MiniMindLM(cfg).to(device).train()
                if kernels == "onednn":
                    use_onednn_linears(model)
                opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type in ("cuda", "cpu"))
                step = _make_step(model, opt, device, dtype, compiled)
                x = torch.randint(0, cfg.vocab_size, (B, T))
                batches = [{"input_ids": x, "labels": x, "real": x.numel()}] * (args.warmup + args.steps)
                secs, total, _ = _time_batches(step, batches, args.warmup, device)
                tok_s = total / secs
                peak = cpu_peak or peak_flops(device, dtype)
                mfu = tok_s * fpt / peak if peak else None
                name = ("compiled" if compiled else "eager") + (f"+{kernels}" if kernels else "")
                dt, mem = str(dtype).removeprefix("torch."), _peak_memory(device)
                print(f"{name:<13} {dt:<6} {tok_s:>10,.0f} {(f'{100 * mfu:.1f}%' if mfu else 'n/a'):>7} "
                      f"{1000 * secs / args.steps:>9.1f}  {mem}")
                results.append({"mode": name, "dtype": dt, "tokens_per_s": tok_s, "mfu": mfu, "memory": mem})
                del model, opt, step

    if args.data_bench:
        # bf16 where it is fast (CUDA); on CPU fp32, which is what CPU training uses.
        data_dtype = torch.bfloat16 if device.type == "cuda" and torch.bfloat16 in dtypes else dtypes[0]
        results.extend(_data_bench(args, cfg, device, data_dtype))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _data_bench(args, cfg, device, dtype) -> list[dict]:
    B, T = args.batch_size, args.seq_len
    tok = load_tokenizer(None)
    out = []
    print(f"\npacked vs padded-to-{T} on the demo data ({str(dtype).removeprefix('torch.')}, eager): real tokens/s")
    with tempfile.TemporaryDirectory() as tmp:
        files = write_demo(tmp)
        for kind in ("pretrain", "sft"):
            torch.manual_seed(0)
            model = MiniMindLM(cfg).to(device).train()
            if args.cpu_matmul != "mkl" and device.type == "cpu":  # as the trainer runs
                use_onednn_linears(model)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type in ("cuda", "cpu"))
            step = _make_step(model, opt, device, dtype, False)
            n = args.warmup + args.steps
            feeds = {"padded": _padded_batches(kind, files[kind], tok, T, B, n),
                     "packed": _packed_batches(kind, files[kind], tok, T, B, n)}
            # Alternate padded and packed steps so both see the same machine load (CPUs are shared).
            acc = {how: [0.0, 0, 0] for how in feeds}
            for i in range(n):
                for how, batches in feeds.items():
                    secs, total, real = _time_batches(step, batches[i:i + 1], 1 if i < args.warmup else 0, device)
                    if i >= args.warmup:
                        acc[how] = [acc[how][0] + secs, acc[how][1] + total, acc[how][2] + real]
            row = {how: (real / secs, real / total) for how, (secs, total, real) in acc.items()}
            gain = row["packed"][0] / row["padded"][0]
            print(f"  {kind:<8} padded {row['padded'][0]:>9,.0f} real tok/s ({100 * row['padded'][1]:.0f}% real)   "
                  f"packed {row['packed'][0]:>9,.0f} ({100 * row['packed'][1]:.0f}% real)   x{gain:.2f}")
            out.append({"data": kind, "padded_real_tok_s": row["padded"][0], "padded_real_frac": row["padded"][1],
                        "packed_real_tok_s": row["packed"][0], "packed_real_frac": row["packed"][1]})
    return out
