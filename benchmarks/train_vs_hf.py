"""Training throughput: our trainer vs transformers' Qwen3ForCausalLM in a plain PyTorch loop.

    python benchmarks/train_vs_hf.py [--data PRETRAIN.jsonl] [--steps 4] [--warmup 1] [--threads N]

Both sides train the same shape (hidden 512, 8 layers, 8 heads / 4 KV heads, head_dim 64, QK-norm,
FFN 1664, vocab 6400, tied embeddings, fp32) from the same initial weights (ours exported with
`interop.to_hf_state_dict`) on the same packed batches (seq 512 x batch 8, drawn once from our
pretraining loader), with the same recipe: fused AdamW (lr 5e-4, betas 0.9/0.95, weight decay 0.1
on matrices) and gradient clipping at 1.0.

- ours: `Trainer` set up exactly as `minimind pretrain` does, one optimizer step =
  `minimind.train.step.accumulate` + `update` (the loop's own functions);
- HF: `loss = model(input_ids, labels=labels).loss; loss.backward(); clip; opt.step(); zero_grad`
  (sdpa attention, transformers' default).

`--hf-batching padded` gives the HF side upstream MiniMind's pretraining batches instead: one document
per row, `[BOS] + its first seq-2 tokens + [EOS]`, right-padded to the sequence length, padding not
scored (upstream's model is numerically this Qwen3 model: its converter writes native Qwen3 folders
with identical logits, see shared/reference). That is the comparison issue 15 starts from (2.2-2.4x
in real tokens/s, "almost entirely thanks to packing"); throughput is then counted in real
(non-padding) tokens on both sides. The losses then differ (different batches).

Steps are interleaved (ours, HF, ours, HF, ...) so both see the same machine load; each step is
timed with the same clock (time.perf_counter) and its CPU time (time.process_time) is printed too.
Steady state = the median over the timed steps (after --warmup untimed ones). The first-step losses
are printed as a check that both compute the same thing (they agree to ~1e-5). The load average is
printed before and after: on a shared machine, compare the ratio, not the absolute tokens/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from minimind.cli import main as minimind_main
from minimind.config import get_preset
from minimind.interop import hf_config, to_hf_state_dict
from minimind.data.formats import iter_examples
from minimind.model import MiniMindLM
from minimind.tokenizer import load_tokenizer
from minimind.train.config import TrainConfig
from minimind.train.optim import param_groups
from minimind.train.stages import get_stage
from minimind.train.step import accumulate, update
from minimind.train.trainer import Trainer

SHAPE = dict(num_kv_heads=4, qk_norm=True, intermediate_size=1664)  # on top of the `small` preset


def _hf_model(ours: MiniMindLM):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    hf = dict(hf_config(ours.config))
    hf.pop("architectures", None)
    model = Qwen3ForCausalLM(Qwen3Config(**hf, attn_implementation="sdpa"))
    missing, unexpected = model.load_state_dict(to_hf_state_dict(ours), strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    model.tie_weights()
    return model.train()


def _timed(fn) -> tuple[float, float, float]:
    w, c = time.perf_counter(), time.process_time()
    loss = fn()
    return time.perf_counter() - w, time.process_time() - c, loss


def padded_batches(data: Path, n: int, seq_len: int, batch_size: int) -> list[dict]:
    """Upstream MiniMind's pretraining batches: one document per row, BOS + text + EOS, truncated and
    right-padded to `seq_len`; labels -100 on the padding (transformers shifts them itself)."""
    tok = load_tokenizer()
    rows = []
    for text in iter_examples("pretrain", [data]):
        ids = [tok.bos_id] + tok.encode(text)[:seq_len - 2] + [tok.eos_id]
        rows.append(ids + [tok.pad_id] * (seq_len - len(ids)))
        if len(rows) == n * batch_size:
            break
    if len(rows) < n * batch_size:
        raise SystemExit(f"{data}: {len(rows)} documents, {n * batch_size} needed for {n} padded steps")
    ids = torch.tensor(rows).view(n, batch_size, seq_len)
    return [{"input_ids": x, "labels": x.masked_fill(x == tok.pad_id, -100)} for x in ids]


def run(data: Path, out: Path, steps: int, warmup: int, seq_len: int, batch_size: int, hf_batching: str) -> None:
    n = steps + warmup
    cfg = TrainConfig(out=str(out / "run"), data=[str(data)], seq_len=seq_len, batch_size=batch_size,
                      max_steps=n, progress=False, eval_batches=0, num_samples=0)
    torch.manual_seed(0)
    ours = MiniMindLM(dataclasses.replace(get_preset("small"), **SHAPE))
    hf = _hf_model(ours)  # same weights, copied before either trains
    trainer = Trainer(get_stage("pretrain")(cfg), model=ours)
    trainer._setup()  # noqa: SLF001 - the loop's own setup, without fit()'s save/eval/plots
    try:
        it = iter(trainer.batches)
        batches = [next(it) for _ in range(n)]
        hf_batches = batches if hf_batching == "packed" else padded_batches(data, n, seq_len, batch_size)
        hf_opt = torch.optim.AdamW(param_groups(hf.named_parameters(), cfg.weight_decay), lr=cfg.lr,
                                   betas=(cfg.beta1, cfg.beta2), eps=1e-8, fused=True)

        def ours_step(batch) -> float:
            loss, _, _ = accumulate(trainer, iter([batch]))
            update(trainer)
            return loss

        def hf_step(batch) -> float:
            loss = hf(input_ids=batch["input_ids"], labels=batch["labels"]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(hf.parameters(), cfg.grad_clip)
            hf_opt.step()
            hf_opt.zero_grad(set_to_none=True)
            return float(loss.detach())

        print(f"load average before: {os.getloadavg()}; torch threads {torch.get_num_threads()}; "
              f"{sum(p.numel() for p in ours.parameters()):,} parameters; {batches[0]['input_ids'].numel()} "
              f"computed tokens per step; HF batching: {hf_batching}")
        times: dict[str, list[tuple[float, float, int]]] = {"minimind": [], "hf": []}
        for i in range(n):
            for name, step, batch in (("minimind", ours_step, batches[i]), ("hf", hf_step, hf_batches[i])):
                real = int((batch["labels"] != -100).sum()) if name == "hf" else batch["input_ids"].numel()
                wall, cpu, loss = _timed(lambda: step(batch))
                print(f"step {i + 1} {'(warm-up) ' if i < warmup else ''}{name:8s} loss {loss:.5f}  "
                      f"{wall:6.2f} s wall  {cpu:6.2f} s cpu  {real / wall:7.1f} real tok/s ({real} real tokens)")
                if i >= warmup:
                    times[name].append((wall, cpu, real))
        print(f"load average after: {os.getloadavg()}")
        rate = {k: statistics.median(r / w for w, _, r in v) for k, v in times.items()}
        cpu = {k: statistics.median(c for _, c, _ in v) for k, v in times.items()}
        for k in rate:
            print(f"{k:8s}: {rate[k]:7.1f} real tokens/s steady (median of {len(times[k])}), "
                  f"{cpu[k]:.2f} s CPU per step")
        print(f"ratio minimind / hf: {rate['minimind'] / rate['hf']:.2f}x real tokens/s")
    finally:
        trainer.lock.release()


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="pretraining JSONL (default: `minimind data demo` into a temp dir)")
    p.add_argument("--steps", type=int, default=4, help="timed steps per side (default: 4)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per side first (default: 1)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--hf-batching", choices=["packed", "padded"], default="packed",
                   help="HF side: our packed batches (default) or upstream MiniMind's padded rows")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            minimind_main(["data", "demo", "--out", str(Path(tmp) / "demo")])
            data = Path(tmp) / "demo" / "pretrain.jsonl"
        run(data, Path(tmp), args.steps, args.warmup, args.seq_len, args.batch_size, args.hf_batching)


if __name__ == "__main__":
    cli()
