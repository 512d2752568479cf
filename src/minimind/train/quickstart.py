"""`minimind quickstart`: the whole pipeline on the embedded demo data, sized for a laptop CPU.

Contract: `quickstart(out_dir, device="auto")`
1. writes the demo JSONL files to `OUT/data/` (`minimind.data.demo.write_demo`) and tokenises them
   once into prepared shards (`minimind.data.prepare.prepare`, reused on re-runs);
2. pretrains the `tiny` preset with the shipped tokenizer into `OUT/pretrain/`;
3. fine-tunes it on the demo conversations into `OUT/sft/`;
4. prints a few chat replies of the SFT model.
Each run directory holds checkpoints, metrics.jsonl, loss.png and lr.png. Re-running continues an
interrupted stage (`--resume`) and skips finished ones. On CUDA the Trainer picks the GPU and bf16
by itself (device/dtype "auto").

Budget: on a 2-core CPU the two stages take about 8 minutes together (measured numbers are in
docs/benchmarks.md); the step counts below are chosen for that.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ..errors import UserError

PRETRAIN = dict(preset="tiny", seq_len=256, batch_size=16, lr=2e-3, warmup_steps=30, min_lr_ratio=0.1,
                max_steps=600, eval_every=200, save_every=200, eval_batches=4, num_samples=2, sample_tokens=32)
SFT = dict(seq_len=256, batch_size=16, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1, max_steps=200,
           eval_every=100, save_every=100, eval_batches=4, num_samples=2, sample_tokens=48)
QUESTIONS = ["你好，你是谁？", "Who are you?", "What is the capital of France?", "请用一句话介绍一下人工智能。"]


def _finished(run_dir: Path, steps: int) -> bool:
    state = run_dir / "checkpoints" / "latest"
    if not state.is_file():
        return False
    meta = run_dir / "checkpoints" / state.read_text().strip() / "trainer_state.json"
    return meta.is_file() and json.loads(meta.read_text()).get("step", 0) >= steps


def _stage(name: str, run_dir: Path, options: dict) -> None:
    from .stages import get_stage
    from .trainer import Trainer

    stage_cls = get_stage(name)
    if _finished(run_dir, options["max_steps"]):
        print(f"== {name}: already done in {run_dir}, skipping")
        return
    resume = (run_dir / "checkpoints" / "latest").is_file()
    print(f"== {name}: {options['max_steps']} steps -> {run_dir}" + (" (resuming)" if resume else ""))
    cfg = stage_cls.config_class(out=str(run_dir), resume=resume, **options)
    cfg.validate()
    Trainer(stage_cls(cfg)).fit()


def chat_replies(ckpt: Path, questions: list[str], max_new_tokens: int = 80, seed: int = 0) -> list[str]:
    """Answer each question with the checkpoint (thinking off), using the training sampler."""
    import torch

    from ..chat import render_prompt, split_reasoning
    from ..checkpoint import load_model
    from ..tokenizer import load_tokenizer
    from .sampling import sample

    tok = load_tokenizer(ckpt)
    model = load_model(ckpt)
    gen = torch.Generator().manual_seed(seed)
    replies = []
    for q in questions:
        prompt = render_prompt(tok, [{"role": "user", "content": q}], thinking=False)
        ids = sample(model, prompt, max_new_tokens, temperature=0.6, top_k=20, eos_id=tok.eos_id, generator=gen)
        text = tok.decode(ids, skip_special_tokens=True)
        replies.append(split_reasoning(text)[1].strip())
    return replies


def quickstart(out_dir: str | Path, device: str = "auto", pretrain_steps: int | None = None,
               sft_steps: int | None = None, force: bool = False) -> dict[str, Path]:
    from ..checkpoint import resolve_checkpoint
    from ..data.demo import write_demo
    from ..data.prepare import prepare

    out = Path(out_dir)
    if force and out.exists():
        if not (out / "pretrain").exists() and not (out / "data").exists():
            raise UserError(f"{out}: does not look like a quickstart directory; refusing to delete it")
        shutil.rmtree(out)
    start = time.perf_counter()
    print(f"MiniMind quickstart -> {out.resolve()}")
    data = write_demo(out / "data")
    prepared = {}
    for kind in ("pretrain", "sft"):
        prepared[kind] = prepare(kind, [data[kind]], out / "data" / f"{kind}_prepared").path
    pre = dict(PRETRAIN, data=[str(prepared["pretrain"])], device=device)
    if pretrain_steps:
        pre.update(max_steps=pretrain_steps, eval_every=0, save_every=0)
    _stage("pretrain", out / "pretrain", pre)
    sft = dict(SFT, data=[str(prepared["sft"])], init=str(out / "pretrain"), device=device)
    if sft_steps:
        sft.update(max_steps=sft_steps, eval_every=0, save_every=0)
    _stage("sft", out / "sft", sft)

    final = resolve_checkpoint(out / "sft")
    print("\n== chat with the SFT model (thinking off):")
    for q, a in zip(QUESTIONS, chat_replies(final, QUESTIONS)):
        print(f"  user: {q}\n  minimind: {a}\n")
    minutes = (time.perf_counter() - start) / 60
    print(f"done in {minutes:.1f} min. Run directories: {out / 'pretrain'}, {out / 'sft'} "
          f"(checkpoints/, metrics.jsonl, loss.png, lr.png)")
    print(f"next: minimind chat --ckpt {out / 'sft'}")
    return {"data": out / "data", "pretrain": out / "pretrain", "sft": out / "sft", "checkpoint": final}
