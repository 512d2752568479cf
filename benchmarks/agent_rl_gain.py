"""Agent RL gain on CPU: held-out task success of short calculator questions before and after agent RL,
next to an equal-compute SFT control, on several seeds.

    python benchmarks/agent_rl_gain.py --base CKPT --out OUT [--seed 0 1]
    python benchmarks/agent_rl_gain.py --base CKPT --out OUT --start SFT_CKPT --rl-lang zh --tag _zh ...

The tiny quick-start model cannot copy multi-digit numbers into a tool call, so agent RL on the demo
calc task sees no success and learns nothing (benchmarks/tool_rl.py). Here the task family is made
easier: "What is a OP b?" with 1-2 digit operands and one operator (+, -, ×), English, the
calculator the only tool offered. Steps:
  (s)  --base (a checkpoint that already writes `<tool_call>` blocks, e.g. tool_rl.py's focus_sft)
       after SFT on --sizes SFT such conversations (call, tool result, final reply): --sft-steps
       with the reply "a OP b = r.", then --short-sft-steps and --more-sft-steps with "The answer
       is r."; the agent-RL start. Or --start: any checkpoint, e.g. a longer SFT of the same data
       (docs/benchmarks.md gives the command of the measured one: 800 steps reach 92.5%).
  (r)  per --seed, (s) after --rl-steps of `agent-rl` (G rollouts per prompt, rule rewards), on the
       English RL prompts, or with --rl-lang zh on Chinese phrasings of them (the SFT data has
       none: a transfer gap, the setting where RL with a verifier and no demonstrations pays);
  (c)  per --seed, the control: (s) after more SFT for as many training tokens as that seed's
       agent-RL run used, on the start's SFT data (en) or on the reference conversations of the
       very prompts RL trained on (zh: the strongest control, it sees the answers RL must find).
Each is scored greedily through the agent loop (`evaluate_agent`) on the same --sizes EVAL held-out
questions (and with --rl-lang zh on their Chinese phrasings too); SFT, RL and eval questions are
disjoint expressions. Writes OUT/results.json (finished stages and evaluations are reused) and
prints a table with binomial standard errors.

Measured (2026-11-27, docs/benchmarks.md): from the short SFT (2.5-3% success) and from a mid-way
SFT checkpoint (38.5%, still learning fast) RL did not raise English success and the control did;
from the converged SFT (English 92.5%, Chinese 34.0%) RL on the Chinese prompts raised held-out
Chinese success to 78.5% and 80.5% (seeds 0 and 1) in 30 steps.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

from minimind.checkpoint import resolve_checkpoint
from minimind.data.demo import conversations as C
from minimind.eval.toolcall import evaluate_agent, read_agent_cases
from minimind.infer.loading import load_engine
from minimind.tools import builtin_tools, calculate
from minimind.train.metrics import read_metrics
from minimind.train.recipes import run_stage

OPS = ("+", "-", "×")
PHRASES = ("What is {e}?", "Please compute {e}.", "Use the calculator: {e} = ?")
# Chinese phrasings, never in the SFT data: the --rl-lang zh experiment (a transfer gap RL can close).
PHRASES_ZH = ("{e} 等于多少？", "请计算 {e}。", "用计算器算一下：{e}")


def expressions(seed: int) -> list[str]:
    """Every `a OP b` with 1-2 digit operands (a >= b for "-" so results stay non-negative), shuffled."""
    exprs = [f"{a} {op} {b}" for a in range(1, 100) for b in range(1, 100) for op in OPS if op != "-" or a >= b]
    random.Random(seed).shuffle(exprs)
    return exprs


def conversation(expr: str, phrase: str, short: bool = False) -> tuple[list[dict], str]:
    """system (calculator only) + user + the reference tool round trip and final reply ("a OP b = r.",
    or with `short` "The answer is r.": one number to copy, right after the tool result); and the answer."""
    result = calculate(expr)
    system = {"role": "system", "content": C.TOOL_SYSTEM["en"], "tools": [C.TOOLS["calculator"]]}
    user = {"role": "user", "content": phrase.format(e=expr)}
    call = {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "calculator", "arguments": {"expression": expr}}}]}
    tool = {"role": "tool", "content": json.dumps({"result": result})}
    return [system, user, call, tool, {"role": "assistant", "content": f"The answer is {result}." if short else f"{expr} = {result}."}], str(result)


def write_data(out: Path, n_sft: int, n_rl: int, n_eval: int) -> dict[str, Path]:
    """SFT conversations (both wire shapes), RL prompts and held-out eval prompts with `gt`, over
    disjoint expressions; and Chinese versions of the eval and RL prompts (with the RL prompts'
    reference conversations). Deterministic."""
    exprs, rng = expressions(1234), random.Random(1234)
    split = {"eval": exprs[:n_eval], "rl": exprs[n_eval:n_eval + n_rl], "sft": exprs[n_eval + n_rl:]}
    rows: dict[str, list[dict]] = {"eval": [], "rl": [], "sft": [], "sft_short": []}
    for name in ("eval", "rl"):
        for e in split[name]:
            conv, answer = conversation(e, rng.choice(PHRASES))
            rows[name].append({"conversations": C.upstream_shape(conv[:2]), "gt": [answer]})
    for name, short in (("sft", False), ("sft_short", True)):
        for i in range(n_sft):  # SFT may see an expression in several phrasings
            conv, _ = conversation(split["sft"][i % len(split["sft"])], rng.choice(PHRASES), short)
            rows[name].append({"conversations": C.upstream_shape(conv) if i % 2 else C.openai_shape(conv)})
    rng = random.Random(4321)  # the Chinese sets: the same eval and RL expressions, other phrasings
    rows.update(eval_zh=[], rl_zh=[], rl_zh_gold=[])
    for name in ("eval", "rl"):
        for e in split[name]:
            conv, answer = conversation(e, rng.choice(PHRASES_ZH), short=True)
            rows[f"{name}_zh"].append({"conversations": C.upstream_shape(conv[:2]), "gt": [answer]})
            if name == "rl":  # the reference round trip of each RL prompt: the control's data
                rows["rl_zh_gold"].append({"conversations": C.upstream_shape(conv)})
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, recs in rows.items():
        files[name] = out / f"calc_short_{name}.jsonl"
        files[name].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    return files


def evaluate(ckpt: Path, cases: Path, cache: Path, max_turns: int, max_new_tokens: int) -> dict:
    """Greedy task success through the agent loop on the held-out questions (cached in `cache`)."""
    if cache.is_file():
        return json.loads(cache.read_text())
    t = time.perf_counter()
    engine = load_engine(ckpt, max_batch_size=64)
    res = evaluate_agent(engine, read_agent_cases(cases), builtin_tools(), max_turns, max_new_tokens)
    preds = res.pop("predictions")
    res.update(ckpt=str(ckpt), stderr=math.sqrt(res["success"] * (1 - res["success"]) / res["n"]),
               examples=[p["transcript"] for p in preds[:3]], seconds=time.perf_counter() - t)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    print(f"   {cache.stem}: success {res['success']:.3f} ± {res['stderr']:.3f}, called a tool "
          f"{res['called_tool']:.3f} ({res['seconds']:.0f} s)", flush=True)
    return res


def run_summary(run: Path) -> dict:
    """Tokens trained and the reward curve (first vs last 20% of logged steps) of an RL run."""
    rows = [r for r in read_metrics(run / "metrics.jsonl") if r.get("split") == "train"]
    rewards = [r["reward"] for r in rows if "reward" in r]
    correct = [r["reward/correct"] for r in rows if "reward/correct" in r]
    n = max(1, len(rewards) // 5)

    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None
    return {"tokens": rows[-1]["tokens"], "steps": rows[-1]["step"],
            "reward_first_20pct": mean(rewards[:n]), "reward_last_20pct": mean(rewards[-n:]),
            "correct_first_20pct": mean(correct[:n]), "correct_last_20pct": mean(correct[-n:])}


def train(stage: str, out: Path, **options) -> Path:
    """One stage through `run_stage` (a finished run is reused); its final checkpoint."""
    t = time.perf_counter()
    run_stage(stage, out=str(out), progress=False, num_samples=0, eval_batches=0, save_every=0, log_every=5,
              **options)
    print(f"== {stage}: {out} ({time.perf_counter() - t:.0f} s)", flush=True)
    return resolve_checkpoint(out)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True,
                    help="a checkpoint (or run dir) that already writes tool calls, e.g. OUT/focus_sft of "
                         "benchmarks/tool_rl.py --out OUT (the measured run started there)")
    ap.add_argument("--out", default="runs/agent_rl_gain", help="run folder (default: runs/agent_rl_gain)")
    ap.add_argument("--seed", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--sizes", type=int, nargs=3, default=(4000, 1000, 200), metavar=("SFT", "RL", "EVAL"))
    ap.add_argument("--sft-steps", type=int, default=120, help="SFT phase 1: final reply 'a OP b = r.'")
    ap.add_argument("--short-sft-steps", type=int, default=60,
                    help="SFT phase 2 (the RL start; the control's data): final reply 'The answer is r.'")
    ap.add_argument("--more-sft-steps", type=int, default=60, help="SFT phase 3: more of phase 2, from its end")
    ap.add_argument("--sft-lr", type=float, default=1e-3)
    ap.add_argument("--rl-steps", type=int, default=12)
    ap.add_argument("--rl-lr", type=float, default=3e-4)
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step, each rolled out --group-size times")
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--rewards", default="correct:1,wellformed:0.2,valid:0.2,unfinished:0.5,repetition:0.5")
    ap.add_argument("--max-turns", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=48, help="per reply, in RL and in the eval")
    ap.add_argument("--tag", default="", help="suffix of the RL and control run names (another RL setting)")
    ap.add_argument("--stop-after-sft", action="store_true", help="only train and score the RL start")
    ap.add_argument("--rl-lang", choices=["en", "zh"], default="en",
                    help="zh: RL on Chinese phrasings of the RL questions (the SFT data is English), scored on "
                         "the Chinese eval set too; the control then trains on those prompts' reference replies")
    ap.add_argument("--control-on-sft", action="store_true",
                    help="--rl-lang zh: train the control on the start's English SFT data (the demonstrations a "
                         "user has) instead of the RL prompts' Chinese reference conversations")
    ap.add_argument("--start", help="start RL (and the control) from this checkpoint instead of the SFT phases "
                                    "above, e.g. a longer SFT on OUT/data/calc_short_sft_short.jsonl; give --tag")
    return ap.parse_args()


def rl_start(args: argparse.Namespace, out: Path, data: dict[str, Path], score) -> tuple[Path, str]:
    """The RL start (--start, or the SFT phases from --base) and the tag of the runs from it."""
    if args.start:
        start = resolve_checkpoint(args.start)
        score(start, f"s_start{args.tag}")
        return start, args.tag
    sft_opts = dict(batch_size=16, seq_len=512, warmup_steps=10)
    start = train("sft", out / "sft", init=str(resolve_checkpoint(args.base)), data=[str(data["sft"])],
                  max_steps=args.sft_steps, lr=args.sft_lr, seed=0, **sft_opts)
    score(start, "s1_sft")
    if args.short_sft_steps:
        start = train("sft", out / "sft_short", init=str(start), data=[str(data["sft_short"])],
                      max_steps=args.short_sft_steps, lr=args.sft_lr, seed=0, **sft_opts)
    tag = (f"_more{args.more_sft_steps}" if args.more_sft_steps else "") + args.tag  # runs from another start
    if args.more_sft_steps:
        score(start, "s2_sft_short")
        start = train("sft", out / "sft_more", init=str(start), data=[str(data["sft_short"])],
                      max_steps=args.more_sft_steps, lr=args.sft_lr, seed=0, **sft_opts)
    score(start, f"s_start{tag.removesuffix(args.tag)}")
    return start, tag


def control_data(args: argparse.Namespace) -> tuple[str, str]:
    """The control's SFT data and run name: the RL prompts' reference conversations (zh, unless
    --control-on-sft), else the RL start's SFT data."""
    if args.rl_lang == "zh" and not args.control_on_sft:
        return "rl_zh_gold", "sft_control"
    return ("sft_short" if args.short_sft_steps or args.start else "sft"), \
        ("sft_control_en" if args.rl_lang == "zh" else "sft_control")


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    data = write_data(out / "data", *args.sizes)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results["config"] = vars(args)

    def score(ckpt: Path, name: str) -> dict:
        for suffix, cases in [("", data["eval"])] + ([("_zh", data["eval_zh"])] if args.rl_lang == "zh" else []):
            results[name + suffix] = evaluate(ckpt, cases, out / "evals" / f"{name}{suffix}.json", args.max_turns,
                                              args.max_new_tokens)
        results_path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
        return results[name]

    start, tag = rl_start(args, out, data, score)
    if args.stop_after_sft:
        return
    for seed in args.seed:
        rl = train("agent-rl", out / f"seed{seed}{tag}" / "agent_rl", init=str(start),
                   data=[str(data["rl_zh" if args.rl_lang == "zh" else "rl"])],
                   max_steps=args.rl_steps, batch_size=args.prompts, group_size=args.group_size,
                   temperature=args.temperature, lr=args.rl_lr, warmup_steps=2, beta_kl=0.0,
                   freeze_embeddings=True, scale_advantages=False, rewards=args.rewards, max_turns=args.max_turns,
                   max_new_tokens=args.max_new_tokens, seq_len=512, seed=seed)
        results[f"seed{seed}{tag}_rl_run"] = run_summary(out / f"seed{seed}{tag}" / "agent_rl")
        score(rl, f"r_agent_rl_seed{seed}{tag}")
        ctrl_data, ctrl_name = control_data(args)
        ctrl = train("sft", out / f"seed{seed}{tag}" / ctrl_name, init=str(start), data=[str(data[ctrl_data])],
                     max_tokens=results[f"seed{seed}{tag}_rl_run"]["tokens"], lr=args.rl_lr, seed=seed,
                     batch_size=16, seq_len=512, warmup_steps=2)
        score(ctrl, f"c_{ctrl_name}_seed{seed}{tag}")
    print("\n| model | task success (held-out, greedy) | ± s.e. | called a tool |\n|---|---|---|---|")
    for k in (k for k in results if k[:2] in ("s_", "r_", "c_")):
        r = results[k]
        print(f"| {k} | {r['success']:.3f} | {r['stderr']:.3f} | {r['called_tool']:.3f} |")


if __name__ == "__main__":
    main()
