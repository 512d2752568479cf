"""`minimind quickstart`: the whole pipeline on the embedded demo data, sized for a laptop CPU.

Contract: `quickstart(out_dir, device="auto")`
1. writes the demo JSONL files to `OUT/data/` (`minimind.data.demo.write_demo`) and tokenises them
   once into prepared shards (`minimind.data.prepare.prepare`, reused on re-runs);
2. pretrains the `tiny` preset with the shipped tokenizer into `OUT/pretrain/`;
3. fine-tunes it on the demo conversations into `OUT/sft/`;
4. with `full=True` (`--full`), continues with DPO, reasoning SFT and GRPO, each stage starting
   from the previous one's checkpoint (`OUT/dpo/`, `OUT/reason/`, `OUT/grpo/`);
5. prints a few chat replies of the last model;
6. evaluates the demo suites (`minimind.eval.run_demo`: held-out text bits per byte, the C-Eval-layout
   multiple choice, verifiable generation, tool calls; DEMO_EVAL_LIMIT items of each) on the final
   checkpoint, or with `--full` on every stage's, appends each to its run's eval.jsonl and prints one
   table, a row per stage. A re-run reuses a stage's logged result for the same checkpoint. The eval
   is outside the planned training time (SHARES leave 10% of `--minutes` for data, evaluation and
   chat); with the default limit it is about 5 s of CPU time per `tiny` checkpoint.
Each run directory holds checkpoints, metrics.jsonl, loss.png and lr.png (and eval.jsonl). Re-running continues an
interrupted stage (`--resume`) and skips finished ones. On CUDA the Trainer picks the GPU and bf16
by itself (device/dtype "auto").

Budget: the demo must finish in minutes on any machine, so the step counts are not fixed: a
3-step probe measures this machine's training speed, then pretraining gets about 60% and SFT
about 30% of `--minutes` (default 9), within fixed minimum and maximum step counts (a GPU hits the
maximum). The chosen counts are printed; `--pretrain-steps` / `--sft-steps` override them.
A probe only sees the first seconds, and a machine that gets busier later would overshoot, so the
planned stages also run with a wall-clock limit (`--max-minutes`, see `budget.WallClock`): the
trainer re-measures its speed as it goes and ends the stage early, its LR decay shortened to match.
Pretraining may take its 60%; SFT what is left of the first 90% (at least half its own share).
Step counts given by flag are honoured exactly, without a clock.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ..errors import UserError

PRETRAIN = dict(preset="tiny", seq_len=256, batch_size=8, lr=2e-3, warmup_steps=30, min_lr_ratio=0.1,
                eval_batches=4, num_samples=2, sample_tokens=32)
SFT = dict(seq_len=256, batch_size=8, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1,
           eval_batches=4, num_samples=2, sample_tokens=48)
# With a budget of a few million tokens, more and smaller steps learn more per token than few big
# ones, hence batch 8. Minimums keep the demo meaningful on a slow machine; a GPU hits the maximums.
PRETRAIN_STEPS = (120, 6000)  # (min, max)
SFT_STEPS = (60, 1500)
SHARES = (0.6, 0.3)  # of the time budget: pretraining, SFT (the rest: data, evaluation, chat)
SFT_FLOOR = 0.5  # SFT gets at least this fraction of its share, even when pretraining ran late
# `--full` continues SFT -> DPO -> reasoning -> GRPO, each from the previous stage's checkpoint.
# Small fixed budgets (a few minutes each on a laptop CPU); settings as in benchmarks/posttrain.py.
POSTTRAIN = (
    ("dpo", "dpo", dict(max_steps=60, batch_size=8, seq_len=256, lr=5e-5, beta=0.1)),
    ("reason", "sft", dict(max_steps=60, batch_size=8, seq_len=256, lr=5e-4, no_think_ratio=0.3, tag_weight=2.0)),
    ("grpo", "rl", dict(max_steps=30, batch_size=8, group_size=4, max_new_tokens=96, lr=3e-5, beta_kl=0.02,
                        rewards="correct:1,format:0.2")),
)
# The demo eval is bounded so the budget stays honest: 25 documents / prompts / tool-call cases and
# 25 questions per MCQ subject (100) per checkpoint.
DEMO_EVAL_LIMIT = 25
QUESTIONS = ["你好，你是谁？", "Who are you?", "What is the capital of France?", "请用一句话介绍一下人工智能。"]


def probe_tokens_per_second(device: str = "auto", seq_len: int = 256, batch_size: int = 8) -> float:
    """Tokens/s of the fastest of three `tiny` training steps (after a warm-up step) on random tokens.

    The fastest, because a shared machine slows some steps for reasons that come and go."""
    import torch

    from ..config import get_preset
    from ..model import MiniMindLM
    from ..devices import pick_device
    from .build import resolve_dtype

    dev = pick_device(device)
    dtype = resolve_dtype("auto", dev)
    model = MiniMindLM(get_preset("tiny")).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), device=dev)
    times = []
    for _ in range(4):
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
    return batch_size * seq_len / min(times[1:])


def plan_steps(tok_s: float, minutes: float) -> tuple[int, int]:
    """Pretrain and SFT step counts that fit `minutes` at `tok_s` training tokens per second."""
    def steps(share: float, bounds: tuple[int, int], opts: dict) -> int:
        per_step = opts["seq_len"] * opts["batch_size"]
        return int(min(max(share * minutes * 60 * tok_s / per_step, bounds[0]), bounds[1]))

    return steps(SHARES[0], PRETRAIN_STEPS, PRETRAIN), steps(SHARES[1], SFT_STEPS, SFT)


def sft_minutes(minutes: float, elapsed: float) -> float:
    """SFT's wall-clock limit: what is left of the pretrain + SFT shares after `elapsed` minutes."""
    return max(sum(SHARES) * minutes - elapsed, SFT_FLOOR * SHARES[1] * minutes)


