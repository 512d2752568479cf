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
   multiple choice, verifiable generation, tool calls; the recipe's eval_limit items of each) on the final
   checkpoint, or with `--full` on every stage's, appends each to its run's eval.jsonl and prints one
   table, a row per stage. A re-run reuses a stage's logged result for the same checkpoint. The eval
   is outside the planned training time (the shares leave 10% of `--minutes` for data, evaluation
   and chat); with the default limit it is about 5 s of CPU time per `tiny` checkpoint.
Each run directory holds checkpoints, metrics.jsonl, loss.png and lr.png (and eval.jsonl). Re-running continues an
interrupted stage (`--resume`) and skips finished ones. On CUDA the Trainer picks the GPU and bf16
by itself (device/dtype "auto").

The plan is data, not code: `minimind/recipes/quickstart.json` holds every stage's options, the
budget shares, step bounds, the eval limit and the chat questions (`quickstart_plan()`). Each
stage runs through `recipes.run_stage`, which resumes an unfinished run and reuses a finished one.

Budget: the demo must finish in minutes on any machine, so the step counts are not fixed: a
3-step probe measures this machine's training speed, then pretraining gets about 60% and SFT
about 30% of `--minutes` (default 9; the recipe's shares), within fixed minimum and maximum step
counts (a GPU hits the maximum). The chosen counts are printed; `--pretrain-steps` /
`--sft-steps` override them.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..chat import render_prompt, split_reasoning
from ..config import get_preset
from ..data.demo import suite_paths, write_demo
from ..data.prepare import prepare
from ..devices import pick_device, training_dtype
from ..errors import UserError
from ..eval import Settings, run_demo
from ..eval.report import HEADLINE, append_run_log, format_summary, format_value, make_report
from ..eval.run import DEMO_TASKS, load
from ..infer import SamplingParams, load_engine
from ..locator import resolve_checkpoint
from ..model import MiniMindLM
from ..recipes import read_recipe
from .recipes import run_stage


def quickstart_plan() -> dict[str, Any]:
    """The shipped plan (`minimind/recipes/quickstart.json`)."""
    return read_recipe("quickstart")[0]


def _budgeted(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The stages whose step counts are sized from the speed probe (pretrain and SFT)."""
    return [s for s in plan["stages"] if "share" in s]


def probe_tokens_per_second(device: str = "auto", seq_len: int = 256, batch_size: int = 8) -> float:
    """Tokens/s of the fastest of three `tiny` training steps (after a warm-up step) on random tokens.

    The fastest, because a shared machine slows some steps for reasons that come and go."""
    dev = pick_device(device)
    dtype = training_dtype(dev, "auto")
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


def plan_steps(tok_s: float, minutes: float, plan: dict[str, Any] | None = None) -> tuple[int, ...]:
    """Step counts of the budgeted stages (pretrain, SFT) that fit `minutes` at `tok_s` tokens/s."""
    steps = []
    for stage in _budgeted(plan or quickstart_plan()):
        per_step = stage["options"]["seq_len"] * stage["options"]["batch_size"]
        low, high = stage["steps"]
        steps.append(int(min(max(stage["share"] * minutes * 60 * tok_s / per_step, low), high)))
    return tuple(steps)


def stage_minutes(index: int, minutes: float, elapsed: float, plan: dict[str, Any] | None = None) -> float:
    """Wall-clock limit of budgeted stage `index`: the first gets its share of `minutes`; a later one
    what is left of the shares up to its own after `elapsed` minutes, but at least `sft_floor` of its share."""
    plan = plan or quickstart_plan()
    shares = [s["share"] for s in _budgeted(plan)]
    if index == 0:
        return shares[0] * minutes
    return max(sum(shares[:index + 1]) * minutes - elapsed, plan["sft_floor"] * shares[index] * minutes)


def _schedule(options: dict, steps: int, evals: int) -> dict:
    """Fix the budget, and evaluate/save a few times along the way."""
    every = max(1, steps // evals)
    return dict(options, max_steps=steps, eval_every=every, save_every=every)


def chat_replies(ckpt: Path, questions: list[str], max_new_tokens: int = 80, seed: int = 0) -> list[str]:
    """Answer each question with the checkpoint (thinking off), batched through the inference engine."""
    engine = load_engine(ckpt)
    prompts = [render_prompt(engine.tokenizer, [{"role": "user", "content": q}], thinking=False) for q in questions]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.6, top_k=20, seed=seed)
    return [split_reasoning(s.text)[1].strip() for s in engine.generate(prompts, params)]


def _logged_demo_eval(run_dir: Path, checkpoint: str, limit: int) -> dict | None:
    """The last demo eval of `checkpoint` with this limit in `<run>/eval.jsonl`, if it is complete."""
    log = run_dir / "eval.jsonl"
    lines = [json.loads(x) for x in log.read_text(encoding="utf-8").splitlines() if x.strip()] if log.is_file() else []
    mine = [x for x in lines if x.get("suite") == "demo" and x.get("checkpoint") == checkpoint
            and x.get("settings", {}).get("limit") == limit]
    last = [x for x in mine if x.get("created") == mine[-1].get("created")] if mine else []
    if sorted(x["task"] for x in last) != sorted(DEMO_TASKS):
        return None
    return {"checkpoint": checkpoint, "created": last[0]["created"], "results": last}


def demo_eval(run_dir: Path, suites: dict[str, Path], device: str = "auto", limit: int | None = None) -> dict:
    """The demo suites (written once by `write_demo`) on the run's final checkpoint, appended to
    `<run>/eval.jsonl` (or read back from it on a re-run); returns the report (`minimind.eval.report`)."""
    limit = quickstart_plan()["eval_limit"] if limit is None else limit
    name = resolve_checkpoint(run_dir).name
    report = _logged_demo_eval(run_dir, name, limit)
    if report is None:
        settings = Settings(limit=limit, device=str(pick_device(device)))
        report = make_report(str(run_dir), run_demo(load(run_dir, settings), settings, suites))
        append_run_log(run_dir, report)
    return report


def summary_line(report: dict) -> str:
    """"ppl 2.4100 bits/byte, mcq 31.00%, ... (6.2 s)": the headline figure of each demo task."""
    parts = []
    for r in report["results"]:
        name = HEADLINE.get(r["task"], "accuracy")
        parts.append(f"{r['task']} {format_value(name, r.get(name))}" + (" bits/byte" if name == "bits_per_byte" else ""))
    seconds = sum(r.get("seconds", 0.0) for r in report["results"])
    return ", ".join(parts) + f" ({seconds:.1f} s)"


def print_demo_evals(reports: dict[str, dict], limit: int) -> None:
    print(f"\n== demo eval, one row per stage ({limit} documents / prompts / cases per suite, {limit} questions "
          f"per MCQ subject; held out from training; see docs/evaluation.md):")
    print(format_summary(list(reports), list(reports.values())))


def _prepare_dir(out: Path, force: bool) -> None:
    if force and out.exists():
        if not (out / "pretrain").exists() and not (out / "data").exists():
            raise UserError(f"{out}: does not look like a quickstart directory; refusing to delete it")
        shutil.rmtree(out)


def _step_plan(out: Path, plan: dict, device: str, minutes: float, given: dict[str, int | None]) -> dict:
    """The step counts, fixed by the first run in OUT/plan.json (a re-run must keep them)."""
    plan_file = out / "plan.json"
    if plan_file.is_file():
        steps = json.loads(plan_file.read_text())
    else:
        first = _budgeted(plan)[0]["options"]
        tok_s = probe_tokens_per_second(device, first["seq_len"], first["batch_size"])
        auto = dict(zip((s["name"] for s in _budgeted(plan)), plan_steps(tok_s, minutes, plan)))
        steps = {"tokens_per_s_probe": round(tok_s),
                 **{f"{name}_steps": given.get(name) or n for name, n in auto.items()}}
        plan_file.write_text(json.dumps(steps, indent=2) + "\n")
    if given.get("posttrain") is not None and steps.get("posttrain_steps") != given["posttrain"]:
        steps["posttrain_steps"] = given["posttrain"]  # remembered, like the other budgets, for re-runs
        plan_file.write_text(json.dumps(steps, indent=2) + "\n")
    print(f"speed probe: {steps['tokens_per_s_probe']:,} tokens/s -> pretrain {steps['pretrain_steps']} steps, "
          f"SFT {steps['sft_steps']} steps (budget ~{minutes:g} min)")
    return steps


@dataclass
class _Run:
    """One quickstart invocation: its flags, and the clock its budgeted stages are planned against."""

    out: Path
    device: str
    minutes: float
    full: bool
    eval_limit: int
    given: dict[str, int | None]  # step counts given by flag: pretrain, sft, posttrain
    start: float = field(default_factory=time.monotonic)
    eval_seconds: float = 0.0  # evaluations do not count against the training shares

    def elapsed_minutes(self) -> float:
        return (time.monotonic() - self.start - self.eval_seconds) / 60


def _stage_options(stage: dict, index: int, steps: dict, data: dict[str, Path], run: _Run) -> dict:
    """The run_stage options of one recipe stage: its options, data, init, budget and clock."""
    opts = dict(stage["options"], data=[str(data[stage["data"]])], device=run.device)
    if "init" in stage:
        opts["init"] = str(run.out / stage["init"])
    if "share" in stage:
        opts = _schedule(opts, steps[f"{stage['name']}_steps"], stage["evals"])
        if run.given.get(stage["name"]) is None:  # planned from the probe: also bounded by the clock
            opts["max_minutes"] = stage_minutes(index, run.minutes, run.elapsed_minutes())
        return opts
    n = steps.get("posttrain_steps") or opts["max_steps"]
    return dict(opts, max_steps=n, save_every=n)


def _train_stages(plan: dict, steps: dict, data: dict[str, Path], prepared: dict[str, Path],
                  run: _Run) -> tuple[list[str], dict[str, dict]]:
    """Run the plan's stages in order, with --full evaluating each; returns (stage names, evals)."""
    evals: dict[str, dict] = {}
    stages = [s for s in plan["stages"] if run.full or not s.get("full")]
    budgeted = [s["name"] for s in _budgeted(plan)]
    for stage in stages:
        index = budgeted.index(stage["name"]) if stage["name"] in budgeted else -1
        files = prepared if stage.get("prepare") else data
        run_stage(stage.get("stage", stage["name"]), out=str(run.out / stage["name"]),
                  **_stage_options(stage, index, steps, files, run))
        if run.full:
            _evaluate(stage["name"], data, run, evals)
    return [s["name"] for s in stages], evals


def _evaluate(stage: str, data: dict[str, Path], run: _Run, evals: dict[str, dict]) -> None:
    if run.eval_limit <= 0:
        return
    t0 = time.monotonic()
    evals[stage] = demo_eval(run.out / stage, suite_paths(data["eval"]), run.device, run.eval_limit)
    print(f"demo eval of {stage}: " + summary_line(evals[stage]))
    run.eval_seconds += time.monotonic() - t0


def quickstart(out_dir: str | Path, device: str = "auto", pretrain_steps: int | None = None,
               sft_steps: int | None = None, force: bool = False, minutes: float | None = None,
               full: bool = False, posttrain_steps: int | None = None, eval_limit: int | None = None) -> dict:
    """The whole demo (module docstring); returns {stage: run dir, "data", "checkpoint", "evals"}."""
    plan = quickstart_plan()
    run = _Run(Path(out_dir), device, plan["minutes"] if minutes is None else minutes, full,
               plan["eval_limit"] if eval_limit is None else eval_limit,
               {"pretrain": pretrain_steps, "sft": sft_steps, "posttrain": posttrain_steps})
    out = run.out
    _prepare_dir(out, force)
    print(f"MiniMind quickstart -> {out.resolve()}")
    data = write_demo(out / "data")
    prepared = {s["data"]: prepare(s["data"], [data[s["data"]]], out / "data" / f"{s['data']}_prepared").path
                for s in plan["stages"] if s.get("prepare")}
    steps = _step_plan(out, plan, device, run.minutes, run.given)
    stages, evals = _train_stages(plan, steps, data, prepared, run)
    final = resolve_checkpoint(out / stages[-1])
    print(f"\n== chat with the {stages[-1]} model (thinking off):")
    for q, a in zip(plan["questions"], chat_replies(final, plan["questions"])):
        print(f"  user: {q}\n  minimind: {a}\n")
    if not full:
        _evaluate(stages[-1], data, run, evals)
    if evals:
        print_demo_evals(evals, run.eval_limit)
    print(f"done in {(time.monotonic() - run.start) / 60:.1f} min. Run directories: "
          f"{', '.join(str(out / n) for n in stages)} (checkpoints/, metrics.jsonl, loss.png, lr.png)")
    print(f"next: minimind chat --ckpt {out / stages[-1]} --no-think")
    return {"data": out / "data", **{n: out / n for n in stages}, "checkpoint": final, "evals": evals}