def _schedule(options: dict, steps: int, evals: int) -> dict:
    """Fix the budget, and evaluate/save a few times along the way."""
    every = max(1, steps // evals)
    return dict(options, max_steps=steps, eval_every=every, save_every=every)


def _finished(run_dir: Path, steps: int) -> bool:
    """The stage reached its end: `steps`, or the earlier end its wall-clock limit set."""
    state = run_dir / "checkpoints" / "latest"
    if not state.is_file():
        return False
    meta = run_dir / "checkpoints" / state.read_text().strip() / "trainer_state.json"
    if not meta.is_file():
        return False
    saved = json.loads(meta.read_text())
    return saved.get("step", 0) >= min(steps, saved.get("total_steps") or steps)


def _stage(name: str, run_dir: Path, options: dict) -> None:
    from .stages import get_stage
    from .trainer import Trainer

    stage_cls = get_stage(name)
    if _finished(run_dir, options["max_steps"]):
        print(f"== {name}: already done in {run_dir}, skipping")
        return
    resume = (run_dir / "checkpoints" / "latest").is_file()
    limit = f" (at most {options['max_minutes']:.2g} min)" if options.get("max_minutes") else ""
    print(f"== {name}: {options['max_steps']} steps{limit} -> {run_dir}" + (" (resuming)" if resume else ""))
    cfg = stage_cls.config_class(out=str(run_dir), resume=resume, **options)
    cfg.validate()
    Trainer(stage_cls(cfg)).fit()


def chat_replies(ckpt: Path, questions: list[str], max_new_tokens: int = 80, seed: int = 0) -> list[str]:
    """Answer each question with the checkpoint (thinking off), batched through the inference engine."""
    from ..chat import render_prompt, split_reasoning
    from ..infer import SamplingParams, load_engine

    engine = load_engine(ckpt)
    prompts = [render_prompt(engine.tokenizer, [{"role": "user", "content": q}], thinking=False) for q in questions]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.6, top_k=20, seed=seed)
    return [split_reasoning(s.text)[1].strip() for s in engine.generate(prompts, params)]


def _logged_demo_eval(run_dir: Path, checkpoint: str, limit: int) -> dict | None:
    """The last demo eval of `checkpoint` with this limit in `<run>/eval.jsonl`, if it is complete."""
    from ..eval.run import DEMO_TASKS

    log = run_dir / "eval.jsonl"
    lines = [json.loads(x) for x in log.read_text(encoding="utf-8").splitlines() if x.strip()] if log.is_file() else []
    mine = [x for x in lines if x.get("suite") == "demo" and x.get("checkpoint") == checkpoint
            and x.get("settings", {}).get("limit") == limit]
    last = [x for x in mine if x.get("created") == mine[-1].get("created")] if mine else []
    if sorted(x["task"] for x in last) != sorted(DEMO_TASKS):
        return None
    return {"checkpoint": checkpoint, "created": last[0]["created"], "results": last}


def demo_eval(run_dir: Path, suites: dict[str, Path], device: str = "auto", limit: int = DEMO_EVAL_LIMIT) -> dict:
    """The demo suites (written once by `write_demo`) on the run's final checkpoint, appended to
    `<run>/eval.jsonl` (or read back from it on a re-run); returns the report (`minimind.eval.report`)."""
    from ..checkpoint import resolve_checkpoint
    from ..eval import Settings, run_demo
    from ..eval.report import append_run_log, make_report
    from ..eval.run import load
    from ..devices import pick_device

    name = resolve_checkpoint(run_dir).name
    report = _logged_demo_eval(run_dir, name, limit)
    if report is None:
        settings = Settings(limit=limit, device=str(pick_device(device)))
        report = make_report(str(run_dir), run_demo(load(run_dir, settings), settings, suites))
        append_run_log(run_dir, report)
    return report


def summary_line(report: dict) -> str:
    """"ppl 2.4100 bits/byte, mcq 31.00%, ... (6.2 s)": the headline figure of each demo task."""
    from ..eval.report import HEADLINE, format_value

    parts = []
    for r in report["results"]:
        name = HEADLINE.get(r["task"], "accuracy")
        parts.append(f"{r['task']} {format_value(name, r.get(name))}" + (" bits/byte" if name == "bits_per_byte" else ""))
    seconds = sum(r.get("seconds", 0.0) for r in report["results"])
    return ", ".join(parts) + f" ({seconds:.1f} s)"


def print_demo_evals(reports: dict[str, dict], limit: int) -> None:
    from ..eval.report import format_summary

    print(f"\n== demo eval, one row per stage ({limit} documents / prompts / cases per suite, {limit} questions "
          f"per MCQ subject; held out from training; see docs/evaluation.md):")
    print(format_summary(list(reports), list(reports.values())))


def quickstart(out_dir: str | Path, device: str = "auto", pretrain_steps: int | None = None,
               sft_steps: int | None = None, force: bool = False, minutes: float = 9.0,
               full: bool = False, posttrain_steps: int | None = None, eval_limit: int = DEMO_EVAL_LIMIT) -> dict:
    from ..checkpoint import resolve_checkpoint
    from ..data.demo import suite_paths, write_demo
    from ..data.prepare import prepare

    out = Path(out_dir)
    if force and out.exists():
        if not (out / "pretrain").exists() and not (out / "data").exists():
            raise UserError(f"{out}: does not look like a quickstart directory; refusing to delete it")
        shutil.rmtree(out)
    start = time.monotonic()
    print(f"MiniMind quickstart -> {out.resolve()}")
    data = write_demo(out / "data")
    prepared = {}
    for kind in ("pretrain", "sft"):
        prepared[kind] = prepare(kind, [data[kind]], out / "data" / f"{kind}_prepared").path
    plan_file = out / "plan.json"  # a re-run (resume) must keep the step counts of the first run
    if plan_file.is_file():
        plan = json.loads(plan_file.read_text())
    else:
        tok_s = probe_tokens_per_second(device)
        auto_pre, auto_sft = plan_steps(tok_s, minutes)
        plan = {"tokens_per_s_probe": round(tok_s), "pretrain_steps": pretrain_steps or auto_pre,
                "sft_steps": sft_steps or auto_sft}
        plan_file.write_text(json.dumps(plan, indent=2) + "\n")
    if posttrain_steps is not None and plan.get("posttrain_steps") != posttrain_steps:
        plan["posttrain_steps"] = posttrain_steps  # remembered, like the other budgets, for re-runs
        plan_file.write_text(json.dumps(plan, indent=2) + "\n")
    print(f"speed probe: {plan['tokens_per_s_probe']:,} tokens/s -> pretrain {plan['pretrain_steps']} steps, "
          f"SFT {plan['sft_steps']} steps (budget ~{minutes:g} min)")
    pre = _schedule(dict(PRETRAIN, data=[str(prepared["pretrain"])], device=device), plan["pretrain_steps"], 3)
    if pretrain_steps is None:  # planned from the probe: also bounded by the clock
        pre["max_minutes"] = SHARES[0] * minutes
    _stage("pretrain", out / "pretrain", pre)
    sft = _schedule(dict(SFT, data=[str(prepared["sft"])], init=str(out / "pretrain"), device=device),
                    plan["sft_steps"], 2)
    if sft_steps is None:
        sft["max_minutes"] = sft_minutes(minutes, (time.monotonic() - start) / 60)
    evals: dict[str, dict] = {}

    def evaluate(stage: str) -> None:
        if eval_limit > 0:
            evals[stage] = demo_eval(out / stage, suite_paths(data["eval"]), device, eval_limit)
            print(f"demo eval of {stage}: " + summary_line(evals[stage]))

    if full:
        evaluate("pretrain")
    _stage("sft", out / "sft", sft)

    last = "sft"
    if full:  # each post-training stage starts from the previous stage's checkpoint
        evaluate("sft")
        for name, data_key, options in POSTTRAIN:
            steps = plan.get("posttrain_steps") or options["max_steps"]
            opts = dict(options, data=[str(data[data_key])], init=str(out / last), device=device,
                        max_steps=steps, eval_batches=0, num_samples=0, save_every=steps)
            _stage(name, out / name, opts)
            evaluate(name)
            last = name
    final = resolve_checkpoint(out / last)
    print(f"\n== chat with the {last} model (thinking off):")
    for q, a in zip(QUESTIONS, chat_replies(final, QUESTIONS)):
        print(f"  user: {q}\n  minimind: {a}\n")
    if not full:
        evaluate(last)
    if evals:
        print_demo_evals(evals, eval_limit)
    minutes = (time.monotonic() - start) / 60
    stages = ["pretrain", "sft"] + ([name for name, _, _ in POSTTRAIN] if full else [])
    print(f"done in {minutes:.1f} min. Run directories: {', '.join(str(out / n) for n in stages)} "
          f"(checkpoints/, metrics.jsonl, loss.png, lr.png)")
    print(f"next: minimind chat --ckpt {out / last} --no-think")
    return {"data": out / "data", **{n: out / n for n in stages}, "checkpoint": final, "evals": evals}
